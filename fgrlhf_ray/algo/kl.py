"""Per-token KL between the policy and the frozen reference: as a reward penalty, as a loss term
(`kl_loss`, for ``ppo.kl_in: loss``), and KL-coefficient controllers.

All tensors are (B, T) over response tokens with ``mask`` 1 on real tokens (right
padding). Actions a_t are sampled from the policy, so with
``log_ratio_t = log π(a_t) − log π_ref(a_t)`` each estimator is an unbiased or
low-variance single-sample estimate of KL(π ‖ π_ref) at token t (Schulman, "Approximating
KL divergence", 2020):

    k1:  log_ratio                              (unbiased, can be negative)
    k2:  ½ · log_ratio²                         (biased, ≥ 0)
    k3:  (e^{−log_ratio} − 1) + log_ratio       (unbiased, ≥ 0; = (r − 1) − log r with r = π_ref/π)
    abs: |log_ratio|
"""

from __future__ import annotations

import math

import torch

from fgrlhf_ray.algo.losses import aggregate

__all__ = ["kl_penalty", "kl_loss", "FixedKLController", "AdaptiveKLController", "KL_ESTIMATORS"]

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")

# exp(20) ≈ 5e8: keeps k3 finite when the reference assigns ~0 probability to an action.
_K3_LOG_RATIO_CLAMP = 20.0


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str = "k1",
) -> torch.Tensor:
    """Per-token KL estimate (B, T); exactly 0 where ``mask`` is 0.

    Args:
        logprobs: (B, T) log π(a_t) of the sampled tokens under the policy.
        ref_logprobs: (B, T) log π_ref(a_t) under the frozen reference policy.
        mask: (B, T) 1 on real response tokens, 0 on padding (any values there are ignored).
        estimator: "k1" | "k2" | "k3" | "abs" (module docstring). For k3 the log-ratio is
            clamped to ±20 before exponentiating.

    Returns:
        (B, T) tensor in the dtype of ``logprobs``.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_penalty: unknown estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
    if logprobs.shape != ref_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            "kl_penalty: logprobs, ref_logprobs and mask must have the same (B, T) shape, got "
            f"{tuple(logprobs.shape)}, {tuple(ref_logprobs.shape)}, {tuple(mask.shape)}"
        )
    m = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Zero padding *before* any arithmetic, so junk (inf, nan) there cannot leak into
    # values or gradients.
    log_ratio = torch.where(m, logprobs, zero) - torch.where(m, ref_logprobs.to(logprobs.dtype), zero)
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio.square()
    elif estimator == "k3":
        lr = log_ratio.clamp(-_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
        kl = torch.expm1(-lr) + lr
    else:
        kl = log_ratio.abs()
    return torch.where(m, kl, zero)


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "k3",
    aggregation: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(π_θ ‖ π_ref) as a differentiable loss term, for ``ppo.kl_in: loss`` (GRPO's choice).

    With log_ratio_t = log π_θ(a_t) − log π_ref(a_t) and the default k3 estimator
    (Schulman 2020; DeepSeekMath eq. 4):

        kl_t  = π_ref(a_t)/π_θ(a_t) − log(π_ref(a_t)/π_θ(a_t)) − 1  = e^{−log_ratio_t} − 1 + log_ratio_t
        loss  = aggregate(kl, mask, aggregation)          total = policy loss + β · loss
        ∂kl_t / ∂log π_θ(a_t) = 1 − π_ref(a_t)/π_θ(a_t)

    k3 is ≥ 0 and unbiased for the KL when a_t ~ π_θ, and its gradient pulls each
    sampled token's probability toward the reference's. Unlike the reward route (where
    the KL of the rollout policy is a constant), it is differentiated, so ``logprobs``
    must be the *current* policy's (carrying the gradient); ``ref_logprobs`` is
    detached. Use the same ``aggregation`` as the policy loss. The log-ratio is clamped
    to ±20 as in `kl_penalty` (no gradient beyond that).

    Args:
        logprobs: (B, T) log π_θ(a_t), with gradient.
        ref_logprobs: (B, T) log π_ref(a_t) of the frozen reference.
        mask: (B, T) 1 on real response tokens; junk at padding changes neither the loss
            nor any gradient.
        estimator: any of `KL_ESTIMATORS` ("k3" by default).
        aggregation: "token_mean" | "seq_mean" (`losses.aggregate`).

    Returns:
        loss: scalar tensor; stats: ``kl_loss`` (its value), ``kl_loss_max`` (largest kl_t).
    """
    kl = kl_penalty(logprobs, ref_logprobs.detach(), mask, estimator=estimator)
    loss = aggregate(kl, mask, aggregation)
    with torch.no_grad():
        stats = {
            "kl_loss": float(loss.detach()),
            "kl_loss_max": float(kl.detach().max()) if kl.numel() else 0.0,
        }
    return loss, stats


def _saved_kl_coef(state: dict) -> float:
    """β from a controller state dict (older checkpoints stored it under "value")."""
    return float(state["kl_coef"] if "kl_coef" in state else state["value"])


class FixedKLController:
    """Constant KL coefficient β = ``kl_coef`` (paper A: 0.3 fine-grained, 0.2 holistic)."""

    def __init__(self, *, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"FixedKLController: kl_coef must be >= 0, got {kl_coef}")
        self.kl_coef = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns β."""
        return self.kl_coef

    def state_dict(self) -> dict:
        return {"type": "fixed", "kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type", "fixed") != "fixed":
            raise ValueError(f"FixedKLController.load_state_dict: state is for a {state.get('type')!r} controller")
        self.kl_coef = _saved_kl_coef(state)


class AdaptiveKLController:
    """Ziegler et al. (2019) proportional controller driving the observed KL to a target.

        e      = clip(KL_observed / KL_target − 1, −0.2, 0.2)
        β_new  = β · (1 + e · n_steps / horizon)          (β = ``kl_coef``, starting at the config's)

    ``KL_observed`` is the batch mean over samples of Σ_t kl_t (`total_token_rewards`
    stats["kl"]); ``n_steps`` is the number of samples (episodes) in that batch, as in
    lm-human-preferences, so ``horizon`` is measured in samples.
    """

    def __init__(self, *, kl_coef: float, target: float, horizon: float):
        if kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                "AdaptiveKLController: need kl_coef >= 0, target > 0, horizon > 0; got "
                f"kl_coef={kl_coef}, target={target}, horizon={horizon}"
            )
        self.kl_coef = float(kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update β from the observed KL of the last batch; returns the new β."""
        if not math.isfinite(current_kl):
            return self.kl_coef  # a NaN/inf KL would poison β forever; skip the update
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_steps / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict:
        return {"type": "adaptive", "kl_coef": self.kl_coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type", "adaptive") != "adaptive":
            raise ValueError(
                f"AdaptiveKLController.load_state_dict: state is for a {state.get('type')!r} controller"
            )
        self.kl_coef = _saved_kl_coef(state)
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
