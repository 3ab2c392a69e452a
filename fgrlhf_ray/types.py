"""Plain data types that travel between processes (scorers → controller → learner).

Kept free of Ray, vLLM and DeepSpeed so that `fgrlhf_ray.algo` and the reward models
can share them. Everything here is picklable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch only for annotations: keeps this module import-light
    import torch

Density = Literal["sub_sentence", "sentence", "sequence", "token"]


@dataclass(frozen=True)
class Segment:
    """One scored piece of a response, keyed by character offsets into the response text.

    `[char_start, char_end)` indexes the response string (not the prompt). For a
    sequence-level reward the segment spans the whole response; for a token-level
    reward it spans the characters of one reward-model token.
    """

    char_start: int
    char_end: int
    value: float
    label: str | None = None  # e.g. "error" / "no_error" for segment classifiers
    probability: float | None = None  # P(label) when the model provides one


@dataclass
class SegmentRewards:
    """A reward model's verdict on one response.

    `segments` are ordered by `char_end`. `value` is the already weighted-free raw
    reward of the RM (weights and normalisation are applied by
    `fgrlhf_ray.algo.rewards.place_segment_rewards`).
    """

    segments: list[Segment]
    density: Density
    model_name: str = ""
    extra: dict = field(default_factory=dict)

    def char_ends_and_values(self) -> list[tuple[int, float]]:
        """[(char_end, value), ...] — the form `place_segment_rewards` consumes."""
        return [(s.char_end, s.value) for s in self.segments]

    @property
    def total(self) -> float:
        return float(sum(s.value for s in self.segments))


@dataclass
class RolloutBatch:
    """What the rollout engines return for one PPO step. B = prompts × samples per prompt.

    Ragged per-sample lists (no padding) so the batch is cheap to pickle into the
    object store; `fgrlhf_ray.algo` pads them into `Experience` tensors.
    """

    prompts: list[str]  # (B,) prompt text, repeated for each of its n samples
    prompt_ids: list[list[int]]  # (B, P_i) policy token ids of the prompt
    responses: list[str]  # (B,) decoded response text (what scorers see)
    response_ids: list[list[int]]  # (B, T_i) sampled token ids, EOS included if sampled
    logprobs: list[list[float]]  # (B, T_i) sampler's log π(a_t) for each response token
    prompt_index: list[int]  # (B,) index of the prompt in the step's prompt list
    finish_reasons: list[str] = field(default_factory=list)  # (B,) "stop" / "length"

    def __len__(self) -> int:
        return len(self.responses)


@dataclass
class Experience:
    """A padded PPO batch: prompt left-padded to P, response right-padded to T.

    `sequences[:, P:]` are the response tokens; `action_mask` is 1 on real response
    tokens and 0 on padding. All per-token fields are aligned with response tokens.
    """

    sequences: "torch.Tensor"  # (B, P+T) long: prompt (left-padded) ++ response (right-padded)
    attention_mask: "torch.Tensor"  # (B, P+T) long: 1 on real prompt and response tokens
    action_mask: "torch.Tensor"  # (B, T) float: 1 on real response tokens
    old_logprobs: "torch.Tensor"  # (B, T) learner's log π_old(a_t) before the update
    ref_logprobs: "torch.Tensor"  # (B, T) frozen reference policy's log π_ref(a_t)
    old_values: "torch.Tensor | None"  # (B, T) critic's V(s_t) before the update; None without a critic
    rewards: "torch.Tensor"  # (B, T) per-token reward including the KL penalty
    advantages: "torch.Tensor"  # (B, T) advantages of ppo.advantage_estimator (GAE: whitened if configured)
    returns: "torch.Tensor | None"  # (B, T) advantages + old_values (value targets); None without a critic
