"""PPO policy / value losses and the log-prob helpers they need.

Tensors are (B, T) over response tokens with ``mask`` 1 on real tokens. Inputs at
masked positions are replaced by 0 *before* any arithmetic, so junk there (even inf
or nan) changes neither the loss nor any gradient.
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_mean",
    "masked_sum",
    "aggregate",
    "logprobs_from_logits",
    "entropy_from_logits",
    "ppo_policy_loss",
    "ppo_value_loss",
    "AGGREGATIONS",
]

AGGREGATIONS = ("token_mean", "seq_mean")


def _zero_masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x over positions where mask is 1 (over ``dim``, or everything)."""
    xs = _zero_masked(x, mask.bool())
    return xs.sum() if dim is None else xs.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ(x · mask) / Σ mask over ``dim`` (or everything); 0 where the mask sums to 0."""
    m = mask.bool()
    s = masked_sum(x, m, dim)
    n = m.sum() if dim is None else m.sum(dim=dim)
    return s / n.clamp(min=1).to(s.dtype)


def aggregate(loss: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    token_mean: Σ_{b,t} mask·ℓ / Σ_{b,t} mask   (every token weighs the same; paper A)
    seq_mean:   (1/B') Σ_b [Σ_t mask·ℓ / Σ_t mask]   (mean per sequence, then over the
                B' sequences with at least one token: every sequence weighs the same)
    """
    if aggregation == "token_mean":
        return masked_mean(loss, mask)
    if aggregation == "seq_mean":
        m = mask.bool()
        per_seq = masked_mean(loss, m, dim=-1)
        has = m.any(dim=-1)
        return masked_mean(per_seq, has)
    raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {AGGREGATIONS}")


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] without materialising a (…, V) log-softmax tensor.

        log p(y) = logits[y] − logsumexp(logits)

    Args:
        logits: (..., V), any float dtype. Half / bfloat16 logits are processed one row
            of the leading dim at a time in float32 (accuracy without a full fp32 copy).
        labels: (...) long token ids.

    Returns:
        (...) float32 (or the logits' dtype if that is float64) log-probabilities.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logprobs_from_logits: logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + (V,)"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        if logits.dim() == 1:
            return logprobs_from_logits(logits.float(), labels)
        return torch.stack([logprobs_from_logits(row.float(), lab) for row, lab in zip(logits, labels)])
    picked = logits.gather(-1, labels.unsqueeze(-1).long()).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: H = logsumexp(z) − Σ softmax(z)·z. Shape (...)."""
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    policy_clip: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO surrogate (Schulman et al. 2017), optionally dual-clipped (Ye et al. 2020).

        ρ_t = exp(log π(a_t) − log π_old(a_t))
        ℓ_t = max(−A_t · ρ_t, −A_t · clip(ρ_t, 1 − ε, 1 + ε))
        dual clip (c > 1), only where A_t < 0:   ℓ_t = min(ℓ_t, −c · A_t)
        loss = aggregate(ℓ, mask, aggregation)          (see `aggregate`)

    Args:
        logprobs: (B, T) log π(a_t) under the current policy (carries the gradient).
        old_logprobs: (B, T) log π_old(a_t) recorded at rollout time.
        advantages: (B, T) advantages (usually whitened).
        mask: (B, T) 1 on real response tokens.
        policy_clip: ε (`ppo.policy_clip`).
        dual_clip: c (> 1) or None.
        aggregation: "token_mean" | "seq_mean".
        logits: optional (B, T, V) logits at the response positions, only for the
            entropy statistic (no gradient flows through it).

    Returns:
        loss: scalar tensor.
        stats: ``policy_loss``; ``approx_kl`` (masked mean of the k3 estimate of
            KL(π_old ‖ π): (ρ − 1) − log ρ); ``approx_kl_k1`` (mean of −log ρ);
            ``clip_frac`` (fraction of tokens where the clipped term is the max and
            differs from the unclipped one); ``dual_clip_frac``; ``ratio_mean``,
            ``ratio_max``; ``entropy`` (masked mean, only with ``logits``).
    """
    if not (logprobs.shape == old_logprobs.shape == advantages.shape == mask.shape):
        raise ValueError(
            "ppo_policy_loss: logprobs, old_logprobs, advantages, mask must share (B, T); got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(advantages.shape)}, {tuple(mask.shape)}"
        )
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_policy_loss: dual_clip must be > 1 (or None), got {dual_clip}")
    m = mask.bool()
    lp = _zero_masked(logprobs, m)
    old = _zero_masked(old_logprobs.to(lp.dtype), m)
    adv = _zero_masked(advantages.to(lp.dtype), m)
    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - policy_clip, 1.0 + policy_clip)
    per_token = torch.maximum(loss_unclipped, loss_clipped)
    dual_active = torch.zeros_like(m)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (per_token > bound) & m
        per_token = torch.where(adv < 0, torch.minimum(per_token, bound), per_token)
    loss = aggregate(per_token, m, aggregation)

    with torch.no_grad():
        clipped = (loss_clipped > loss_unclipped) & m
        lr = log_ratio.detach()
        stats = {
            "policy_loss": float(loss.detach()),
            "approx_kl": float(masked_mean(torch.expm1(lr) - lr, m)),
            "approx_kl_k1": float(masked_mean(-lr, m)),
            "clip_frac": float(masked_mean(clipped.to(lp.dtype), m)),
            "dual_clip_frac": float(masked_mean(dual_active.to(lp.dtype), m)),
            "ratio_mean": float(masked_mean(ratio.detach(), m)),
            "ratio_max": float(_zero_masked(ratio.detach(), m).max()) if m.any() else 0.0,
        }
        if logits is not None:
            if logits.shape[:-1] != mask.shape:
                raise ValueError(
                    f"ppo_policy_loss: logits {tuple(logits.shape)} must be mask {tuple(mask.shape)} + (V,)"
                )
            stats["entropy"] = float(masked_mean(entropy_from_logits(logits.detach()), m))
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    value_clip: float | None = 0.2,
    aggregation: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (paper A / PPO2):

        V^clip_t = V_old,t + clip(V_t − V_old,t, −ε, ε)
        ℓ_t      = ½ · max((V_t − R_t)², (V^clip_t − R_t)²)     (ε = None: ½ (V_t − R_t)²)
        loss     = aggregate(ℓ, mask, aggregation)

    Args:
        values: (B, T) current critic values (carries the gradient).
        old_values: (B, T) critic values at rollout time.
        returns: (B, T) targets R_t (`compute_gae`'s returns).
        mask: (B, T) 1 on real response tokens.
        value_clip: ε (`ppo.value_clip`), or None for no clipping.
        aggregation: "token_mean" | "seq_mean".

    Returns:
        loss: scalar; stats: ``value_loss``, ``value_clip_frac`` (fraction of tokens
        where the clipped error is the larger), ``value_mean``, ``returns_mean``,
        ``value_explained_var`` (1 − Var[R − V] / Var[R], masked).
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError(
            "ppo_value_loss: values, old_values, returns, mask must share (B, T); got "
            f"{tuple(values.shape)}, {tuple(old_values.shape)}, {tuple(returns.shape)}, {tuple(mask.shape)}"
        )
    m = mask.bool()
    v = _zero_masked(values, m)
    old = _zero_masked(old_values.to(v.dtype), m)
    ret = _zero_masked(returns.to(v.dtype), m)
    err_unclipped = (v - ret).square()
    if value_clip is None:
        per_token = 0.5 * err_unclipped
        clipped = torch.zeros_like(m)
    else:
        v_clipped = old + (v - old).clamp(-value_clip, value_clip)
        err_clipped = (v_clipped - ret).square()
        per_token = 0.5 * torch.maximum(err_unclipped, err_clipped)
        clipped = (err_clipped > err_unclipped) & m
    loss = aggregate(per_token, m, aggregation)
    with torch.no_grad():
        from fgrlhf_ray.algo.advantages import masked_mean_var  # no cycle at import time

        _, var_ret = masked_mean_var(ret, m, unbiased=False)
        _, var_res = masked_mean_var((ret - v.detach()), m, unbiased=False)
        explained = 1.0 - float(var_res) / float(var_ret) if float(var_ret) > 0 else 0.0
        stats = {
            "value_loss": float(loss.detach()),
            "value_clip_frac": float(masked_mean(clipped.to(v.dtype), m)),
            "value_mean": float(masked_mean(v.detach(), m)),
            "returns_mean": float(masked_mean(ret, m)),
            "value_explained_var": explained,
        }
    return loss, stats
