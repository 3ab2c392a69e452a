"""ScorerActor: one reward model in its own process; ScorerGroup: its replicas."""

from __future__ import annotations

import os

import ray

from fgrlhf_ray.config import RewardModelConfig
from fgrlhf_ray.scorers import build_scorer, normalization_of, score_rollout
from fgrlhf_ray.types import RolloutBatch, SegmentRewards


@ray.remote
class ScorerActor:
    def __init__(self, config: dict) -> None:
        self.config = RewardModelConfig.model_validate(config)
        self.scorer = build_scorer(self.config)

    def normalization(self) -> tuple[float, float]:
        return normalization_of(self.config, self.scorer)

    def score(self, rollout: RolloutBatch, start: int = 0, stop: int | None = None) -> list[SegmentRewards]:
        return score_rollout(self.scorer, rollout, start=start, stop=stop)


@ray.remote(num_cpus=0)
def _concat(*shards: list) -> list:
    return [item for shard in shards for item in shard]


class ScorerGroup:
    """`num_replicas` ScorerActors for one reward model; a rollout is split across them.

    `score(rollout_ref)` returns one ObjectRef of the whole batch's verdicts: each replica
    scores a contiguous shard of the same object-store rollout and a zero-CPU task joins
    the shards, so the driver never holds the intermediate lists.
    """

    def __init__(self, *, config: RewardModelConfig, scheduling: dict | None = None, max_restarts: int = 2,
                 resources: dict | None = None) -> None:
        self.name = config.name
        self.config = config
        options = dict(num_cpus=config.num_cpus, num_gpus=config.num_gpus, max_restarts=max_restarts,
                       max_task_retries=max_restarts, resources=resources or None, **(scheduling or {}))
        token = os.environ.get(config.token_env) if config.kind == "http" else None
        if token:  # the driver's bearer token must reach the actor processes (possibly on other nodes)
            options["runtime_env"] = {"env_vars": {config.token_env: token}}
        self.actors = [ScorerActor.options(**options).remote(config.model_dump()) for _ in
                       range(config.num_replicas)]

    def normalization(self):
        """ObjectRef of (μ, σ) from the first replica (all replicas load the same model)."""
        return self.actors[0].normalization.remote()

    def score(self, rollout_ref, num_samples: int):
        n = len(self.actors)
        bounds = [(num_samples * k // n, num_samples * (k + 1) // n) for k in range(n)]
        shards = [actor.score.remote(rollout_ref, a, b) for actor, (a, b) in zip(self.actors, bounds) if b > a]
        return shards[0] if len(shards) == 1 else _concat.remote(*shards)
