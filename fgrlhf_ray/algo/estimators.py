"""Critic-free advantage estimators that use dense (per-segment / per-token) rewards.

Notation shared by every function. B samples, T the padded response length; sample i
has L_i real response tokens (``mask[i, :L_i] = 1``, right padding).

    s_{i,t}   ``scores`` (B, T): the reward models' part of the reward. A segment reward
              sits on the segment's last token, a sequence reward on t = L_i − 1, a
              token-level RM puts one on every token (`rewards.place_segment_rewards`).
    ρ_{i,t}   ``reward_mask`` (B, T): 1 where a reward was placed ("reward positions").
    kl_{i,t}  ``kl`` (B, T): the per-token KL estimate (`kl.kl_penalty`); β = ``kl_coef``.
    g(i)      ``group_ids`` (B,): samples of the same prompt share an id. Any integers,
              in any order: a group need not be contiguous in the batch.

KL (``ppo.kl_in``). With ``reward`` pass ``kl`` and β; with ``loss`` pass ``kl=None``
and add β · `kl.kl_loss` to the policy loss instead (GRPO's own choice). The group
estimators keep the KL *out* of their group statistics: group means, stds and
leave-one-out baselines are taken over the scores only, and the penalty is added
afterwards as its own return-to-go, unnormalised:

    A_{i,t} ← A_{i,t} − β · Σ_{t' ≥ t} γ^{t'−t} kl_{i,t'}

Why: the KL is a cost of the sample's own tokens, not a verdict relative to the other
samples; folded into the scores it would make every token a "reward position" and
swamp the segment statistics, and dividing it by a group σ would blow it up in a
group whose scores are all equal. (OpenRLHF also shapes the score first and adds the
per-token KL after.) REINFORCE++ differs on purpose: its paper puts −β·kl_t into the
reward and whitens the returns of both together.

Outputs are (B, T) and 0 at padding; values at padded positions of any input (even
inf / nan) change nothing. Group statistics are per call, so call these on the whole
rollout batch (every sample of a group present), before splitting into micro-batches.
"""

from __future__ import annotations

from typing import Callable

import torch

from fgrlhf_ray.algo.advantages import _check_right_padded, compute_gae, masked_mean_var, whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "CRITIC_FREE_ESTIMATORS",
    "GROUP_ESTIMATORS",
    "check_estimator_settings",
    "needs_critic",
    "returns_to_go",
    "grpo_advantages",
    "dr_grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "compute_advantages",
]

CRITIC_FREE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
# Estimators whose baseline comes from the other samples of the same prompt.
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
ADVANTAGE_ESTIMATORS = ("gae",) + CRITIC_FREE_ESTIMATORS


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


def needs_critic(estimator: str) -> bool:
    """True for ``gae`` (values from a critic); False for the critic-free estimators."""
    _check_known(estimator)
    return estimator not in CRITIC_FREE_ESTIMATORS


def _check_known(estimator: str) -> None:
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"ppo.advantage_estimator = {estimator!r} is not known; choose one of {ADVANTAGE_ESTIMATORS}"
        )


def check_estimator_settings(estimator: str, n_samples_per_prompt: int) -> None:
    """Raise ValueError if ``estimator`` cannot run with ``n_samples_per_prompt`` samples.

    For config validation: a group estimator compares each sample with the other
    samples of its prompt, so it needs at least 2 of them.
    """
    _check_known(estimator)
    if estimator in GROUP_ESTIMATORS and n_samples_per_prompt < 2:
        raise ValueError(
            f"ppo.advantage_estimator = {estimator!r} compares the samples of one prompt with each "
            f"other and needs rollout.sampling.n_samples_per_prompt >= 2, got {n_samples_per_prompt}. "
            "Raise rollout.sampling.n_samples_per_prompt (4-8 is usual), or choose "
            "ppo.advantage_estimator 'gae' or 'reinforce_pp', which work with one sample per prompt."
        )


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------


def returns_to_go(x: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Discounted per-token returns-to-go of a right-padded (B, T) tensor.

        G_{i,t} = Σ_{t'=t}^{L_i − 1} γ^{t'−t} · x_{i,t'}          (0 at padding)

    This is GAE with V ≡ 0 and λ = 1 (δ_t = x_t, A_t = x_t + γ·A_{t+1}), so it calls
    `compute_gae`: the backward recursion lives in one place.
    """
    advantages, _ = compute_gae(x, torch.zeros_like(x), mask, gamma, 1.0)
    return advantages


def _check_inputs(scores: torch.Tensor, mask: torch.Tensor, fn: str) -> torch.Tensor:
    if scores.shape != mask.shape:
        raise ValueError(
            f"{fn}: scores {tuple(scores.shape)} and mask {tuple(mask.shape)} must share the (B, T) shape"
        )
    if not scores.is_floating_point():
        raise ValueError(f"{fn}: scores must be a floating-point tensor, got {scores.dtype}")
    return _check_right_padded(mask, fn)


def _zeroed(x: torch.Tensor, m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Replace padding *before* any arithmetic, so inf / nan there cannot leak.
    return torch.where(m, x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))


def _kl_returns(kl, kl_coef: float, m: torch.Tensor, dtype, gamma: float, fn: str) -> torch.Tensor:
    """β · Σ_{t' ≥ t} γ^{t'−t} kl_{t'} (B, T); zeros when there is no KL in the reward."""
    if kl is None or kl_coef == 0.0:
        return torch.zeros(m.shape, dtype=dtype, device=m.device)
    if kl.shape != m.shape:
        raise ValueError(f"{fn}: kl {tuple(kl.shape)} must have the (B, T) shape of mask {tuple(m.shape)}")
    return kl_coef * returns_to_go(_zeroed(kl, m, dtype), m, gamma)


def _group_index(group_ids: torch.Tensor, batch: int, device, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Map arbitrary group ids to 0..G−1. Returns (inverse (B,) long, counts (G,) long)."""
    if group_ids is None:
        raise ValueError(f"{fn}: group_ids (B,) is required (samples of one prompt share an id)")
    if group_ids.shape != (batch,) or group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise ValueError(
            f"{fn}: group_ids must be an integer tensor of shape ({batch},), "
            f"got {group_ids.dtype} {tuple(group_ids.shape)}"
        )
    uniq, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if batch and bool((counts < 2).any()):
        lonely = uniq[counts < 2].tolist()
        raise ValueError(
            f"{fn}: group id(s) {lonely[:5]} have a single sample; a group estimator needs >= 2 "
            "samples per prompt (rollout.sampling.n_samples_per_prompt >= 2, see "
            "check_estimator_settings) and every sample of a group in the same call."
        )
    return inverse.to(device), counts.to(device)


def _reward_positions(s: torch.Tensor, reward_mask, m: torch.Tensor, fn: str) -> torch.Tensor:
    """ρ (B, T) bool: the given reward_mask on real tokens, or s ≠ 0 when it is None."""
    if reward_mask is None:
        return (s != 0) & m
    if reward_mask.shape != m.shape:
        raise ValueError(f"{fn}: reward_mask {tuple(reward_mask.shape)} must have the (B, T) shape {tuple(m.shape)}")
    rho = reward_mask.bool() & m
    stray = (s != 0) & ~rho
    if bool(stray.any()):
        i, t = (int(v) for v in stray.nonzero()[0])
        raise ValueError(
            f"{fn}: scores are non-zero at {int(stray.sum())} real token(s) outside reward_mask "
            f"(first: sample {i}, token {t}); mark every placed reward in reward_mask."
        )
    return rho


def _adv_stats(prefix: str, adv: torch.Tensor, m: torch.Tensor) -> dict[str, float]:
    mean, var = masked_mean_var(adv, m)
    return {
        f"{prefix}/mean": float(mean),
        f"{prefix}/std": float(var.sqrt()),
        f"{prefix}/abs_max": float(adv.abs().max()) if adv.numel() else 0.0,
    }


# --------------------------------------------------------------------------------------
# GRPO / Dr. GRPO with process supervision
# --------------------------------------------------------------------------------------


def _group_normalised_scores(s, rho, inverse, n_groups: int, scale_by_std: bool, eps: float):
    """r̃ (B, T) = (s − μ_g) [/ (σ_g + ε)] at reward positions, 0 elsewhere; plus σ_g (G,)."""
    mean_row = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    std_row = torch.zeros_like(mean_row)
    std_group = torch.zeros(n_groups, dtype=s.dtype, device=s.device)
    for g in range(n_groups):  # G = prompts per step: a short loop over masked pooled stats
        rows = inverse == g
        mu, var = masked_mean_var(s, rho & rows[:, None])  # Bessel-corrected; 0 if ≤ 1 position
        mean_row[rows], std_row[rows], std_group[g] = mu, var.sqrt(), var.sqrt()
    centred = s - mean_row[:, None]
    if scale_by_std:
        centred = centred / (std_row[:, None] + eps)
    return torch.where(rho, centred, torch.zeros((), dtype=s.dtype, device=s.device)), std_group


def _process_supervised(scores, mask, group_ids, reward_mask, kl, kl_coef, scale_by_std, eps, fn):
    m = _check_inputs(scores, mask, fn)
    s = _zeroed(scores, m, scores.dtype)
    rho = _reward_positions(s, reward_mask, m, fn)
    inverse, counts = _group_index(group_ids, s.shape[0], s.device, fn)
    r_tilde, std_group = _group_normalised_scores(s, rho, inverse, counts.numel(), scale_by_std, eps)
    adv = returns_to_go(r_tilde, m) - _kl_returns(kl, kl_coef, m, s.dtype, 1.0, fn)
    stats = _adv_stats("adv", adv, m)
    stats["adv/group_score_std_mean"] = float(std_group.mean()) if std_group.numel() else 0.0
    # A group whose rewards are all equal (up to rounding) gives its samples no score signal.
    stats["adv/flat_group_frac"] = float((std_group < 1e-8).float().mean()) if std_group.numel() else 0.0
    stats["adv/reward_positions_per_sample"] = float(rho.sum()) / max(s.shape[0], 1)
    return adv, stats


def grpo_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    reward_mask: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO with process supervision (DeepSeekMath §4.1.3), one reward per reward position.

    For each group g (the samples of one prompt), pool the rewards at *all* reward
    positions of *all* its samples, R_g = {s_{j,t} : g(j) = g, ρ_{j,t} = 1}, and

        μ_g, σ_g  = mean and Bessel-corrected std of R_g
        r̃_{i,t}   = (s_{i,t} − μ_g) / (σ_g + ε)     where ρ_{i,t} = 1, else 0
        A_{i,t}   = Σ_{t' ≥ t} r̃_{i,t'}  −  β · Σ_{t' ≥ t} kl_{i,t'}

    so a token is credited with the (normalised) rewards of its own segment and every
    later one, not with those before it. Several scorers' rewards on one token count as
    one reward (their weighted sum): pooling them keeps the scorer weights' relative
    sizes, which a per-scorer σ would erase. With one sequence reward per sample this
    is outcome GRPO. A group whose rewards are all equal gets A = −β·KL returns only
    (0 without KL), never NaN.

    Args:
        scores: (B, T) placed RM rewards s (no KL); must be 0 off the reward positions.
        mask: (B, T) 1 on real response tokens, right-padded.
        group_ids: (B,) integer prompt ids; every group needs ≥ 2 samples.
        reward_mask: (B, T) 1 where a reward was placed (any sign, also exactly 0). If
            None, the non-zero scores are taken as the reward positions — a placed
            reward of exactly 0 is then missed and shifts μ_g, σ_g; pass the mask to be
            exact (a token-level RM: ``reward_mask = mask``).
        kl: (B, T) per-token KL estimate, or None (``ppo.kl_in: loss``).
        kl_coef: β. The KL stays out of μ_g, σ_g (module docstring).
        eps: ε added to σ_g.

    Returns:
        advantages: (B, T), 0 at padding (do not whiten again).
        stats: ``adv/mean``, ``adv/std``, ``adv/abs_max``, ``adv/group_score_std_mean``,
            ``adv/flat_group_frac`` (groups with σ_g ≈ 0), ``adv/reward_positions_per_sample``.
    """
    return _process_supervised(scores, mask, group_ids, reward_mask, kl, kl_coef, True, eps, "grpo_advantages")


def dr_grpo_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    reward_mask: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") with process supervision.

    As `grpo_advantages` without the std division:

        r̃_{i,t} = s_{i,t} − μ_g     where ρ_{i,t} = 1, else 0
        A_{i,t} = Σ_{t' ≥ t} r̃_{i,t'}  −  β · Σ_{t' ≥ t} kl_{i,t'}

    Dividing by σ_g up-weights prompts whose samples barely differ (too easy or too
    hard); without it the advantage keeps the reward's units and scorer weights.

    Length normalisation, Dr. GRPO's other change, is not part of the advantage: it is
    the loss aggregation. Use ``aggregate(..., "token_mean")`` (`algo.losses`), which
    divides the summed token losses by Σ mask of the whole batch — one constant for
    every response, so no response's tokens are weighted by its own length.
    ``"seq_mean"`` is GRPO's per-response 1/|o_i| and brings the length bias back. (The
    paper divides by a fixed constant, the generation budget; ``token_mean`` differs
    from that by one positive scalar per (micro-)batch.)

    Args and stats: as `grpo_advantages` (no ``eps``). Returns advantages (B, T), 0 at
    padding, and stats.
    """
    return _process_supervised(scores, mask, group_ids, reward_mask, kl, kl_coef, False, 0.0, "dr_grpo_advantages")


# --------------------------------------------------------------------------------------
# RLOO, REINFORCE++
# --------------------------------------------------------------------------------------


def rloo_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE leave-one-out (Ahmadian et al. 2024) on per-token returns-to-go of dense scores.

        G_{i,t} = Σ_{t' ≥ t} γ^{t'−t} s_{i,t'}                  (score return-to-go; 0 for t ≥ L_i)
        b_{i,t} = 1/(n_g − 1) · Σ_{j ≠ i, g(j) = g(i)} G_{j,t}   (the others' return-to-go at t)
        A_{i,t} = G_{i,t} − b_{i,t}  −  β · Σ_{t' ≥ t} γ^{t'−t} kl_{i,t'}

    Dense rewards enter through G: a token is credited with its own segment and the
    later ones, not with segments that ended before it, and is compared with what the
    other samples of the prompt still earned from the same token index on. b_{i,t} uses
    the *other* samples only, so it is independent of sample i's actions and the
    estimate stays unbiased; samples with identical rewards get A = 0. With a single
    sequence reward, b_{i,t} = mean_{j≠i} R_j (exactly RLOO) on every token the other
    samples also reached; past the end of a shorter sample j its return-to-go is 0 and
    it adds 0 to the baseline. (A constant baseline, the others' total G_{j,0} at every
    t, was rejected: it is RLOO everywhere for sequence rewards, but with dense rewards
    it gives late tokens of equally rewarded samples non-zero advantages — their
    remaining reward is compared with a whole response's.) The KL stays out of b.

    Args:
        scores: (B, T) placed RM rewards s (no KL).
        mask: (B, T) 1 on real response tokens, right-padded.
        group_ids: (B,) integer prompt ids; every group needs ≥ 2 samples.
        kl: (B, T) per-token KL estimate, or None (``ppo.kl_in: loss``); kl_coef: β.
        gamma: γ for both returns-to-go.

    Returns:
        advantages: (B, T), 0 at padding; stats: ``adv/mean``, ``adv/std``,
        ``adv/abs_max``, ``adv/baseline_mean`` (mean of b over real tokens).
    """
    fn = "rloo_advantages"
    m = _check_inputs(scores, mask, fn)
    s = _zeroed(scores, m, scores.dtype)
    inverse, counts = _group_index(group_ids, s.shape[0], s.device, fn)
    g_s = returns_to_go(s, m, gamma)  # (B, T), 0 past each sample's end
    group_sum = torch.zeros((counts.numel(), s.shape[1]), dtype=s.dtype, device=s.device)
    group_sum.index_add_(0, inverse, g_s)  # (G, T): Σ_{j in g} G_{j,t}
    n = counts.to(s.dtype)[inverse][:, None]
    baseline = (group_sum[inverse] - g_s) / (n - 1)  # leave-one-out; n ≥ 2 is checked above
    adv = _zeroed(g_s - baseline, m, s.dtype) - _kl_returns(kl, kl_coef, m, s.dtype, gamma, fn)
    stats = _adv_stats("adv", adv, m)
    stats["adv/baseline_mean"] = float(masked_mean_var(baseline, m)[0])
    return adv, stats


def reinforce_pp_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE++ (Hu 2025): per-token returns-to-go of (score − β·KL), whitened over the batch.

        r_{i,t} = s_{i,t} − β · kl_{i,t}
        G_{i,t} = Σ_{t' ≥ t} γ^{t'−t} r_{i,t'}
        A_{i,t} = (G_{i,t} − μ) / sqrt(σ² + ε),   μ, σ² over all real tokens of the batch

    No group: works with one sample per prompt. The baseline is the batch mean, so call
    it on the whole rollout batch. Dense scores enter through G (a token is not
    credited with earlier segments); unlike the group estimators the KL is part of the
    reward and is whitened with it, as in the paper. Whitening uses `advantages.whiten`.

    Args:
        scores: (B, T) placed RM rewards s (no KL).
        mask: (B, T) 1 on real response tokens, right-padded.
        kl: (B, T) per-token KL estimate, or None (``ppo.kl_in: loss``); kl_coef: β.
        gamma: γ.
        eps: ε in the whitening.

    Returns:
        advantages: (B, T), 0 at padding, masked mean 0 and std 1 (do not whiten again);
        stats: ``adv/mean``, ``adv/std``, ``adv/abs_max``, ``adv/return_mean``, ``adv/return_std``.
    """
    fn = "reinforce_pp_advantages"
    m = _check_inputs(scores, mask, fn)
    s = _zeroed(scores, m, scores.dtype)
    g = returns_to_go(s, m, gamma) - _kl_returns(kl, kl_coef, m, s.dtype, gamma, fn)  # = G of s − β·kl
    adv = whiten(g, m, shift_mean=True, eps=eps)
    stats = _adv_stats("adv", adv, m)
    g_mean, g_var = masked_mean_var(g, m)
    stats["adv/return_mean"], stats["adv/return_std"] = float(g_mean), float(g_var.sqrt())
    return adv, stats


# --------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------


def _run_gae(*, scores, mask, values, kl, kl_coef, gamma, lam, **_):
    if values is None:
        raise ValueError(
            "compute_advantages: ppo.advantage_estimator 'gae' needs the critic's values (B, T); "
            "pass values=..., or choose a critic-free estimator " + str(CRITIC_FREE_ESTIMATORS)
        )
    m = _check_inputs(scores, mask, "compute_advantages")
    rewards = _zeroed(scores, m, scores.dtype)
    if kl is not None and kl_coef != 0.0:
        rewards = rewards - kl_coef * _zeroed(kl, m, scores.dtype)
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    return advantages, returns, {}


def _run_grpo(*, scores, mask, group_ids, reward_mask, kl, kl_coef, **_):
    return _pair(grpo_advantages(scores, mask, group_ids, reward_mask=reward_mask, kl=kl, kl_coef=kl_coef))


def _run_dr_grpo(*, scores, mask, group_ids, reward_mask, kl, kl_coef, **_):
    return _pair(dr_grpo_advantages(scores, mask, group_ids, reward_mask=reward_mask, kl=kl, kl_coef=kl_coef))


def _run_rloo(*, scores, mask, group_ids, kl, kl_coef, gamma, **_):
    return _pair(rloo_advantages(scores, mask, group_ids, kl=kl, kl_coef=kl_coef, gamma=gamma))


def _run_reinforce_pp(*, scores, mask, kl, kl_coef, gamma, **_):
    return _pair(reinforce_pp_advantages(scores, mask, kl=kl, kl_coef=kl_coef, gamma=gamma))


def _pair(result):
    advantages, stats = result
    return advantages, None, stats  # no critic: no value targets


_ESTIMATORS: dict[str, Callable[..., tuple]] = {
    "gae": _run_gae,
    "grpo": _run_grpo,
    "dr_grpo": _run_dr_grpo,
    "rloo": _run_rloo,
    "reinforce_pp": _run_reinforce_pp,
}


def compute_advantages(
    estimator: str,
    *,
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    reward_mask: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """Advantages by ``ppo.advantage_estimator`` name (a registry, not an if-chain).

        gae           compute_gae(s − β·kl, values; γ, λ)    → (A, R, {})   needs values
        grpo          grpo_advantages(...)                   → (A, None, stats)
        dr_grpo       dr_grpo_advantages(...)                → (A, None, stats)
        rloo          rloo_advantages(...; γ)                → (A, None, stats)
        reinforce_pp  reinforce_pp_advantages(...; γ)        → (A, None, stats)

    ``returns`` is None exactly for the critic-free estimators: no value targets, so no
    critic, values phase or value loss is needed (`needs_critic`). ``gae`` advantages
    are raw (whiten them as today); the critic-free ones are final — GRPO / RLOO are
    group-relative and REINFORCE++ is already whitened.

    Args:
        estimator: one of `ADVANTAGE_ESTIMATORS`.
        scores: (B, T) placed RM rewards s, without KL (for gae, the already-combined,
            possibly std-scaled reward with ``kl=None`` works too).
        mask: (B, T) 1 on real response tokens, right-padded.
        group_ids: (B,) integer prompt ids; required for `GROUP_ESTIMATORS`.
        reward_mask: (B, T) reward positions, grpo / dr_grpo only (see `grpo_advantages`).
        kl: (B, T) per-token KL estimate, or None (``ppo.kl_in: loss``); kl_coef: β.
        values: (B, T) critic values, gae only (ignored otherwise).
        gamma: γ (gae, rloo, reinforce_pp; grpo / dr_grpo are undiscounted).
        lam: GAE λ.

    Returns:
        (advantages (B, T), returns (B, T) or None, stats), all 0 at padding.
    """
    _check_known(estimator)
    return _ESTIMATORS[estimator](
        scores=scores, mask=mask, group_ids=group_ids, reward_mask=reward_mask, kl=kl,
        kl_coef=kl_coef, values=values, gamma=gamma, lam=lam,
    )
