"""Learner state dicts for vLLM: detach, tie `lm_head`, cast, serialise to safetensors
bytes (object-store sync).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch


WeightSyncMode = Literal["object_store", "broadcast"]

EMBED_KEY = "model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"

_DTYPES = {
    str(dt).removeprefix("torch."): dt
    for dt in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def prepare_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    tie_word_embeddings: bool,
    dtype: torch.dtype | None = None,
    embed_key: str = EMBED_KEY,
    lm_head_key: str = LM_HEAD_KEY,
) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of `state_dict` (HF parameter names), with the
    tied output embedding made explicit.

    tie_word_embeddings=True: `lm_head_key` is set to a clone of `embed_key` (if the
    input has an lm_head that differs from the embedding, that is a learner bug and a
    ValueError says so). tie_word_embeddings=False: `lm_head_key` must be present.
    Tensors that share storage are cloned so safetensors can save them. `dtype`, if
    given, casts floating-point tensors (e.g. bf16 halves the bytes to move).
    Returns a new dict; the input is not modified.
    """
    if embed_key not in state_dict:
        raise KeyError(
            f"prepare_state_dict: {embed_key!r} not in the state dict (first keys: "
            f"{list(state_dict)[:5]}); pass HF parameter names (strip wrappers such as "
            "'module.' or PEFT prefixes, merge LoRA first)."
        )
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in state_dict.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    if tie_word_embeddings:
        embed = out[embed_key]
        if lm_head_key in out and not torch.equal(out[lm_head_key], embed):
            raise ValueError(
                f"prepare_state_dict: tie_word_embeddings=True but {lm_head_key!r} differs "
                f"from {embed_key!r}; the learner's weights are not actually tied. Fix the "
                "model config or pass tie_word_embeddings=False."
            )
        # A separate copy, never the same storage: vLLM must receive lm_head explicitly
        # (see module docstring) and safetensors refuses shared storage.
        out[lm_head_key] = embed.clone()
    elif lm_head_key not in out:
        raise KeyError(
            f"prepare_state_dict: tie_word_embeddings=False but {lm_head_key!r} is missing; "
            "vLLM would keep its old output layer. Include it or set tie_word_embeddings=True."
        )
    return out


def serialize_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    tie_word_embeddings: bool,
    dtype: torch.dtype | None = None,
) -> bytes:
    """safetensors bytes of `prepare_state_dict(state_dict, ...)` (see there)."""
    from safetensors.torch import save

    return save(
        prepare_state_dict(state_dict, tie_word_embeddings=tie_word_embeddings, dtype=dtype)
    )


def deserialize_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    """Inverse of `serialize_state_dict`: name → CPU tensor."""
    from safetensors.torch import load

    return load(bytes(blob))
