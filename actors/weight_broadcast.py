"""`learner.weight_sync: broadcast`: learner rank 0 → every vLLM worker over one extra
process group, in flat buckets (NCCL on GPU clusters, gloo on CPU).

The transport itself (bucket plan, pack/unpack, a stateless process group with
timeouts) is `fgrlhf_ray.weight_sync`; the learner side lives in `LearnerActor`, the
receiving side in each vLLM worker (`FgrlhfWorkerExtension`). This class is the glue the
controller calls once per step (`push`):

1. form the group if it does not exist or an engine is not in it — the first sync, and
   after any engine restart (a restarted process has no group; Ray may restart an
   engine between calls without anyone noticing, so membership is checked every time,
   one cheap round trip);
2. learner ranks gather the weights (all ranks under ZeRO-3), rank 0 returns the plan;
3. engines start receiving, rank 0 broadcasts; one wait for all of them.

A failed broadcast leaves the group unusable (members may be mid-collective), so any
failure drops it and the next push forms a new one on a new port. An engine that died
is reported as such (Ray's error), and an engine that failed inside the collective is
reported as `EngineWeightsLost`: both count as engine faults, so the controller
recovers the engines and pushes again instead of ending the run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

log = logging.getLogger(__name__)


class BroadcastWeightSync:
    """Pushes the learner's weights to every engine of a `RolloutGroup` by broadcast.

    Args:
        learner: a `LearnerGroup` (or anything with its weight-broadcast methods).
        rollout: the `RolloutGroup` whose engines receive.
        backend: "nccl" or "gloo".
        bucket_bytes: bucket size of the plan.
        timeout_s: bound on the rendezvous and on each bucket (inside the collective),
            and on each wait here; past it a `TimeoutError` is raised, never a hang.
        dtype: dtype the floating-point weights travel in (the engines' dtype); None keeps
            the learner's.
    """

    def __init__(self, learner: Any, rollout: Any, *, backend: str, bucket_bytes: int, timeout_s: float,
                 dtype: str | None = None) -> None:
        if backend not in ("nccl", "gloo"):
            raise ValueError(f"BroadcastWeightSync: backend must be 'nccl' or 'gloo', got {backend!r}")
        self.learner, self.rollout = learner, rollout
        self.backend, self.bucket_bytes, self.timeout_s, self.dtype = backend, bucket_bytes, timeout_s, dtype
        self.group_id: str | None = None  # "host:port" of the live group; None = form one first
        self.formations = 0  # groups formed so far (1 + re-formations after engine restarts)

    # ------------------------------------------------------------------ group
    def ensure_group(self) -> bool:
        """Form the group unless every engine is already in the current one; True if formed."""
        if self.group_id is not None:
            members = self._wait(self.rollout.broadcast_group_ids(), "checking the engines' broadcast group")
            if all(m == self.group_id for m in members):
                return False
            log.warning("weight broadcast: engine(s) %s left group %s (restarted?); forming a new group",
                        [i for i, m in enumerate(members) if m != self.group_id], self.group_id)
        self.close()
        host, port = self._wait([self.learner.weight_broadcast_address()], "picking the broadcast address")[0]
        world_size = self.rollout.broadcast_world_size
        # Both sides must be joining at the same time: rank 0 hosts the store and waits for
        # the others, each vLLM worker connects to it.
        sender = self.learner.init_weight_broadcast(
            host=host, port=port, world_size=world_size, backend=self.backend, bucket_bytes=self.bucket_bytes,
            timeout_s=self.timeout_s, dtype=self.dtype,
        )
        joins = self.rollout.init_weight_broadcast(host=host, port=port, backend=self.backend,
                                                   timeout_s=self.timeout_s)
        self._wait([sender, *joins], "forming the weight-broadcast group")
        self.group_id = f"{host}:{port}"
        self.formations += 1
        log.info("weight broadcast: group %s formed (%s, %d members)", self.group_id, self.backend, world_size)
        return True

    def close(self) -> None:
        """Drop the group on both sides (best effort: members may be dead)."""
        if self.group_id is None:
            return
        self.group_id = None
        refs = [self.learner.close_weight_broadcast(), *self.rollout.close_weight_broadcast()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=min(self.timeout_s, 30.0))
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass  # a dead member has nothing to close

    # ------------------------------------------------------------------ push
    def push(self) -> dict[str, float]:
        """One full sync; returns stats (seconds, bytes, buckets, whether a group was formed)."""
        start = time.perf_counter()
        formed = self.ensure_group()
        form_s = time.perf_counter() - start
        plan = self._wait([self.learner.prepare_weight_broadcast()], "gathering the weights to broadcast")[0]
        receives = self.rollout.receive_weight_broadcast(plan)
        send = self.learner.broadcast_weights(plan)
        # Each bucket is bounded by timeout_s inside the collective; this wait only adds a
        # margin, so a stuck member surfaces as the collective's own timeout error.
        try:
            sent, *counts = self._wait([send, *receives], "weight broadcast",
                                       timeout_s=self.timeout_s * (len(plan) + 1))
        except Exception as exc:  # (not Ctrl-C: the signal handler must not wait on the collective)
            self.group_id = None  # members may be mid-collective: never reuse this group
            # Let rank 0 leave the broken collective (its own per-bucket timeout bounds this)
            # before anyone retries: the next group's rendezvous would queue behind it.
            ray.wait([send], timeout=self.timeout_s * 1.5)
            raise self._engine_fault(exc, receives) from exc
        if len(set(counts)) != 1:
            raise RuntimeError(f"weight broadcast: engines loaded different tensor counts {counts}")
        return {
            "sync/total_s": time.perf_counter() - start,
            "sync/group_form_s": form_s,
            "sync/group_formed": float(formed),
            "sync/broadcast_s": float(sent["sync/broadcast_s"]),
            "sync/bytes": float(sent["sync/bytes"]),
            "sync/buckets": float(sent["sync/buckets"]),
            "sync/num_tensors": float(counts[0]),
        }

    # ------------------------------------------------------------------ helpers
    def _wait(self, refs: list, what: str, *, timeout_s: float | None = None) -> list:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            return ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.group_id = None
            raise TimeoutError(f"{what} did not finish within {timeout_s:.0f} s "
                               "(learner.broadcast_timeout_s)") from None

    @staticmethod
    def _engine_fault(exc: BaseException, receives: list) -> BaseException:
        """The error to raise for a failed broadcast: an engine's own death if one died,
        `EngineWeightsLost` if an engine failed inside the collective, else `exc`."""
        from fgrlhf_ray.infra.reliability import EngineWeightsLost

        died = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
        failed = []
        ready, _ = ray.wait(receives, num_returns=len(receives), timeout=0)
        for i, ref in enumerate(receives):
            if ref not in ready:
                continue
            try:
                ray.get(ref)
            except died as err:
                return err
            except ray.exceptions.RayError as err:
                failed.append(f"engine {i}: {str(err).strip().splitlines()[-1][:200]}")
        if failed:
            return EngineWeightsLost("weight broadcast failed on " + "; ".join(failed))
        return exc
