"""How a reward model's raw values become reward: the one weighting rule and its spec.

Every place that turns raw RM values into reward — token placement for PPO
(`algo.rewards.place_segment_rewards`), the controller's `evaluate`, the eval report —
uses the same rule:

    r(v) = w · (v − μ) / σ          per segment value v
    R_i  = Σ_{segments s of sample i} r(v_s)   per sample

with w the RM's weight in the mix and (μ, σ) its normalisation (e.g. the RM's
training-score statistics; defaults leave v as is). `RewardSpec` carries (name, w, μ, σ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RewardSpec", "weighted_values", "sample_rewards"]


@dataclass(frozen=True)
class RewardSpec:
    """How one reward model's raw values are weighed (from its `RewardModelConfig` and
    the RM's normalisation): the w, μ, σ of `w · (v − μ) / σ`, keyed by the RM's name."""

    name: str
    weight: float = 1.0
    mean: float = 0.0
    std: float = 1.0


def weighted_values(values: Sequence[float] | torch.Tensor, *, weight: float = 1.0, mean: float = 0.0,
                    std: float = 1.0) -> torch.Tensor:
    """``w · (v − μ) / σ`` elementwise: float64, the shape of `values` ((N,) for N values).

    Raises ValueError for σ ≤ 0 (a constant RM has no scale to divide by).
    """
    if not std > 0:
        raise ValueError(f"weighted_values: std must be > 0, got {std}")
    v = torch.as_tensor(values, dtype=torch.float64)
    return weight * (v - mean) / std


def sample_rewards(values_per_sample: Sequence[Sequence[float]], *, weight: float = 1.0, mean: float = 0.0,
                   std: float = 1.0) -> list[float]:
    """``R_i = Σ_s w · (v_is − μ) / σ`` for each sample i (a sample without values gets 0)."""
    return [float(weighted_values(list(values), weight=weight, mean=mean, std=std).sum())
            for values in values_per_sample]
