"""ScorerActor: one reward model in its own process; ScorerGroup: its replicas."""

from __future__ import annotations

import os
import sys

import ray

from fgrlhf_ray.actors.group import ActorGroup, concat_lists, join
from fgrlhf_ray.config import RewardModelConfig
from fgrlhf_ray.control.audit import judge_rollout
from fgrlhf_ray.infra.chaos import chaos_point
from fgrlhf_ray.infra.reliability import actor_health
from fgrlhf_ray.rewards.factory import build_scorer, credential_env_var, normalization_of
from fgrlhf_ray.types import RolloutBatch, SegmentRewards
from fgrlhf_ray.workers.scorer import score_rollout


@ray.remote
class ScorerActor:
    def __init__(self, config: dict) -> None:
        self.config = RewardModelConfig.model_validate(config)
        self.scorer = build_scorer(self.config)
        if "torch" in sys.modules:  # a neural RM: use the CPUs Ray gave this actor, not every core
            import torch

            torch.set_num_threads(max(1, int(self.config.num_cpus)))

    def normalization(self) -> tuple[float, float]:
        return normalization_of(self.config, self.scorer)

    def score(self, rollout: RolloutBatch, start: int = 0, stop: int | None = None) -> list[SegmentRewards]:
        chaos_point(f"scorer:{self.config.name}")  # tests only: a scheduled kill / hang (fgrlhf_ray.infra.chaos)
        return score_rollout(self.scorer, rollout, start=start, stop=stop)

    def judge(self, rollout: RolloutBatch, indices: list[int]) -> tuple[list[SegmentRewards], float]:
        """Audit judge: verdicts on samples `indices` and the seconds they took (`fgrlhf_ray.control.audit`)."""
        return judge_rollout(self.scorer, rollout, indices)

    def health(self) -> dict:
        """pid, resident memory, whether Ray restarted this actor (see `fgrlhf_ray.infra.reliability`)."""
        return actor_health()


class ScorerGroup(ActorGroup):
    """`num_replicas` ScorerActors for one reward model; a rollout is split across them.

    `score(rollout_ref)` returns one ObjectRef of the whole batch's verdicts: each replica
    scores a contiguous shard of the same object-store rollout and a zero-CPU task joins
    the shards, so the driver never holds the intermediate lists.
    """

    def __init__(self, *, config: RewardModelConfig, scheduling: dict | None = None, max_restarts: int = 2,
                 resources: dict | None = None) -> None:
        self.name = config.name
        self.config = config
        # Ray restarts a crashed replica (max_restarts) but does not re-run its task
        # (max_task_retries=0): the controller retries the phase itself, bounded and logged.
        options = dict(num_cpus=config.num_cpus, num_gpus=config.num_gpus, max_restarts=max_restarts,
                       max_task_retries=0, resources=resources or None, **(scheduling or {}))
        secret_var = credential_env_var(config)
        secret = os.environ.get(secret_var) if secret_var else None
        if secret:  # the driver's token / API key must reach the actor processes (possibly on other nodes)
            options["runtime_env"] = {"env_vars": {secret_var: secret}}
        self._options = options
        self._spawners = [self._spawn] * config.num_replicas
        self.actors = [spawn() for spawn in self._spawners]

    role = "replica"

    def _spawn(self):
        return ScorerActor.options(**self._options).remote(self.config.model_dump())

    def recover(self, kind: str, *, timeout_s: float = 300.0) -> str:
        """`ActorGroup.recover` over the replicas."""
        return f"scorer {self.name!r}: " + super().recover(kind, timeout_s=timeout_s)

    def normalization(self):
        """ObjectRef of (μ, σ) from the first replica (all replicas load the same model)."""
        return self.actors[0].normalization.remote()

    def score(self, rollout_ref, num_samples: int):
        n = len(self.actors)
        bounds = [(num_samples * k // n, num_samples * (k + 1) // n) for k in range(n)]
        shards = [actor.score.remote(rollout_ref, a, b) for actor, (a, b) in zip(self.actors, bounds) if b > a]
        return shards[0] if len(shards) == 1 else join(shards, concat_lists)
