"""The audit judge's actor: one `ScorerActor` built from `audit.judge` (the same scorer
construction as every reward model), driven through the `fgrlhf_ray.control.audit.JudgeService`
interface without ever blocking the PPO loop."""

from __future__ import annotations

import ray

from fgrlhf_ray.actors.scorer import ScorerGroup
from fgrlhf_ray.config import RewardModelConfig


class AuditJudge:
    """`judge(rollout_ref, indices)` → ObjectRef; `done(ref)` polls (timeout 0); `result(ref)` gets it."""

    def __init__(self, *, config: RewardModelConfig, max_restarts: int = 2, resources: dict | None = None) -> None:
        self.group = ScorerGroup(config=config.model_copy(update={"num_replicas": 1}), max_restarts=max_restarts,
                                 resources=resources)

    @property
    def actor(self):
        return self.group.actors[0]

    def judge(self, rollout_ref, indices: list[int]):
        return self.actor.judge.remote(rollout_ref, list(indices))

    def done(self, ref) -> bool:
        ready, _ = ray.wait([ref], timeout=0)
        return bool(ready)

    def result(self, ref, *, timeout: float):
        return ray.get(ref, timeout=timeout)
