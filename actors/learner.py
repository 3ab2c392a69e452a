"""Ray shells for the PPO learner: `LearnerActor` (one DeepSpeed rank) and `LearnerGroup`.

`LearnerGroup` starts M `LearnerActor`s that form ONE torch.distributed group:
rank 0 picks a free port on its node, every actor gets MASTER_ADDR / MASTER_PORT /
RANK / WORLD_SIZE / LOCAL_RANK in its environment, then all build their
`fgrlhf_ray.workers.learner.PPOLearner` at the same time (the rendezvous needs all of them).
Backend: gloo on CPU (`DS_ACCELERATOR=cpu` is put in each actor's runtime_env), NCCL
on GPU (NOT exercised on the development machine: no GPU there).

Data parallelism: a batch (a `RolloutBatch`, `Experience`, … as an ObjectRef) is split
into M equal, contiguous shards by a small Ray task (`shard_batch`), so the driver never
pulls the tensors; each rank receives its shard as an ObjectRef. A `RolloutBatch` is
padded once, before splitting, so all shards share the same (P, T) and the per-rank
outputs concatenate back into the controller's padded layout. B must be a multiple of M
(under ZeRO-3 every rank must run the same number of forward passes).

Every method that touches the model is called on all ranks (ZeRO-3 gathers parameters
collectively); results that only rank 0 produces (weights) come from rank 0.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fgrlhf_ray.actors.group import ActorGroup, first, join
from fgrlhf_ray.infra.chaos import chaos_point
from fgrlhf_ray.infra.ports import free_port
from fgrlhf_ray.workers.learner import ForwardBatch, LearnerSettings, as_forward_batch, mean_stats
from fgrlhf_ray.types import Experience, RolloutBatch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- tasks


def split_batch(batch: Any, num_shards: int, *, pad_token_id: int) -> list[Any]:
    """Split a batch into `num_shards` equal contiguous shards along B (pure; run in a task).

    Experience → Experiences; RolloutBatch → padded once, then `ForwardBatch`es;
    anything else `as_forward_batch` accepts → `ForwardBatch`es.
    """
    if isinstance(batch, RolloutBatch):
        batch = as_forward_batch(batch, pad_token_id=pad_token_id)
    B = batch.sequences.shape[0] if hasattr(batch, "sequences") else len(batch["sequences"])
    if B % num_shards:
        raise ValueError(
            f"LearnerGroup: a batch of B={B} samples cannot be split evenly over {num_shards} learner ranks; "
            f"make the rollout batch (ppo.prompts_per_step × rollout.sampling.n_samples_per_prompt) a "
            f"multiple of learner.world_size."
        )
    n = B // num_shards
    if isinstance(batch, Experience):
        fields = [f.name for f in dataclasses.fields(Experience)]
        return [  # (old_values / returns are None for the critic-free estimators)
            Experience(**{f: None if getattr(batch, f) is None else getattr(batch, f)[r * n : (r + 1) * n]
                          for f in fields})
            for r in range(num_shards)
        ]
    fb = as_forward_batch(batch, pad_token_id=pad_token_id)
    return [
        ForwardBatch(
            sequences=fb.sequences[r * n : (r + 1) * n],
            attention_mask=fb.attention_mask[r * n : (r + 1) * n],
            action_mask=fb.action_mask[r * n : (r + 1) * n],
        )
        for r in range(num_shards)
    ]


@ray.remote(num_cpus=0)
def shard_batch(batch: Any, num_shards: int, pad_token_id: int):
    """Ray task around `split_batch`; call with `.options(num_returns=num_shards)`."""
    shards = split_batch(batch, num_shards, pad_token_id=pad_token_id)
    return shards[0] if num_shards == 1 else tuple(shards)


def concat_logprobs_and_values(parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple:
    """Per-rank (logprobs (b, T), values (b, T) or None without a critic) → (B, T), (B, T) or None."""
    values = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
    return torch.cat([p[0] for p in parts]), values


# --------------------------------------------------------------------------- actor


@ray.remote
class LearnerActor:
    """One learner rank. Construct, then call `setup` on all ranks concurrently."""

    def __init__(self, *, rank: int, world_size: int, num_threads: int | None = None) -> None:
        self.rank, self.world_size = rank, world_size
        if num_threads:
            torch.set_num_threads(num_threads)
        self.learner = None

    def node_info(self) -> dict[str, str]:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address()}

    def pick_master_port(self) -> tuple[str, int]:
        ip = ray.util.get_node_ip_address()
        return ip, free_port(ip)

    def setup(self, *, master_addr: str, master_port: int, local_rank: int, settings: LearnerSettings) -> dict:
        os.environ.update(
            {"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(self.rank),
             "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(local_rank)}
        )
        from fgrlhf_ray.workers.learner import PPOLearner  # after the env: DeepSpeed reads it

        self.learner = PPOLearner(settings=settings)
        return self.learner.info()

    def compute_logprobs_and_values(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.learner.compute_logprobs_and_values(batch)

    def train_step(self, experience: Experience) -> dict[str, float]:
        chaos_point("learner")  # tests only: a scheduled kill lands here (fgrlhf_ray.infra.chaos)
        return self.learner.train_step(experience)

    def broadcast_address(self) -> tuple[str, int]:
        """(node IP, free port) of this rank: where rank 0 hosts the weight-broadcast store."""
        return self.pick_master_port()

    def state_dict_for_sync(self) -> dict[str, torch.Tensor] | None:
        # ZeRO-3 gathers collectively, so all ranks work; otherwise only rank 0 does.
        if self.rank != 0 and self.learner.zero_stage != 3:
            return None
        sd = self.learner.state_dict_for_sync()
        return sd if self.rank == 0 else None

    def serialized_weights(self, dtype: str | None = None) -> bytes | None:
        if self.rank != 0 and self.learner.zero_stage != 3:
            return None
        torch_dtype = _DTYPES[dtype] if dtype else None
        if self.rank != 0:
            self.learner.state_dict_for_sync()  # take part in the gather
            return None
        return self.learner.serialized_weights_for_sync(dtype=torch_dtype)

    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        return self.learner.probe_logprobs(prompt_ids, response_ids)

    # Bucketed broadcast to the vLLM workers ("nccl" weight sync; gloo on CPU). Rank 0
    # owns the `NcclWeightBroadcaster`; under ZeRO-3 every rank takes part in the gather.
    def init_weight_broadcast(self, *, host: str, port: int, world_size: int, backend: str = "nccl",
                              bucket_bytes: int = 256 * 1024**2, timeout_s: float = 300.0,
                              dtype: str | None = None) -> None:
        if self.rank != 0:
            return
        from fgrlhf_ray.weight_sync import NcclWeightBroadcaster

        self._broadcaster = NcclWeightBroadcaster(
            host=host, port=port, world_size=world_size, backend=backend, bucket_bytes=bucket_bytes,
            timeout_s=timeout_s, tie_word_embeddings=self.learner.tie_word_embeddings,
            dtype=_DTYPES[dtype] if dtype else None,
        )
        self._broadcaster.connect()

    def prepare_weight_broadcast(self) -> list | None:
        sd = self.state_dict_for_sync()
        if self.rank != 0:
            return None
        self._pending_weights = sd
        return self._broadcaster.plan(sd)

    def broadcast_weights(self, plan: list) -> dict[str, float] | None:
        if self.rank != 0:
            return None
        sd, self._pending_weights = self._pending_weights, None
        return self._broadcaster.broadcast(sd, plan)

    def close_weight_broadcast(self) -> None:
        if self.rank == 0 and getattr(self, "_broadcaster", None) is not None:
            self._broadcaster.close()
            self._broadcaster = None

    def save_checkpoint(self, directory: str) -> str:
        return self.learner.save_checkpoint(directory)

    def load_checkpoint(self, directory: str) -> None:
        self.learner.load_checkpoint(directory)

    def health(self) -> dict:
        from fgrlhf_ray.infra.reliability import actor_health

        return actor_health()

    def param_fingerprint(self) -> list[float]:
        """Σ and Σ|·| of each policy and critic parameter this rank holds in full (tests).

        Only meaningful for ZeRO stages 0–2 (full parameters on every rank).
        """
        out = []
        for engine in self.learner.engines:
            for p in engine.module.parameters():
                out += [float(p.detach().double().sum()), float(p.detach().double().abs().sum())]
        return out


# --------------------------------------------------------------------------- group


class LearnerGroup(ActorGroup):
    """M `LearnerActor`s forming one DeepSpeed data-parallel group.

    Keyword-only args:
        world_size: M ranks.
        settings: the `LearnerSettings` every rank's `PPOLearner` is built from.
        placement_group: optional Ray placement group; rank i goes to bundle
            `bundle_offset + i`.
        num_cpus_per_actor / num_gpus_per_actor / resources: Ray resources per rank.
        runtime_env: extra runtime_env for the actors (its env_vars are merged).
        setup_timeout_s: bound on building the engines (rendezvous included).
        sync_dtype: dtype the weights travel in to the engines (`weights()`); None: the learner's.
    """

    role = "rank"

    def __init__(
        self,
        *,
        world_size: int,
        settings: LearnerSettings,
        placement_group=None,
        bundle_offset: int = 0,
        num_cpus_per_actor: float = 1.0,
        num_gpus_per_actor: float = 0.0,
        resources: Mapping[str, float] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        setup_timeout_s: float = 900.0,
        sync_dtype: str | None = None,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"LearnerGroup: world_size must be >= 1, got {world_size}.")
        self.world_size = world_size
        self.sync_dtype = sync_dtype
        env = dict(runtime_env or {})
        env_vars = dict(env.get("env_vars", {}))
        if num_gpus_per_actor == 0:
            env_vars.setdefault("DS_ACCELERATOR", "cpu")  # must be set before deepspeed's import
        env["env_vars"] = env_vars
        self.actors = []
        for rank in range(world_size):
            options: dict[str, Any] = {
                "num_cpus": num_cpus_per_actor,
                "num_gpus": num_gpus_per_actor,
                "runtime_env": env,
            }
            if resources:
                options["resources"] = dict(resources)
            if placement_group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle_offset + rank
                )
            threads = max(1, int(num_cpus_per_actor)) if num_gpus_per_actor == 0 else None
            self.actors.append(LearnerActor.options(**options).remote(rank=rank, world_size=world_size,
                                                                     num_threads=threads))
        try:
            nodes = ray.get([a.node_info.remote() for a in self.actors], timeout=setup_timeout_s)
            master_addr, master_port = ray.get(self.actors[0].pick_master_port.remote(), timeout=setup_timeout_s)
            infos = ray.get(
                [
                    a.setup.remote(
                        master_addr=master_addr,
                        master_port=master_port,
                        local_rank=self._local_rank(nodes, rank, gpus=num_gpus_per_actor > 0),
                        settings=settings,
                    )
                    for rank, a in enumerate(self.actors)
                ],
                timeout=setup_timeout_s,
            )
        except BaseException:
            self.shutdown()
            raise
        self.info = infos[0]
        self.pad_token_id: int = infos[0]["pad_token_id"]
        self.tie_word_embeddings: bool = infos[0]["tie_word_embeddings"]

    @staticmethod
    def _local_rank(nodes: list[dict], rank: int, *, gpus: bool) -> int:
        # With GPUs Ray gives each actor only its own device (CUDA_VISIBLE_DEVICES), so
        # the device index inside the actor is 0. On CPU it is the rank's index among
        # the ranks of its node (DeepSpeed only uses it for naming there).
        if gpus:
            return 0
        return sum(n["node_id"] == nodes[rank]["node_id"] for n in nodes[:rank])

    # ---------------------------------------------------------------- data
    # Every call returns one ObjectRef (`fgrlhf_ray.actors.group`). Calls that touch the
    # model run on all ranks (ZeRO-3 gathers collectively); where only rank 0 produces the
    # result (weights, probe), its ref is returned directly rather than through a join
    # task, which would copy the weights once more through the object store.

    def shard(self, batch_ref: Any) -> list[ray.ObjectRef]:
        """M ObjectRefs, one equal shard per rank (see module docstring)."""
        refs = shard_batch.options(num_returns=self.world_size).remote(batch_ref, self.world_size, self.pad_token_id)
        return [refs] if self.world_size == 1 else list(refs)

    def _per_shard(self, method: str, batch_ref: Any) -> list:
        return [getattr(a, method).remote(s) for a, s in zip(self.actors, self.shard(batch_ref))]

    def logprobs_and_values(self, batch_ref: Any) -> ray.ObjectRef:
        """ObjectRef of (old_logprobs (B, T), values (B, T)) for the whole batch."""
        return join(self._per_shard("compute_logprobs_and_values", batch_ref), concat_logprobs_and_values)

    def train(self, experience_ref: Any) -> ray.ObjectRef:
        """ObjectRef of the rank-averaged `PPOLearner.train_step` stats (one PPO update)."""
        return join(self._per_shard("train_step", experience_ref), mean_stats)

    # ---------------------------------------------------------------- weights

    def state_dict_for_sync(self) -> ray.ObjectRef:
        """ObjectRef of rank 0's full HF state dict (all ranks take part under ZeRO-3)."""
        return self.call("state_dict_for_sync")[0]

    def weights(self, dtype: str | None = None) -> ray.ObjectRef:
        """ObjectRef of rank 0's safetensors bytes — what `RolloutGroup.sync_weights` takes —
        in `dtype` (default: the group's `sync_dtype`, the engines' dtype)."""
        return self.call("serialized_weights", dtype or self.sync_dtype)[0]

    def probe_logprobs(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> ray.ObjectRef:
        return self.call("probe_logprobs", list(prompt_ids), list(response_ids))[0]

    def weight_broadcast_address(self) -> ray.ObjectRef:
        """ObjectRef of (host, port) for the weight-broadcast group: rank 0's node and a free port there."""
        return self.actors[0].broadcast_address.remote()

    def init_weight_broadcast(self, *, host: str, port: int, world_size: int, backend: str = "nccl",
                              bucket_bytes: int = 256 * 1024**2, timeout_s: float = 300.0,
                              dtype: str | None = None) -> ray.ObjectRef:
        """Rank 0 joins the broadcast group as its rank 0 (with `RolloutGroup.init_weight_broadcast`
        started at the same time: the rendezvous needs both). Returns rank 0's ObjectRef."""
        return self.actors[0].init_weight_broadcast.remote(
            host=host, port=port, world_size=world_size, backend=backend, bucket_bytes=bucket_bytes,
            timeout_s=timeout_s, dtype=dtype,
        )

    def prepare_weight_broadcast(self) -> ray.ObjectRef:
        """Gather the weights (all ranks under ZeRO-3); rank 0 keeps them; ObjectRef of the bucket plan.

        Then: `refs = rollout.receive_weight_broadcast(plan)`,
        `ray.get([learner.broadcast_weights(plan), *refs])`.
        """
        return self.call("prepare_weight_broadcast")[0]

    def broadcast_weights(self, plan: list) -> ray.ObjectRef:
        return self.actors[0].broadcast_weights.remote(plan)

    def close_weight_broadcast(self) -> ray.ObjectRef:
        return self.actors[0].close_weight_broadcast.remote()

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, directory: str) -> ray.ObjectRef:
        """ObjectRef that resolves (to `directory`) once every rank has saved."""
        return join(self.call("save_checkpoint", str(directory)), first)

    def load_checkpoint(self, directory: str) -> ray.ObjectRef:
        """ObjectRef that resolves once every rank has loaded."""
        return join(self.call("load_checkpoint", str(directory)), first)

    def param_fingerprints(self) -> list[ray.ObjectRef]:
        return self.call("param_fingerprint")

    def alive(self, timeout_s: float = 60.0) -> bool:
        """Whether every rank still answers (after a fault whose culprit is unclear)."""
        try:
            ray.get(self.call("node_info"), timeout=timeout_s)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    def recover(self, kind: str, **_: Any) -> str:
        raise RuntimeError("learner ranks are not recovered mid-run: their optimizer state is lost with them; "
                           "resume from the last checkpoint")

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
