"""Padding a ragged `RolloutBatch` into tensors, and reading response log-probs off a causal LM.

Layout (B samples, P = padded prompt length, T = padded response length):

    sequences       (B, P+T) long   [pad … pad p_0 … p_{P_i−1} | a_0 … a_{L_i−1} pad … pad]
                                     prompt left-padded to P   | response right-padded to T
    attention_mask  (B, P+T) long   1 on real prompt and response tokens, 0 on padding
    action_mask     (B, T)   float  1 on real response tokens (t < L_i)
    position_ids    (B, P+T) long   0, 1, 2, … counted over real tokens only (0 on left pads)
    logprobs        (B, T)   float  the sampler's log π(a_t), 0 on padding

Response token t of sample i sits at column P + t of ``sequences``; a causal LM's
logits at column P + t − 1 predict it (see :func:`gather_response_logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fgrlhf_ray.algo.advantages import compute_gae, scale_rewards_by_std, whiten
from fgrlhf_ray.algo.estimators import compute_advantages
from fgrlhf_ray.algo.kl import kl_penalty
from fgrlhf_ray.algo.losses import logprobs_from_logits
from fgrlhf_ray.algo.rewards import ScorerOutput, place_segment_rewards, total_token_rewards
from fgrlhf_ray.types import Experience

__all__ = ["PaddedRollout", "pad_rollout", "position_ids_from_attention_mask", "gather_response_logprobs",
           "assemble_experience"]


@dataclass
class PaddedRollout:
    """A `RolloutBatch` as tensors (shapes in the module docstring)."""

    sequences: torch.Tensor  # (B, P+T) long
    attention_mask: torch.Tensor  # (B, P+T) long
    action_mask: torch.Tensor  # (B, T) float
    position_ids: torch.Tensor  # (B, P+T) long
    logprobs: torch.Tensor  # (B, T) float: sampler's log π(a_t); 0 on padding
    prompt_lengths: torch.Tensor  # (B,) long: P_i, real prompt tokens
    response_lengths: torch.Tensor  # (B,) long: L_i, real response tokens

    @property
    def prompt_len(self) -> int:
        """P: padded prompt length (response tokens start at this column)."""
        return self.sequences.shape[1] - self.action_mask.shape[1]

    @property
    def response_len(self) -> int:
        """T: padded response length."""
        return self.action_mask.shape[1]


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) long: position of each real token among the real tokens of its row; 0 on pads.

        pos = clamp(cumsum(mask) − 1, min=0) · mask

    Needed because left padding shifts the prompt: HF models otherwise number pads too.
    """
    m = attention_mask.long()
    return ((m.cumsum(dim=-1) - 1).clamp(min=0)) * m


def pad_rollout(
    batch,
    *,
    pad_token_id: int,
    prompt_len: int | None = None,
    response_len: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PaddedRollout:
    """Pad a `fgrlhf_ray.types.RolloutBatch` into tensors.

    Args:
        batch: RolloutBatch with ragged ``prompt_ids`` (B, P_i), ``response_ids`` (B, L_i)
            and ``logprobs`` (B, L_i).
        pad_token_id: id written at padded positions (masked everywhere, so any valid id).
        prompt_len: P; default max P_i. A longer prompt is an error (no silent cut).
        response_len: T; default max L_i. A longer response is an error.
        dtype: float dtype of ``action_mask`` and ``logprobs``.

    Returns:
        PaddedRollout (layout in the module docstring).
    """
    B = len(batch.response_ids)
    if not (len(batch.prompt_ids) == B == len(batch.logprobs)):
        raise ValueError(
            f"pad_rollout: ragged fields disagree on B: prompt_ids={len(batch.prompt_ids)}, "
            f"response_ids={B}, logprobs={len(batch.logprobs)}"
        )
    p_lens = [len(p) for p in batch.prompt_ids]
    r_lens = [len(r) for r in batch.response_ids]
    for i, (r, lp) in enumerate(zip(batch.response_ids, batch.logprobs)):
        if len(lp) != len(r):
            raise ValueError(
                f"pad_rollout: sample {i} has {len(r)} response tokens but {len(lp)} logprobs; "
                "the rollout must return one logprob per sampled token."
            )
    P = max(p_lens, default=0) if prompt_len is None else prompt_len
    T = max(r_lens, default=0) if response_len is None else response_len
    if p_lens and max(p_lens) > P:
        raise ValueError(f"pad_rollout: a prompt has {max(p_lens)} tokens > prompt_len={P}")
    if r_lens and max(r_lens) > T:
        raise ValueError(f"pad_rollout: a response has {max(r_lens)} tokens > response_len={T}")

    sequences = torch.full((B, P + T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)
    action_mask = torch.zeros((B, T), dtype=dtype)
    logprobs = torch.zeros((B, T), dtype=dtype)
    for i in range(B):
        p, r = p_lens[i], r_lens[i]
        if p:
            sequences[i, P - p : P] = torch.as_tensor(batch.prompt_ids[i], dtype=torch.long)
            attention_mask[i, P - p : P] = 1
        if r:
            sequences[i, P : P + r] = torch.as_tensor(batch.response_ids[i], dtype=torch.long)
            attention_mask[i, P : P + r] = 1
            action_mask[i, :r] = 1
            logprobs[i, :r] = torch.as_tensor(batch.logprobs[i], dtype=dtype)
    return PaddedRollout(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
        logprobs=logprobs,
        prompt_lengths=torch.tensor(p_lens, dtype=torch.long),
        response_lengths=torch.tensor(r_lens, dtype=torch.long),
    )


def gather_response_logprobs(
    logits: torch.Tensor,
    sequences: torch.Tensor,
    prompt_len: int,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Response-token log-probs from a causal LM's logits over ``sequences``.

        out[b, t] = log softmax(logits[b, P + t − 1] / τ)[sequences[b, P + t]],  t = 0..T−1

    Args:
        logits: (B, P+T, V) — the model's output on ``sequences`` (any float dtype).
            (B, P+T−1, V) is accepted too (the last position predicts nothing).
        sequences: (B, P+T) long, laid out as in `pad_rollout`.
        prompt_len: P ≥ 1 (the token before the first response token must exist).
        temperature: τ; use the sampling temperature so that log π matches the
            distribution the rollout sampled from.

    Returns:
        (B, T) float32 log-probs; values at padded response positions are meaningless
        (mask them with ``action_mask``).
    """
    B, S = sequences.shape
    P = int(prompt_len)
    if P < 1 or P > S:
        raise ValueError(f"gather_response_logprobs: prompt_len must be in [1, {S}], got {P}")
    if logits.shape[0] != B or logits.shape[1] not in (S, S - 1):
        raise ValueError(
            f"gather_response_logprobs: logits {tuple(logits.shape)} do not match sequences "
            f"{tuple(sequences.shape)}; expected (B, P+T, V) or (B, P+T-1, V)"
        )
    if temperature <= 0:
        raise ValueError(f"gather_response_logprobs: temperature must be > 0, got {temperature}")
    # Slice before any arithmetic: only T positions of the vocabulary-sized tensor are touched.
    resp_logits = logits[:, P - 1 : S - 1]
    if temperature != 1.0:
        resp_logits = resp_logits / temperature
    return logprobs_from_logits(resp_logits, sequences[:, P:])


def assemble_experience(
    *,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    action_mask: torch.Tensor,
    token_offsets: Sequence[Sequence[tuple[int, int]]],
    scorer_outputs: Sequence[ScorerOutput],
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    old_values: torch.Tensor | None,
    kl_coef: float,
    kl_estimator: str,
    gamma: float,
    lam: float,
    scale_rewards: bool,
    whiten_advantages: bool,
    estimator: str = "gae",
    group_ids: torch.Tensor | None = None,
    kl_in: str = "reward",
) -> tuple[Experience, dict[str, float]]:
    """From scorer verdicts and model outputs to a PPO `Experience` (pure function).

    Shapes: `sequences`, `attention_mask` (B, P+T); `action_mask`, `old_logprobs`,
    `ref_logprobs`, `old_values` (B, T); `token_offsets[i]` has one (start, end) per real
    response token of sample i; `group_ids` (B,) the prompt each sample answers.

        scores_t  = Σ_rm w_rm (v − μ_rm)/σ_rm   at each segment's last token   (place_segment_rewards)
        r_t       = scores_t − β·KL_t    (β·KL only with kl_in "reward")        (total_token_rewards)
      gae (critic):
        r_t      ← r_t / std(r) (mean kept)     if scale_rewards               (paper A)
        A, R      = GAE(r, V_old; γ, λ);  A ← whiten(A) if whiten_advantages
      grpo / dr_grpo / rloo / reinforce_pp (no critic: `old_values` None, returns None):
        A         = compute_advantages(estimator, scores, KL_t, β, group_ids)  (algo.estimators)

    The critic-free estimators see the RM scores and the KL separately: they normalise the
    scores over each prompt's group (or the batch) and add the KL as its own term, so the
    dense segment rewards keep their positions (see `fgrlhf_ray.algo.estimators`).
    """
    mask = action_mask
    scores, _, score_stats = place_segment_rewards(scorer_outputs, token_offsets=token_offsets, action_mask=mask)
    reward_kl_coef = kl_coef if kl_in == "reward" else 0.0  # kl_in "loss": the learner adds β·KL to the loss
    rewards, kl_stats = total_token_rewards(scores, old_logprobs, ref_logprobs, mask, reward_kl_coef, kl_estimator)
    if estimator == "gae":
        if scale_rewards:
            rewards = scale_rewards_by_std(rewards, mask)
        advantages, returns = compute_gae(rewards, old_values, mask, gamma, lam)
        if whiten_advantages:
            advantages = whiten(advantages, mask, shift_mean=True)
        estimator_stats: dict[str, float] = {}
    else:
        kl = kl_penalty(old_logprobs, ref_logprobs, mask, estimator=kl_estimator) if reward_kl_coef else None
        advantages, returns, estimator_stats = compute_advantages(
            estimator, scores=scores, mask=mask, group_ids=group_ids, kl=kl, kl_coef=reward_kl_coef, gamma=gamma)
        old_values = None
    experience = Experience(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=mask,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        old_values=old_values,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
    )
    stats = {**score_stats, **kl_stats, **estimator_stats}
    stats["reward/total_mean"] = stats.pop("score")
    return experience, stats
