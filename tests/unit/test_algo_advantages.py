"""GAE, whitening and reward scaling against plain loops; special cases; padding invariance."""

from __future__ import annotations

import pytest
import torch

from fgrlhf_ray.algo.advantages import compute_gae, masked_mean_var, scale_rewards_by_std, whiten


def _batch(seed: int, B: int, T: int, min_len: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, T + 1, (B,), generator=g).tolist()
    mask = torch.zeros(B, T)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    return rewards, values, mask, lengths


def _loop_gae(rewards, values, lengths, gamma, lam):
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for i in range(B):
        L = lengths[i]
        next_adv, next_v = 0.0, 0.0
        for t in reversed(range(L)):
            r, v = rewards[i, t].item(), values[i, t].item()
            delta = r + gamma * next_v - v
            next_adv = delta + gamma * lam * next_adv
            adv[i][t] = next_adv
            ret[i][t] = next_adv + v
            next_v = v
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


SHAPES = [(1, 1), (1, 7), (4, 5), (7, 13), (3, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.99), (0.9, 0.5), (1.0, 1.0), (1.0, 0.0)])
def test_gae_matches_loop(shape, gamma, lam):
    rewards, values, mask, lengths = _batch(sum(shape), *shape)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _loop_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, ref_ret, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_gae_gamma1_lambda1_is_reward_to_go_minus_value(shape):
    rewards, values, mask, _ = _batch(7 * sum(shape), *shape)
    adv, ret = compute_gae(rewards, values, mask, 1.0, 1.0)
    r = rewards * mask
    reward_to_go = r.flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(adv, (reward_to_go - values) * mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, reward_to_go * mask, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_gae_lambda0_is_one_step_td(shape):
    rewards, values, mask, _ = _batch(11 * sum(shape), *shape)
    gamma = 0.9
    adv, _ = compute_gae(rewards, values, mask, gamma, 0.0)
    v = values * mask
    next_v = torch.cat([v[:, 1:], torch.zeros(v.shape[0], 1, dtype=v.dtype)], dim=1)  # V_L = 0
    torch.testing.assert_close(adv, (rewards + gamma * next_v - values) * mask, atol=1e-6, rtol=0)


def test_gae_junk_at_padding_changes_nothing():
    rewards, values, mask, _ = _batch(5, 6, 11)
    adv, ret = compute_gae(rewards, values, mask, 1.0, 0.95)
    pad = mask == 0
    r2, v2 = rewards.clone(), values.clone()
    r2[pad], v2[pad] = float("nan"), 1e30
    adv2, ret2 = compute_gae(r2, v2, mask, 1.0, 0.95)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    assert (adv[pad] == 0).all() and (ret[pad] == 0).all()


def test_gae_rejects_left_padding():
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="right-padded"):
        compute_gae(torch.zeros(1, 3), torch.zeros(1, 3), mask, 1.0, 0.95)


def test_gae_single_terminal_reward_hand_example():
    # r = [0, 0, 1], V = [0.5, 0.5, 0.5], γ = 1, λ = 0.5:
    # δ_t = r_t + V_{t+1} − V_t = [0, 0, 1 + 0 − 0.5] = [0, 0, 0.5] (V_3 = 0, terminal)
    # A_2 = 0.5, A_1 = 0 + 0.5·0.5 = 0.25, A_0 = 0 + 0.5·0.25 = 0.125; R = A + V
    adv, ret = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.25, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[0.625, 0.75, 1.0]]))


def _loop_mean_var(x, mask):
    vals = [x[i, t].item() for i in range(x.shape[0]) for t in range(x.shape[1]) if mask[i, t]]
    mu = sum(vals) / len(vals)
    var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)
    return mu, var


@pytest.mark.parametrize("shape", [(2, 3), (5, 9), (16, 40)])
@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_loop(shape, shift_mean):
    x, _, mask, _ = _batch(sum(shape), *shape, min_len=2)
    mu, var = _loop_mean_var(x, mask)
    got = whiten(x, mask, shift_mean=shift_mean)
    for i in range(shape[0]):
        for t in range(shape[1]):
            want = 0.0
            if mask[i, t]:
                want = (x[i, t].item() - mu) / (var + 1e-8) ** 0.5 + (0.0 if shift_mean else mu)
            assert got[i, t].item() == pytest.approx(want, abs=1e-6)
    m, v = masked_mean_var(got, mask)
    assert m.item() == pytest.approx(0.0 if shift_mean else mu, abs=1e-6)
    assert v.item() == pytest.approx(1.0, abs=1e-6)


def test_whiten_junk_at_padding_changes_nothing():
    x, _, mask, _ = _batch(9, 5, 8, min_len=1)
    x2 = x.clone()
    x2[mask == 0] = float("inf")
    assert torch.equal(whiten(x, mask), whiten(x2, mask))


def test_scale_rewards_by_std_keeps_mean_unit_std():
    x, _, mask, _ = _batch(4, 6, 10, min_len=2)
    x = x * 3.0 + 2.0
    mu, _ = _loop_mean_var(x, mask)
    y = scale_rewards_by_std(x, mask)
    m, v = masked_mean_var(y, mask)
    assert m.item() == pytest.approx(mu, abs=1e-9)
    assert v.item() == pytest.approx(1.0, abs=1e-6)
    assert (y[mask == 0] == 0).all()


def test_masked_mean_var_empty_mask():
    m, v = masked_mean_var(torch.ones(2, 2), torch.zeros(2, 2))
    assert m.item() == 0.0 and v.item() == 0.0
