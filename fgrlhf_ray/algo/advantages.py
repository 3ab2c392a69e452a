"""GAE advantages, whitening, and paper A's reward scaling.

All tensors are (B, T) over response tokens, right-padded: ``mask[i, t] = 1`` for
t < L_i, 0 after. Values at padded positions are ignored (any junk there changes
nothing) and outputs are 0 there.
"""

from __future__ import annotations

import torch

__all__ = ["compute_gae", "whiten", "scale_rewards_by_std", "masked_mean_var"]


def _check_right_padded(mask: torch.Tensor, fn: str) -> torch.Tensor:
    m = mask.bool()
    if m.dim() != 2:
        raise ValueError(f"{fn}: mask must be (B, T), got shape {tuple(mask.shape)}")
    if m.shape[1] > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError(
            f"{fn}: mask must be right-padded (1s then 0s in every row); found a 1 after a 0. "
            "Responses must start at t=0 of the response tensor."
        )
    return m


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a right-padded batch.

    With V_{L_i} := 0 (the episode ends after the last response token, also when it was
    cut by the length limit — paper A does the same):

        δ_t = r_t + γ · V_{t+1} − V_t
        A_t = δ_t + γ · λ · A_{t+1},   A_{L_i} := 0
        R_t = A_t + V_t                (value targets, "returns")

    Args:
        rewards: (B, T) per-token rewards r_t (already including −β·KL).
        values: (B, T) critic values V(s_t) from before the update.
        mask: (B, T) 1 on real response tokens; must be right-padded.
        gamma: discount γ (paper A: 1.0).
        lam: GAE λ (paper A: 0.95 fine-grained, 0.99 holistic).

    Returns:
        advantages: (B, T), 0 at padding.
        returns: (B, T), 0 at padding.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            "compute_gae: rewards, values and mask must share the (B, T) shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    m = _check_right_padded(mask, "compute_gae")
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(m, rewards.to(dtype), zero)
    v = torch.where(m, values.to(dtype), zero)
    B, T = r.shape
    advantages = torch.zeros_like(r)
    last = torch.zeros(B, dtype=dtype, device=r.device)
    next_v = torch.zeros(B, dtype=dtype, device=r.device)
    # Backward recursion, vectorised over the batch. Because padding is zeroed, V_{t+1}
    # and A_{t+1} are 0 past each row's end, which is exactly the terminal condition.
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = delta + gamma * lam * last
        last = torch.where(m[:, t], last, zero)
        advantages[:, t] = last
        next_v = v[:, t]
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns


def masked_mean_var(x: torch.Tensor, mask: torch.Tensor, *, unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``x`` over positions where ``mask`` is 1 (all dims pooled).

    ``unbiased`` applies Bessel's correction n/(n−1) when n > 1. With n = 0 both are 0.
    """
    m = mask.bool()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    xs = torch.where(m, x, zero)
    n = m.sum()
    denom = n.clamp(min=1).to(x.dtype)
    mean = xs.sum() / denom
    var = torch.where(m, (x - mean).square(), zero).sum() / denom
    if unbiased and int(n) > 1:
        var = var * (n.to(x.dtype) / (n - 1).to(x.dtype))
    return mean, var


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    *,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Normalise ``x`` to unit variance over the masked positions of the whole batch.

        μ, σ² = masked mean and (Bessel-corrected) variance of x over all (b, t) with mask 1
        y     = (x − μ) / sqrt(σ² + eps)            if shift_mean
        y     = (x − μ) / sqrt(σ² + eps) + μ        otherwise (mean kept)

    Args:
        x: any shape, typically (B, T).
        mask: same shape, 1 where x is real.

    Returns:
        Same shape as ``x``; 0 where ``mask`` is 0.
    """
    if x.shape != mask.shape:
        raise ValueError(f"whiten: x {tuple(x.shape)} and mask {tuple(mask.shape)} must have the same shape")
    m = mask.bool()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    mean, var = masked_mean_var(x, mask)
    y = (torch.where(m, x, zero) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        y = y + mean
    return torch.where(m, y, zero)


def scale_rewards_by_std(rewards: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Paper A's reward normalisation before GAE: scale by the std, keep the mean.

        r'_t = (r_t − μ) / sqrt(σ² + eps) + μ     over masked tokens of the batch; 0 on padding

    i.e. ``whiten(rewards, mask, shift_mean=False)``. (Paper A's released code divides
    by sqrt(σ) rather than σ — its `whiten` passes a std where a variance is expected;
    we use the std the paper describes.)
    """
    return whiten(rewards, mask, shift_mean=False, eps=eps)
