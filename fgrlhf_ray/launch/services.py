"""The one service adapter the controller needs beyond the actor groups themselves.

`LearnerGroup`, `ReferenceGroup` and `ScorerGroup` (`fgrlhf_ray.actors`) already speak
the controller's service contract (`fgrlhf_ray.control.services`): every call returns
one ObjectRef. Generation needs one more step that belongs to neither side: cutting the
tokenized prompts the same way for vLLM, the learner and the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RolloutService:
    group: Any  # fgrlhf_ray.actors.rollout.RolloutGroup
    tokenizer: Any
    max_prompt_tokens: int

    def generate(self, prompts: list[str], *, n: int, sampling: dict, seed: int):
        """ObjectRef of the merged `RolloutBatch`."""
        # Tokenize here so the prompt cut (max_prompt_tokens, keeping the start where
        # the question sits) is the same for vLLM, the learner and the reference.
        prompt_ids = [ids[: self.max_prompt_tokens] for ids in self.tokenizer(prompts)["input_ids"]]
        return self.group.generate(
            prompts, prompt_ids=prompt_ids, n=n, temperature=sampling["temperature"], top_k=sampling["top_k"],
            top_p=sampling["top_p"], max_new_tokens=sampling["max_new_tokens"], seed=seed,
        )

    def recover(self, kind: str) -> str:
        return self.group.recover(kind)

    def sync_weights(self, weights):
        return self.group.sync_weights(weights)

    def probe_logprobs(self, prompt_ids, response_ids):
        return self.group.probe(prompt_ids, response_ids)
