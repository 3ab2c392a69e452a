"""Ray shell for the frozen reference policy (`fgrlhf_ray.workers.reference.ReferencePolicy`)."""

from __future__ import annotations

from typing import Any

import ray
import torch

from fgrlhf_ray.actors.group import ActorGroup
from fgrlhf_ray.infra.chaos import chaos_point


@ray.remote
class ReferenceActor:
    """Holds one `ReferencePolicy`; `logprobs(batch)` → (B, T) log π_ref(a_t).

    Construct with the `ReferencePolicy` keyword arguments (model_path, dtype,
    micro_batch_size, device, pad_token_id) plus optional `num_threads` (CPU threads).
    A `RolloutBatch` ObjectRef can be passed directly: Ray resolves it.
    """

    def __init__(self, *, num_threads: int | None = None, **policy_kwargs: Any) -> None:
        from fgrlhf_ray.workers.reference import ReferencePolicy

        if num_threads:
            torch.set_num_threads(num_threads)
        self.policy = ReferencePolicy(**policy_kwargs)

    def pad_token_id(self) -> int:
        return self.policy.pad_token_id

    def logprobs(self, batch: Any) -> torch.Tensor:
        chaos_point("reference")  # tests only: a scheduled kill lands here (fgrlhf_ray.infra.chaos)
        return self.policy.logprobs(batch)

    def health(self) -> dict:
        from fgrlhf_ray.infra.reliability import actor_health

        return actor_health()


class ReferenceGroup(ActorGroup):
    """The one `ReferenceActor` of a run, as a group: `logprobs(rollout)` → ObjectRef (B, T).

    Ray restarts a crashed actor (`max_restarts`) without re-running its task; `recover`
    (from `ActorGroup`) waits for that or replaces a dead-for-good actor."""

    role = "reference"

    def __init__(self, *, options: dict[str, Any], num_threads: int | None = None, **policy_kwargs: Any) -> None:
        spawn = lambda: ReferenceActor.options(**options).remote(num_threads=num_threads, **policy_kwargs)  # noqa: E731
        self._spawners = [spawn]
        self.actors = [spawn()]

    @property
    def actor(self):
        return self.actors[0]

    def logprobs(self, rollout: Any) -> Any:
        return self.actor.logprobs.remote(rollout)
