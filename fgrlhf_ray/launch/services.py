"""The controller's services over the Ray actor groups (`fgrlhf_ray.actors`).

Each adapter turns a controller call into a call on its group and returns what the
group returns (an ObjectRef, or the value for the blocking rollout calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fgrlhf_ray.infra.reliability import ensure_actor


@dataclass
class RolloutService:
    group: Any  # fgrlhf_ray.actors.rollout.RolloutGroup
    tokenizer: Any
    max_prompt_tokens: int
    generate_timeout_s: float | None = None  # None: the group's call timeout

    def generate(self, prompts: list[str], *, n: int, sampling: dict, seed: int):
        # Tokenize here so the prompt cut (max_prompt_tokens, keeping the start where
        # the question sits) is the same for vLLM, the learner and the reference.
        prompt_ids = [ids[: self.max_prompt_tokens] for ids in self.tokenizer(prompts)["input_ids"]]
        return self.group.generate(
            prompts, prompt_ids=prompt_ids, n=n, temperature=sampling["temperature"], top_k=sampling["top_k"],
            top_p=sampling["top_p"], max_new_tokens=sampling["max_new_tokens"], seed=seed,
            timeout_s=self.generate_timeout_s,
        )

    def recover(self, kind: str) -> str:
        return self.group.recover(kind)

    def sync_weights(self, weights):
        return self.group.sync_weights(weights)

    def probe_logprobs(self, prompt_ids, response_ids):
        return self.group.probe(prompt_ids, response_ids)


@dataclass
class ScorerService:
    group: Any  # fgrlhf_ray.actors.scorer.ScorerGroup

    @property
    def name(self) -> str:
        return self.group.name

    def score(self, rollout, num_samples: int):
        return self.group.score(rollout, num_samples)

    def recover(self, kind: str) -> str:
        return self.group.recover(kind)


@dataclass
class LearnerService:
    """The controller's learner interface over a `LearnerGroup`: every call returns an ObjectRef."""

    group: Any  # fgrlhf_ray.actors.learner.LearnerGroup
    sync_dtype: str | None = None  # dtype the weights travel in (the engines' dtype)

    def logprobs_and_values(self, rollout):
        return self.group.compute_logprobs_and_values_async(rollout)

    def train(self, experience):
        return self.group.train_async(experience)

    def weights(self):
        return self.group.serialized_weights_ref(self.sync_dtype)

    def probe_logprobs(self, prompt_ids, response_ids):
        return self.group.probe_logprobs_async(prompt_ids, response_ids)

    def save_checkpoint(self, directory: str):
        return self.group.save_checkpoint_async(directory)

    def load_checkpoint(self, directory: str, *, timeout_s: float):
        return self.group.load_checkpoint(directory, timeout_s=timeout_s)

    def alive(self, timeout_s: float = 60.0) -> bool:
        """Whether every learner rank still answers (after a fault whose culprit is unclear)."""
        import ray

        try:
            ray.get([a.node_info.remote() for a in self.group.actors], timeout=timeout_s)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False


@dataclass
class ReferenceService:
    """The controller's reference interface over one `ReferenceActor`."""

    actor: Any  # fgrlhf_ray.actors.reference.ReferenceActor handle
    spawn: Any = None  # () -> a new ReferenceActor handle, to replace a dead-for-good one
    recover_timeout_s: float = 900.0

    def logprobs(self, rollout):
        return self.actor.logprobs.remote(rollout)

    def recover(self, kind: str) -> str:
        import ray

        if kind == "timeout":
            ray.kill(self.actor, no_restart=False)
        self.actor, what = ensure_actor(self.actor, self.spawn, timeout_s=self.recover_timeout_s)
        return f"reference {what}"
