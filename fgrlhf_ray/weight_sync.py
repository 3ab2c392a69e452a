"""Learner → vLLM weight sync, and the post-sync probe check.

Two transports, chosen by the config value `weight_sync`:

- "object_store" (CPU, and any cluster without a shared fast fabric): the learner's
  full state dict is serialised ONCE to safetensors bytes (`serialize_state_dict`),
  `ray.put` once, and every engine receives the same ObjectRef; inside the engine the
  bytes go to each vLLM worker through `LLM.collective_rpc("fgrlhf_load_safetensors")`
  (tensors must be serialised: passed raw through vLLM's RPC they arrive as lists).
- "broadcast" (NCCL on GPU clusters, gloo on CPU): learner rank 0 and every vLLM worker
  form one extra process group (stateless: a private TCPStore, not the default
  torch.distributed group); the learner broadcasts the weights in flat byte buckets
  (`plan_buckets`, `pack_bucket`, `unpack_bucket`) and the workers load them.
  `NcclWeightBroadcaster` is the learner side; `FgrlhfWorkerExtension.fgrlhf_*_broadcast*`
  the vLLM side; `fgrlhf_ray.actors.weight_broadcast.BroadcastWeightSync` drives both from
  the PPO loop (forming the group, re-forming it after engine restarts). The same code runs
  with backend="gloo", which is how it is tested on CPU; the NCCL backend itself has
  NOT been exercised here (no GPU on the development machine).

The tied-embedding trap: vLLM's in-place reload restores every layer that receives no
weights from its old tensors. With `tie_word_embeddings=True`, a state dict without
`lm_head.weight` leaves vLLM's lm_head at the OLD values — no error, just wrong
logprobs. `serialize_state_dict(..., tie_word_embeddings=True)` therefore always
writes `lm_head.weight` as a separate copy of the input embedding.

After each sync, `check_probe_gap` compares vLLM's logprobs of a fixed probe sequence
with the learner's and raises past a tolerance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

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


# --------------------------------------------------------------------------- state dicts
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


# --------------------------------------------------------------------------- buckets
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


# --------------------------------------------------------------------------- process group
@dataclass
class SyncGroup:
    """A private process group for weight broadcast: the c10d backend plus its store
    (kept referenced: the backend only holds a PrefixStore over it)."""

    backend: Any  # torch c10d Backend (ProcessGroupGloo / ProcessGroupNCCL)
    store: Any  # TCPStore
    rank: int
    world_size: int

    def broadcast(self, tensor: torch.Tensor, timeout_s: float) -> None:
        """In-place broadcast of `tensor` from group rank 0; raises after `timeout_s`."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        opts.rootTensor = 0
        opts.timeout = timedelta(seconds=timeout_s)
        work = self.backend.broadcast([tensor], opts)
        if not work.wait(timedelta(seconds=timeout_s)):
            raise TimeoutError(f"weight broadcast did not finish within {timeout_s} s.")


def stateless_process_group(
    *, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float
) -> SyncGroup:
    """A torch process group (gloo or nccl) that does not touch the default
    torch.distributed group — vLLM workers and DeepSpeed learners already own one.

    Rank 0 hosts the TCPStore on `host:port`. Collectives take group-local ranks.
    The rendezvous and every collective raise after `timeout_s` instead of hanging.
    """
    import torch.distributed as dist
    from torch.distributed import PrefixStore, TCPStore

    if backend not in ("gloo", "nccl"):
        raise ValueError(
            f"stateless_process_group: backend must be 'gloo' or 'nccl', got {backend!r}."
        )
    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(
        host_name=host,
        port=port,
        world_size=world_size,
        is_master=(rank == 0),
        timeout=timeout,
        wait_for_workers=False,
    )
    prefix = PrefixStore(f"fgrlhf_weight_sync/{host}:{port}", store)
    if backend == "gloo":
        pg = dist.ProcessGroupGloo(prefix, rank, world_size, timeout)
    else:
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(prefix, rank, world_size, opts)
    return SyncGroup(backend=pg, store=store, rank=rank, world_size=world_size)


def receive_buckets(
    group: SyncGroup, plan: Sequence[Sequence[Any]], *, device: torch.device | str, timeout_s: float
) -> list[tuple[str, torch.Tensor]]:
    """Receiver side of one broadcast: for each bucket of `plan` (wire form, see
    `NcclWeightBroadcaster.plan`) receive the flat bytes from rank 0 and split them.
    Returns (name, tensor) pairs in plan order (views into the received buffers)."""
    received: list[tuple[str, torch.Tensor]] = []
    for bucket in plan:
        metas = [TensorMeta.from_wire(w) for w in bucket]
        buf = torch.empty(bucket_nbytes(metas), dtype=torch.uint8, device=device)
        group.broadcast(buf, timeout_s)
        received.extend(unpack_bucket(buf, metas))
    return received


class NcclWeightBroadcaster:
    """Learner side of the "broadcast" weight sync: rank 0 of a group whose other members
    are the vLLM workers of all rollout engines (ranks 1..world_size-1).

    Usage (controller):
        b = NcclWeightBroadcaster(host=..., port=..., world_size=1 + total_vllm_workers,
                                  backend="nccl", bucket_bytes=256 << 20, timeout_s=120)
        refs = rollout_group.init_weight_broadcast_async(host, port, backend, timeout_s)
        b.connect(); ray.get(refs)                 # both sides join concurrently
        plan = b.plan(state_dict)                  # once per step (cheap metadata)
        refs = rollout_group.receive_weight_broadcast_async(plan)
        b.broadcast(state_dict, plan); ray.get(refs)

    `broadcast` sends buckets in plan order; each wait is bounded by `timeout_s` and
    raises TimeoutError/RuntimeError instead of hanging if an engine died.
    NOT exercised with NCCL on the development machine (CPU only); the identical code
    path runs with backend="gloo" in tests/integration/test_rollout.py.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        world_size: int,
        backend: str = "nccl",
        bucket_bytes: int = 256 * 1024**2,
        timeout_s: float = 300.0,
        tie_word_embeddings: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        if world_size < 2:
            raise ValueError(
                f"NcclWeightBroadcaster: world_size={world_size}; it must be 1 (learner) + "
                "the number of vLLM workers over all engines."
            )
        self.host, self.port, self.world_size = host, port, world_size
        self.backend, self.bucket_bytes, self.timeout_s = backend, bucket_bytes, timeout_s
        self.tie_word_embeddings, self.dtype = tie_word_embeddings, dtype
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        self._pg: SyncGroup | None = None

    def connect(self) -> None:
        self._pg = stateless_process_group(
            host=self.host,
            port=self.port,
            rank=0,
            world_size=self.world_size,
            backend=self.backend,
            timeout_s=self.timeout_s,
        )

    def _tensors(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors = {k: v.detach() for k, v in state_dict.items()}
        if self.dtype is not None:
            tensors = {
                k: (v.to(self.dtype) if v.is_floating_point() else v) for k, v in tensors.items()
            }
        if self.tie_word_embeddings:
            tensors[LM_HEAD_KEY] = tensors[EMBED_KEY]  # sent twice: see module docstring
        return tensors

    def plan(
        self, state_dict: Mapping[str, torch.Tensor]
    ) -> list[list[tuple[str, str, list[int]]]]:
        """The bucket plan in wire form, to hand to the engines before `broadcast`."""
        metas = [tensor_meta(k, v) for k, v in self._tensors(state_dict).items()]
        return [[m.as_wire() for m in b] for b in plan_buckets(metas, self.bucket_bytes)]

    def broadcast(self, state_dict: Mapping[str, torch.Tensor], plan) -> dict[str, float]:
        if self._pg is None:
            raise RuntimeError("NcclWeightBroadcaster.broadcast: call connect() first.")
        tensors = self._tensors(state_dict)
        start, nbytes = time.perf_counter(), 0
        for bucket in plan:
            metas = [TensorMeta.from_wire(w) for w in bucket]
            buf = pack_bucket([tensors[m.name] for m in metas], device=self.device)
            self._pg.broadcast(buf, self.timeout_s)
            nbytes += buf.numel()
        return {
            "sync/broadcast_s": time.perf_counter() - start,
            "sync/bytes": float(nbytes),
            "sync/buckets": float(len(plan)),
        }

    def close(self) -> None:
        if self._pg is not None:
            self._pg = None


# --------------------------------------------------------------------------- vLLM side
class FgrlhfWorkerExtension:
    """Mixed into every vLLM worker (`LLM(worker_extension_cls=...)`); its methods are
    called by name with `LLM.collective_rpc`, so nothing pickled crosses processes.

    `self` is the vLLM worker: it has `reload_weights`, `model_runner`, `device`.
    """

    def fgrlhf_load_safetensors(self, blob: bytes) -> int:
        """Object-store path: in-place reload of a full safetensors state dict."""
        state = deserialize_state_dict(blob)
        # reload_weights (layerwise) reprocesses every layer, so it also works for
        # quantized / repacked kernels; it wants the WHOLE state dict in one call.
        self.reload_weights(weights_iterator=iter(state.items()))
        return len(state)

    def fgrlhf_init_broadcast_group(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        backend: str,
        timeout_s: float,
    ) -> None:
        from vllm.distributed.parallel_state import get_tp_group

        rank = rank_offset + get_tp_group().rank_in_group
        self._fgrlhf_pg = stateless_process_group(
            host=host,
            port=port,
            rank=rank,
            world_size=world_size,
            backend=backend,
            timeout_s=timeout_s,
        )
        self._fgrlhf_backend, self._fgrlhf_timeout_s = backend, timeout_s

    def fgrlhf_receive_broadcast(self, plan: list) -> int:
        pg = getattr(self, "_fgrlhf_pg", None)
        if pg is None:
            raise RuntimeError("fgrlhf_receive_broadcast: call init_weight_broadcast first.")
        device = self.device if self._fgrlhf_backend == "nccl" else torch.device("cpu")
        received = receive_buckets(pg, plan, device=device, timeout_s=self._fgrlhf_timeout_s)
        # One reload with everything: layerwise reload needs each layer's full set of
        # weights within one call (a layer split over calls would be half restored).
        self.reload_weights(weights_iterator=iter(received))
        return len(received)

    def fgrlhf_close_broadcast_group(self) -> None:
        self._fgrlhf_pg = None


# --------------------------------------------------------------------------- probe check
class ProbeGapError(RuntimeError):
    """vLLM's logprobs after a weight sync disagree with the learner's."""


def probe_gap(learner_logprobs: Iterable[float], vllm_logprobs: Iterable[float]) -> float:
    """max_t |learner_t − vllm_t| over one probe sequence (or a flattened batch)."""
    a = torch.as_tensor(list(learner_logprobs), dtype=torch.float64)
    b = torch.as_tensor(list(vllm_logprobs), dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(
            f"probe_gap: learner gave {tuple(a.shape)} logprobs, vLLM {tuple(b.shape)}; "
            "they must be the same non-empty length (same probe sequence)."
        )
    return float((a - b).abs().max())


def check_probe_gap(
    learner_logprobs: Iterable[float], vllm_logprobs: Iterable[float], tolerance: float
) -> float:
    """Return the max abs logprob gap; raise ProbeGapError if it exceeds `tolerance`.

    A large gap right after a sync means the engines did not get the learner's weights
    (wrong names, a missing tied lm_head, a dtype mismatch, a stale prefix cache).
    """
    gap = probe_gap(learner_logprobs, vllm_logprobs)
    if not gap <= tolerance:  # also catches NaN
        raise ProbeGapError(
            f"weight sync check failed: max |log π_learner − log π_vllm| = {gap:.3g} on the "
            f"probe sequence exceeds tolerance {tolerance:g}. The rollout engines are not "
            "running the learner's weights: check parameter names, tie_word_embeddings "
            "(lm_head.weight must be sent), dtypes (vLLM dtype vs learner), or raise "
            "`probe_tolerance` if the engines run in lower precision."
        )
    return gap
