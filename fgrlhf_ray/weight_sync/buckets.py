"""Flat byte buckets for the broadcast sync: plan, pack and unpack tensors by their
metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fgrlhf_ray.weight_sync.state_dict import _DTYPES


_ALIGN = 16  # bytes; ≥ the item size of every dtype in _DTYPES


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor sits inside a flat uint8 bucket."""

    name: str
    dtype: str  # e.g. "float32" (torch dtype without the "torch." prefix)
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPES[self.dtype].itemsize

    @property
    def padded_nbytes(self) -> int:
        """Bytes this tensor occupies in a bucket: rounded up to `_ALIGN` so the next
        tensor starts aligned (a uint8 slice can only be viewed as a wider dtype at an
        offset divisible by its item size)."""
        return -(-self.nbytes // _ALIGN) * _ALIGN

    def as_wire(self) -> tuple[str, str, list[int]]:
        """Plain-type form (survives msgpack in vLLM's RPC)."""
        return (self.name, self.dtype, list(self.shape))

    @staticmethod
    def from_wire(w: Sequence[Any]) -> "TensorMeta":
        name, dtype, shape = w
        if dtype not in _DTYPES:
            raise ValueError(f"TensorMeta: unsupported dtype {dtype!r} for {name!r}.")
        return TensorMeta(str(name), str(dtype), tuple(int(s) for s in shape))


def tensor_meta(name: str, t: torch.Tensor) -> TensorMeta:
    return TensorMeta(name, str(t.dtype).removeprefix("torch."), tuple(t.shape))


def plan_buckets(metas: Sequence[TensorMeta], bucket_bytes: int) -> list[list[TensorMeta]]:
    """Group tensors, in order, into buckets of at most `bucket_bytes` bytes.

    Sizes count `padded_nbytes`. A tensor larger than `bucket_bytes` gets a bucket of
    its own (never split), and the order of tensors is preserved, so sender and
    receivers derive the same layout from the same plan. Every tensor appears in
    exactly one bucket.
    """
    if bucket_bytes < 1:
        raise ValueError(f"plan_buckets: bucket_bytes={bucket_bytes} must be >= 1.")
    buckets: list[list[TensorMeta]] = []
    current: list[TensorMeta] = []
    size = 0
    for m in metas:
        if current and size + m.padded_nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(m)
        size += m.padded_nbytes
    if current:
        buckets.append(current)
    return buckets


def pack_bucket(
    tensors: Sequence[torch.Tensor], *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Concatenate tensors' raw bytes, each zero-padded to `_ALIGN`, into one flat uint8
    tensor of shape (Σ padded_nbytes,).

    Byte views make one bucket carry mixed dtypes (e.g. fp32 norms beside bf16
    matrices) without casts. `unpack_bucket` inverts it given the metas.
    """
    parts = []
    for t in tensors:
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
        parts.append(raw)
        pad = -raw.numel() % _ALIGN
        if pad:
            parts.append(torch.zeros(pad, dtype=torch.uint8, device=raw.device))
    buf = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return buf if device is None else buf.to(device)


def bucket_nbytes(metas: Sequence[TensorMeta]) -> int:
    return sum(m.padded_nbytes for m in metas)


def unpack_bucket(
    buffer: torch.Tensor, metas: Sequence[TensorMeta]
) -> list[tuple[str, torch.Tensor]]:
    """Split a flat uint8 `buffer` (from `pack_bucket`) back into (name, tensor) pairs
    (views into `buffer`)."""
    expected = bucket_nbytes(metas)
    if buffer.dtype != torch.uint8 or buffer.numel() != expected:
        raise ValueError(
            f"unpack_bucket: buffer has {buffer.numel()} {buffer.dtype} elements but the "
            f"plan needs {expected} uint8 bytes; sender and receiver plans differ."
        )
    out, offset = [], 0
    for m in metas:
        chunk = buffer[offset : offset + m.nbytes]
        out.append((m.name, chunk.view(_DTYPES[m.dtype]).reshape(m.shape)))
        offset += m.padded_nbytes
    return out
