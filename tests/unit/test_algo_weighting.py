"""The one reward-weighting rule `w · Σ (v − μ) / σ` and its spec, shared by training, the
controller's evaluate and the eval report."""

from __future__ import annotations

import pytest
import torch

from fgrlhf_ray.algo.weighting import RewardSpec, sample_rewards, weighted_values


def test_weighted_values_match_a_plain_loop():
    values = [0.5, -1.0, 3.25, 0.0]
    got = weighted_values(values, weight=0.3, mean=0.1, std=2.0)
    assert got.dtype == torch.float64 and got.shape == (4,)
    assert got.tolist() == pytest.approx([0.3 * (v - 0.1) / 2.0 for v in values])
    assert weighted_values([2.0]).tolist() == [2.0]  # defaults leave v as is


def test_sample_rewards_sum_each_samples_segments():
    samples = [[1.0, -1.0, 1.0], [], [4.0]]
    expected = [sum(0.5 * (v - 1.0) / 2.0 for v in s) for s in samples]
    assert sample_rewards(samples, weight=0.5, mean=1.0, std=2.0) == pytest.approx(expected)
    assert sample_rewards(samples, weight=0.5, mean=1.0, std=2.0)[1] == 0.0


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_a_scale_that_is_not_positive_is_refused(std):
    with pytest.raises(ValueError, match="std must be > 0"):
        weighted_values([1.0], std=std)


def test_controller_and_report_use_the_one_spec():
    from fgrlhf_ray.control.controller import ScorerSpec
    from fgrlhf_ray.evaluation.report import RMSpec

    assert ScorerSpec is RewardSpec and RMSpec is RewardSpec
    assert RewardSpec("fact", 0.5) == RewardSpec(name="fact", weight=0.5, mean=0.0, std=1.0)
