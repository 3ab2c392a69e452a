"""Ray shells for rollouts: `RolloutActor` (one vLLM engine) and `RolloutGroup` (N of them).

`RolloutActor` only hands off to `fgrlhf_ray.workers.rollout.VLLMRolloutEngine`. `RolloutGroup`
is driver-side plain Python: it shards prompts over the engines, joins the results, and
fans weight updates out (object store: one `ray.put`, every engine loads the same
ObjectRef in parallel; NCCL: see `fgrlhf_ray.weight_sync.NcclWeightBroadcaster`). Every
call returns one ObjectRef (`fgrlhf_ray.actors.group`); wait with `collect`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from fgrlhf_ray.actors.group import ActorGroup, collect, join
from fgrlhf_ray.infra.chaos import chaos_point
from fgrlhf_ray.types import RolloutBatch
from fgrlhf_ray.weight_sync import serialize_state_dict
from fgrlhf_ray.workers.rollout import VLLMRolloutEngine


@ray.remote
class RolloutActor:
    """One `VLLMRolloutEngine` in its own Ray worker process."""

    def __init__(self, **engine_kwargs: Any) -> None:
        self.engine = VLLMRolloutEngine(**engine_kwargs)
        # How many object-store syncs this process has loaded. Ray restarts a crashed engine
        # (even between calls, unseen by the caller) with the initial weights: version 0.
        self.weights_version = 0

    def ready(self) -> float:
        return self.engine.startup_s

    def generate(self, prompts: list[str], expect_weights_version: int | None = None, **kwargs: Any) -> RolloutBatch:
        chaos_point("engine")  # tests only: a scheduled kill lands here (fgrlhf_ray.infra.chaos)
        if expect_weights_version is not None and expect_weights_version != self.weights_version:
            from fgrlhf_ray.infra.reliability import EngineWeightsLost

            raise EngineWeightsLost(
                f"engine holds weights version {self.weights_version}, the group expects {expect_weights_version}: "
                "it was restarted since the last weight sync"
            )
        return self.engine.generate(prompts, **kwargs)

    def load_weights(self, blob: bytes, version: int | None = None) -> int:
        # Ray resolves a top-level ObjectRef argument before the call: `blob` is bytes.
        count = self.engine.load_weights(blob)
        if version is not None:
            self.weights_version = version
        return count

    def probe_logprobs_batch(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]]
    ) -> list[list[float]]:
        return self.engine.probe_logprobs_batch(prompt_ids, response_ids)

    def init_weight_broadcast(self, **kwargs: Any) -> str:
        self.engine.init_weight_broadcast(**kwargs)
        # Which group this process joined: a restarted actor reports None, so the sender
        # knows to form the group again before broadcasting into a missing member.
        self.broadcast_group = f"{kwargs['host']}:{kwargs['port']}"
        return self.broadcast_group

    def broadcast_group_id(self) -> str | None:
        return getattr(self, "broadcast_group", None)

    def receive_weight_broadcast(self, plan: list, version: int | None = None) -> int:
        count = self.engine.receive_weight_broadcast(plan)
        if version is not None:
            self.weights_version = version
        return count

    def close_weight_broadcast(self) -> None:
        self.engine.close_weight_broadcast()
        self.broadcast_group = None

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    def health(self) -> dict:
        from fgrlhf_ray.infra.reliability import actor_health

        return actor_health()

    def shutdown(self) -> None:
        self.engine.shutdown()


def merge_rollouts(parts: Sequence[RolloutBatch]) -> RolloutBatch:
    """Concatenate shard results in order (prompt_index values are already global)."""
    out = RolloutBatch([], [], [], [], [], [], [])
    for p in parts:
        out.prompts += p.prompts
        out.prompt_ids += p.prompt_ids
        out.responses += p.responses
        out.response_ids += p.response_ids
        out.logprobs += p.logprobs
        out.prompt_index += p.prompt_index
        out.finish_reasons += p.finish_reasons
    return out


def _load_stats(counts: list[int], *, put_s: float) -> dict[str, float]:
    """Join of an object-store sync: every engine must have loaded the same tensors."""
    if len(set(counts)) != 1:
        raise RuntimeError(f"RolloutGroup.sync_weights: engines loaded different tensor counts {counts}.")
    return {"sync/put_s": put_s, "sync/num_tensors": float(counts[0])}


def _first_sequence(parts: list[list[list[float]]]) -> list[list[float]]:
    """Per engine, its logprobs of the one probe sequence (a batch of one)."""
    return [lp[0] for lp in parts]


def contiguous_shards(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """[start, end) ranges splitting `num_items` into `num_shards` contiguous shards whose
    sizes differ by at most one (earlier shards get the extra item); empty shards are
    dropped."""
    base, extra = divmod(num_items, num_shards)
    ranges, start = [], 0
    for i in range(num_shards):
        size = base + (1 if i < extra else 0)
        if size:
            ranges.append((start, start + size))
        start += size
    return ranges


class RolloutGroup(ActorGroup):
    """N `RolloutActor`s serving one policy.

    Args (keyword-only):
        num_engines: number of vLLM engines (actors).
        engine_kwargs: `VLLMRolloutEngine` keyword arguments shared by all engines.
        placement_group: optional Ray placement group; engine i uses bundle i.
        num_cpus: Ray CPUs reserved per actor (logical, for scheduling).
        num_gpus: Ray GPUs per actor (= tensor_parallel_size on GPU for TP=1 engines;
            TP>1 inside one actor on GPU is not covered here).
        env_vars: extra environment for every actor (runtime_env), e.g.
            {"VLLM_CPU_KVCACHE_SPACE": "1"}.
        cpu_bind: "spread" (default) gives engine i its own slice of its node's CPUs
            (`VLLM_CPU_OMP_THREADS_BIND`, ignored by GPU vLLM); any other value is
            passed to every engine as-is (e.g. "auto", "nobind"); or a list, one per engine.
        startup_timeout_s: bound for engine start-up (a timeout raises `TimeoutError`
            naming it); calls are bounded by whoever waits for their handle.
        max_restarts: Ray restarts of a crashed engine actor (tasks are not re-run by Ray:
            the caller retries, and must re-sync weights — a restarted engine loads
            `model_path` again; see `recover`).
    """

    role = "engine"

    def __init__(
        self,
        *,
        num_engines: int,
        engine_kwargs: Mapping[str, Any],
        placement_group: Any = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        env_vars: Mapping[str, str] | None = None,
        cpu_bind: str | Sequence[str] | None = "spread",
        startup_timeout_s: float = 900.0,
        max_restarts: int = 0,
    ) -> None:
        if num_engines < 1:
            raise ValueError(f"RolloutGroup: num_engines={num_engines} must be >= 1.")
        if not isinstance(cpu_bind, (str, type(None))) and len(cpu_bind) != num_engines:
            raise ValueError(
                f"RolloutGroup: cpu_bind has {len(cpu_bind)} entries for {num_engines} engines."
            )
        self.num_engines = num_engines
        self.engine_kwargs = dict(engine_kwargs)
        self.tensor_parallel_size = int(self.engine_kwargs.get("tensor_parallel_size", 1))
        self.startup_timeout_s = startup_timeout_s
        self.weights_version = 0  # object-store syncs pushed; engines must hold the same (see RolloutActor)
        self.actors = []
        self._spawners = []
        for i in range(num_engines):
            options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts,
                                       "max_task_retries": 0}
            if env_vars:
                options["runtime_env"] = {"env_vars": {k: str(v) for k, v in env_vars.items()}}
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=i
                )
            kwargs = dict(self.engine_kwargs)
            if cpu_bind == "spread":
                kwargs.setdefault("cpu_bind", f"spread:{i}/{num_engines}")
            elif isinstance(cpu_bind, str):
                kwargs.setdefault("cpu_bind", cpu_bind)
            elif cpu_bind is not None:
                kwargs.setdefault("cpu_bind", cpu_bind[i])
            spawn = lambda options=options, kwargs=kwargs: RolloutActor.options(**options).remote(**kwargs)  # noqa: E731
            self._spawners.append(spawn)
            self.actors.append(spawn())
        start = time.perf_counter()
        self.startup_s_per_engine = collect(self.call("ready"), timeout_s=startup_timeout_s,
                                            what=f"RolloutGroup: start-up of {num_engines} engine(s)")
        self.startup_s = time.perf_counter() - start

    # ------------------------------------------------------------------ rollouts
    def generate(self, prompts: Sequence[str], **kwargs: Any) -> Any:
        """ObjectRef of one merged `RolloutBatch`: prompts are split into contiguous shards,
        one per engine (`VLLMRolloutEngine.generate` kwargs: n, temperature, top_k, top_p,
        max_new_tokens, seed, prompt_ids, stop_token_ids); prompt_index stays global."""
        prompts = list(prompts)
        prompt_ids = kwargs.pop("prompt_ids", None)
        refs = []
        for actor, (lo, hi) in zip(
            self.actors, contiguous_shards(len(prompts), self.num_engines), strict=False
        ):
            shard_kwargs = dict(kwargs, prompt_index_offset=lo, expect_weights_version=self.weights_version)
            if prompt_ids is not None:
                shard_kwargs["prompt_ids"] = list(prompt_ids[lo:hi])
            refs.append(actor.generate.remote(prompts[lo:hi], **shard_kwargs))
        return join(refs, merge_rollouts)

    # ------------------------------------------------------------------ weights
    def sync_weights(self, weights: Any, *, tie_word_embeddings: bool | None = None) -> Any:
        """Object-store weight sync: every engine loads the same weights in place.

        `weights` is an ObjectRef to safetensors bytes (what a learner actor returns
        from `serialize_state_dict`; nothing passes through the driver), bytes, or a
        state dict (then `tie_word_embeddings` is required; serialised here once).
        Returns an ObjectRef of the sync's stats, ready once every engine has loaded.
        """
        start = time.perf_counter()
        if isinstance(weights, ray.ObjectRef):
            ref = weights
        else:
            if isinstance(weights, Mapping):
                if tie_word_embeddings is None:
                    raise ValueError(
                        "RolloutGroup.sync_weights: pass tie_word_embeddings=True/False with "
                        "a state dict (a tied lm_head must be sent explicitly)."
                    )
                weights = serialize_state_dict(weights, tie_word_embeddings=tie_word_embeddings)
            ref = ray.put(bytes(weights))
        put_s = time.perf_counter() - start
        self.weights_version += 1
        loads = self.call("load_weights", ref, self.weights_version)
        return join(loads, functools.partial(_load_stats, put_s=put_s))

    def init_weight_broadcast(
        self, *, host: str, port: int, backend: str = "nccl", timeout_s: float = 300.0
    ) -> list:
        """Make every vLLM worker join the learner's broadcast group (learner = rank 0).
        Returns refs; the learner must call `NcclWeightBroadcaster.connect()` while they run."""
        tp = self.tensor_parallel_size
        world = 1 + self.num_engines * tp
        return [
            a.init_weight_broadcast.remote(
                host=host,
                port=port,
                rank_offset=1 + i * tp,
                world_size=world,
                backend=backend,
                timeout_s=timeout_s,
            )
            for i, a in enumerate(self.actors)
        ]

    @property
    def broadcast_world_size(self) -> int:
        return 1 + self.num_engines * self.tensor_parallel_size

    def receive_weight_broadcast(self, plan: list) -> list:
        """Start receiving one broadcast on every engine; returns refs (tensor counts).
        Counts as a weight update: engines must hold the new version before generating."""
        self.weights_version += 1
        return [a.receive_weight_broadcast.remote(plan, self.weights_version) for a in self.actors]

    def broadcast_group_ids(self) -> list:
        """ObjectRefs: the broadcast group each engine process has joined (None: none, e.g. restarted)."""
        return self.call("broadcast_group_id")

    def close_weight_broadcast(self) -> list:
        return [a.close_weight_broadcast.remote() for a in self.actors]

    # ------------------------------------------------------------------ probe
    def probe(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> Any:
        """ObjectRef of each engine's logprobs of one fixed sequence: (num_engines, len(response_ids))."""
        refs = self.call("probe_logprobs_batch", [list(prompt_ids)], [list(response_ids)])
        return join(refs, _first_sequence)

    def stats(self) -> list:
        """ObjectRefs of each engine's `stats()`."""
        return self.call("stats")

    def recover(self, kind: str, *, timeout_s: float | None = None) -> str:
        """`ActorGroup.recover`; a restarted engine holds the initial weights: re-sync before generating."""
        return "rollout: " + super().recover(kind, timeout_s=timeout_s or self.startup_timeout_s)

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop vLLM inside each actor, then kill the actors (idempotent)."""
        if not self.actors:
            return
        try:
            ray.get([a.shutdown.remote() for a in self.actors], timeout=timeout_s)
        except Exception:  # noqa: BLE001 - best effort; the actors are killed below anyway
            pass
        for a in self.actors:
            ray.kill(a)
        self.actors = []
