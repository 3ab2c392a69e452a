"""The broadcast transport: a stateless process group between learner rank 0 and every vLLM
worker, and the learner side (`NcclWeightBroadcaster`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from fgrlhf_ray.weight_sync.buckets import (
    TensorMeta, bucket_nbytes, pack_bucket, plan_buckets, tensor_meta, unpack_bucket,
)
from fgrlhf_ray.weight_sync.state_dict import EMBED_KEY, LM_HEAD_KEY


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
        refs = rollout_group.init_weight_broadcast(host, port, backend, timeout_s)
        b.connect(); ray.get(refs)                 # both sides join concurrently
        plan = b.plan(state_dict)                  # once per step (cheap metadata)
        refs = rollout_group.receive_weight_broadcast(plan)
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
