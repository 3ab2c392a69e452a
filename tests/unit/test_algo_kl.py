"""KL estimators against plain-Python loops and exact expectations; KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from fgrlhf_ray.algo.kl import AdaptiveKLController, FixedKLController, kl_penalty
from fgrlhf_ray.algo.rewards import total_token_rewards


def _ragged(seed: int, B: int, T: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g).tolist()
    mask = torch.zeros(B, T)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    return lp, ref, mask


def _loop_kl(lp, ref, mask, estimator):
    out = torch.zeros_like(lp)
    for i in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if mask[i, t] == 0:
                continue
            x = lp[i, t].item() - ref[i, t].item()
            if estimator == "k1":
                v = x
            elif estimator == "k2":
                v = 0.5 * x * x
            elif estimator == "k3":
                r = math.exp(-x)  # π_ref / π
                v = (r - 1.0) - math.log(r)
            else:
                v = abs(x)
            out[i, t] = v
    return out


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 17), (2, 64)])
def test_kl_penalty_matches_loop(estimator, shape):
    lp, ref, mask = _ragged(sum(shape), *shape)
    got = kl_penalty(lp, ref, mask, estimator)
    torch.testing.assert_close(got, _loop_kl(lp, ref, mask, estimator), atol=1e-6, rtol=0)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
def test_kl_penalty_junk_at_padding_changes_nothing(estimator):
    lp, ref, mask = _ragged(3, 4, 9)
    lp.requires_grad_(True)
    base = kl_penalty(lp, ref, mask, estimator)
    base.sum().backward()
    g_base = lp.grad.clone()
    lp2 = lp.detach().clone()
    ref2 = ref.clone()
    pad = mask == 0
    lp2[pad] = float("nan")
    ref2[pad] = float("-inf")
    lp2.requires_grad_(True)
    junk = kl_penalty(lp2, ref2, mask, estimator)
    junk.sum().backward()
    assert torch.equal(base.detach(), junk.detach())
    assert torch.equal(g_base, lp2.grad)  # zero, finite gradient at padding
    assert (lp2.grad[pad] == 0).all()


def test_k1_and_k3_are_unbiased_for_exact_kl():
    # E_{a ~ π}[k(a)] = KL(π ‖ π_ref) exactly for k1 and k3 (enumerate the support).
    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0)
    ref = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0)
    true_kl = (pi * (pi.log() - ref.log())).sum()
    mask = torch.ones(1, 50)
    for est in ("k1", "k3"):
        k = kl_penalty(pi.log()[None], ref.log()[None], mask, est)[0]
        assert (pi * k).sum().item() == pytest.approx(true_kl.item(), abs=1e-10)
    assert (kl_penalty(pi.log()[None], ref.log()[None], mask, "k3") >= 0).all()


def test_k3_stays_finite_for_extreme_log_ratios():
    lp = torch.tensor([[0.0, -200.0]])
    ref = torch.tensor([[-200.0, 0.0]])
    k = kl_penalty(lp, ref, torch.ones(1, 2), "k3")
    assert torch.isfinite(k).all()


def test_kl_penalty_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown estimator 'k4'"):
        kl_penalty(x, x, x, "k4")
    with pytest.raises(ValueError, match="same \\(B, T\\) shape"):
        kl_penalty(x, torch.zeros(2, 4), x)


def test_fixed_controller():
    c = FixedKLController(kl_coef=0.3)
    assert c.update(100.0, 64) == 0.3 and c.kl_coef == 0.3
    c2 = FixedKLController(kl_coef=0.0)
    c2.load_state_dict(c.state_dict())
    assert c2.kl_coef == 0.3


def test_adaptive_controller_follows_ziegler_formula():
    c = AdaptiveKLController(kl_coef=0.2, target=6.0, horizon=10000)
    beta = 0.2
    for kl, n in [(12.0, 64), (6.0, 64), (3.0, 128), (0.0, 64), (7.2, 32), (100.0, 256)]:
        err = min(max(kl / 6.0 - 1.0, -0.2), 0.2)
        beta *= 1 + err * n / 10000
        assert c.update(kl, n) == pytest.approx(beta, rel=1e-12)
    assert c.kl_coef == pytest.approx(beta, rel=1e-12)
    before = c.kl_coef
    assert c.update(float("nan"), 64) == before  # a NaN KL does not poison β


def test_adaptive_controller_state_round_trip():
    c = AdaptiveKLController(kl_coef=0.1, target=4.0, horizon=500)
    c.update(8.0, 100)
    restored = AdaptiveKLController(kl_coef=1.0, target=1.0, horizon=1)
    restored.load_state_dict(c.state_dict())
    assert restored.state_dict() == c.state_dict()
    assert restored.update(2.0, 50) == c.update(2.0, 50)
    with pytest.raises(ValueError, match="'fixed'"):
        restored.load_state_dict(FixedKLController(kl_coef=0.1).state_dict())
    with pytest.raises(ValueError, match="target > 0"):
        AdaptiveKLController(kl_coef=0.1, target=0.0, horizon=10)


# One name for the KL coefficient, `kl_coef`: config, controllers, checkpoints and metrics.


def test_kl_controllers_expose_kl_coef_and_load_old_checkpoints():
    fixed = FixedKLController(kl_coef=0.3)
    assert fixed.kl_coef == 0.3 and fixed.state_dict() == {"type": "fixed", "kl_coef": 0.3}
    adaptive = AdaptiveKLController(kl_coef=0.1, target=6.0, horizon=100)
    adaptive.load_state_dict({"type": "adaptive", "value": 0.42, "target": 5.0, "horizon": 50.0})  # pre-rename
    assert adaptive.kl_coef == 0.42 and adaptive.state_dict()["kl_coef"] == 0.42
    fixed.load_state_dict({"type": "fixed", "value": 0.7})
    assert fixed.kl_coef == 0.7


def test_reward_stats_do_not_log_a_second_name_for_the_kl_coefficient():
    mask = torch.ones(2, 3)
    _, stats = total_token_rewards(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mask, 0.3, "k1")
    assert "beta" not in stats and "kl_coef" not in stats  # the controller logs it, once, as kl_coef
