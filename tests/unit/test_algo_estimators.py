"""Critic-free advantage estimators (algo/estimators.py) and the k3 KL loss (algo/kl.py).

Each vectorised estimator against a plain-Python loop on random ragged batches with
shuffled (non-contiguous) groups; hand-computed cases; padding invariance; group edge
cases; dense vs summed rewards; the dispatcher and the settings check. Fast, CPU only.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from fgrlhf_ray.algo.advantages import compute_gae
from fgrlhf_ray.algo.estimators import (
    ADVANTAGE_ESTIMATORS,
    CRITIC_FREE_ESTIMATORS,
    GROUP_ESTIMATORS,
    check_estimator_settings,
    compute_advantages,
    dr_grpo_advantages,
    grpo_advantages,
    needs_critic,
    reinforce_pp_advantages,
    returns_to_go,
    rloo_advantages,
)
from fgrlhf_ray.algo.kl import kl_loss
from fgrlhf_ray.algo.losses import aggregate

# --------------------------------------------------------------------------------------
# Batches and plain-loop references
# --------------------------------------------------------------------------------------


def _batch(seed: int, n_groups: int, n: int, T: int, density: float = 0.3):
    """Ragged batch of n_groups × n samples, groups shuffled through the batch."""
    g = torch.Generator().manual_seed(seed)
    B = n_groups * n
    lengths = torch.randint(0, T + 1, (B,), generator=g).tolist()
    mask = torch.zeros(B, T)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    reward_mask = (torch.rand(B, T, generator=g) < density) & mask.bool()
    for i, L in enumerate(lengths):  # a sequence-level reward on the last token, as paper A's C3
        if L:
            reward_mask[i, L - 1] = True
    scores = torch.randn(B, T, generator=g, dtype=torch.float64) * reward_mask
    kl = torch.rand(B, T, generator=g, dtype=torch.float64) * mask
    ids = torch.arange(n_groups).repeat_interleave(n) * 7 + 3  # ids need not be 0..G-1
    group_ids = ids[torch.randperm(B, generator=g)]
    return scores, mask, group_ids, reward_mask, kl, lengths


def _groups(group_ids):
    out: dict[int, list[int]] = {}
    for i, gid in enumerate(group_ids.tolist()):
        out.setdefault(gid, []).append(i)
    return out


def _rtg(xs, gamma=1.0):
    out, run = [0.0] * len(xs), 0.0
    for t in reversed(range(len(xs))):
        run = xs[t] + gamma * run
        out[t] = run
    return out


def _loop_grpo(scores, mask, group_ids, reward_mask, kl, beta, scale, eps=1e-6):
    B, T = scores.shape
    L = [int(mask[i].sum()) for i in range(B)]
    s = [[scores[i, t].item() for t in range(L[i])] for i in range(B)]
    rho = [[bool(reward_mask[i, t]) for t in range(L[i])] for i in range(B)]
    adv = torch.zeros(B, T, dtype=torch.float64)
    for members in _groups(group_ids).values():
        vals = [s[i][t] for i in members for t in range(L[i]) if rho[i][t]]
        mu = sum(vals) / len(vals) if vals else 0.0
        var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
        sd = math.sqrt(var)
        for i in members:
            norm = [((s[i][t] - mu) / (sd + eps) if scale else s[i][t] - mu) if rho[i][t] else 0.0
                    for t in range(L[i])]
            k = [kl[i, t].item() for t in range(L[i])]
            for t, (a, b) in enumerate(zip(_rtg(norm), _rtg(k))):
                adv[i, t] = a - beta * b
    return adv


def _loop_rloo(scores, mask, group_ids, kl, beta, gamma):
    B, T = scores.shape
    L = [int(mask[i].sum()) for i in range(B)]
    G = [_rtg([scores[i, t].item() for t in range(L[i])], gamma) for i in range(B)]
    K = [_rtg([kl[i, t].item() for t in range(L[i])], gamma) for i in range(B)]
    adv = torch.zeros(B, T, dtype=torch.float64)
    for members in _groups(group_ids).values():
        for i in members:
            others = [j for j in members if j != i]
            for t in range(L[i]):
                b = sum(G[j][t] if t < L[j] else 0.0 for j in others) / len(others)
                adv[i, t] = G[i][t] - b - beta * K[i][t]
    return adv


def _loop_reinforce_pp(scores, mask, kl, beta, gamma, eps=1e-8):
    B, T = scores.shape
    L = [int(mask[i].sum()) for i in range(B)]
    G = [_rtg([scores[i, t].item() - beta * kl[i, t].item() for t in range(L[i])], gamma) for i in range(B)]
    flat = [v for row in G for v in row]
    mu = sum(flat) / len(flat)
    var = sum((v - mu) ** 2 for v in flat) / (len(flat) - 1) if len(flat) > 1 else 0.0
    adv = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        for t in range(L[i]):
            adv[i, t] = (G[i][t] - mu) / math.sqrt(var + eps)
    return adv


CASES = [(0, 1, 2, 5), (1, 2, 2, 7), (2, 3, 4, 9), (3, 5, 3, 16), (4, 4, 8, 33)]  # seed, groups, n, T
ATOL = dict(atol=1e-9, rtol=0)

# --------------------------------------------------------------------------------------
# Vectorised == loop
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_grpo_matches_loop(case, beta):
    scores, mask, gids, rmask, kl, _ = _batch(*case)
    adv, stats = grpo_advantages(scores, mask, gids, reward_mask=rmask, kl=kl, kl_coef=beta)
    torch.testing.assert_close(adv, _loop_grpo(scores, mask, gids, rmask, kl, beta, True), **ATOL)
    assert math.isfinite(stats["adv/mean"]) and 0 <= stats["adv/flat_group_frac"] <= 1


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_dr_grpo_matches_loop(case, beta):
    scores, mask, gids, rmask, kl, _ = _batch(*case)
    adv, _ = dr_grpo_advantages(scores, mask, gids, reward_mask=rmask, kl=kl, kl_coef=beta)
    torch.testing.assert_close(adv, _loop_grpo(scores, mask, gids, rmask, kl, beta, False), **ATOL)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("beta,gamma", [(0.0, 1.0), (0.3, 1.0), (0.2, 0.9)])
def test_rloo_matches_loop(case, beta, gamma):
    scores, mask, gids, _, kl, _ = _batch(*case)
    adv, _ = rloo_advantages(scores, mask, gids, kl=kl, kl_coef=beta, gamma=gamma)
    torch.testing.assert_close(adv, _loop_rloo(scores, mask, gids, kl, beta, gamma), **ATOL)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("beta,gamma", [(0.0, 1.0), (0.3, 1.0), (0.2, 0.9)])
def test_reinforce_pp_matches_loop(case, beta, gamma):
    scores, mask, _, _, kl, _ = _batch(*case)
    if mask.sum() < 2:
        mask[:, :2] = 1  # the loop's Bessel variance needs two real tokens
    adv, _ = reinforce_pp_advantages(scores, mask, kl=kl, kl_coef=beta, gamma=gamma)
    torch.testing.assert_close(adv, _loop_reinforce_pp(scores, mask, kl, beta, gamma), **ATOL)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_returns_to_go_matches_loop(gamma):
    scores, mask, _, _, _, lengths = _batch(9, 3, 3, 11)
    out = returns_to_go(scores, mask, gamma)
    for i, L in enumerate(lengths):
        ref = _rtg(scores[i, :L].tolist(), gamma)
        torch.testing.assert_close(out[i, :L], torch.tensor(ref, dtype=torch.float64), **ATOL)
        assert (out[i, L:] == 0).all()


# --------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------


def _two_samples():
    # sample 0: L = 4, +1 at t = 1, −1 at t = 3; sample 1: L = 3, +1 at t = 2. One group.
    scores = torch.tensor([[0.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    return scores, mask, torch.tensor([5, 5])


def test_grpo_hand_case():
    # Pooled {1, −1, 1}: μ = 1/3, σ² = (4/9 + 16/9 + 4/9)/2 = 4/3, σ = 2/√3,
    # so +1 → 1/√3 and −1 → −2/√3; each token sums its own and later segments.
    scores, mask, gids = _two_samples()
    adv, _ = grpo_advantages(scores, mask, gids, eps=0.0)
    r3 = math.sqrt(3.0)
    want = torch.tensor([[-1 / r3, -1 / r3, -2 / r3, -2 / r3], [1 / r3, 1 / r3, 1 / r3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, want, **ATOL)


def test_dr_grpo_hand_case_and_kl_out_of_the_normalisation():
    # Centred only: +1 → 2/3, −1 → −4/3. KL β = 0.5 on token 0 of sample 1 only: it is
    # subtracted from that token's advantage and does not move μ.
    scores, mask, gids = _two_samples()
    kl = torch.zeros(2, 4, dtype=torch.float64)
    kl[1, 0] = 1.0
    adv, _ = dr_grpo_advantages(scores, mask, gids, kl=kl, kl_coef=0.5)
    want = torch.tensor([[-2 / 3, -2 / 3, -4 / 3, -4 / 3], [2 / 3 - 0.5, 2 / 3, 2 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, want, **ATOL)


def test_rloo_hand_case():
    # Returns-to-go G_0 = [3, 2, 2], G_1 = [3, 3, ·], G_2 = [−1, ·, ·] (· = ended: 0).
    # b_0 = [(3 − 1)/2, (3 + 0)/2, 0] = [1, 1.5, 0];  b_1 = [(3 − 1)/2, (2 + 0)/2] = [1, 1];
    # b_2 = [(3 + 3)/2] = [3].
    scores = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    adv, stats = rloo_advantages(scores, mask, torch.tensor([0, 0, 0]))
    want = torch.tensor([[2.0, 0.5, 2.0], [2.0, 2.0, 0.0], [-4.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, want, **ATOL)
    assert stats["adv/baseline_mean"] == pytest.approx(7.5 / 6)


def test_reinforce_pp_hand_case():
    # r = s − β·kl = [0.5, 0, 1]; G = [1.5, 1, 1]; μ = 7/6, σ² = 1/12 → A = [2/√3, −1/√3, −1/√3].
    scores = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    kl = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)
    adv, stats = reinforce_pp_advantages(scores, torch.ones(1, 3), kl=kl, kl_coef=1.0, eps=0.0)
    r3 = math.sqrt(3.0)
    torch.testing.assert_close(adv, torch.tensor([[2 / r3, -1 / r3, -1 / r3]], dtype=torch.float64), **ATOL)
    assert stats["adv/return_mean"] == pytest.approx(7 / 6)


def test_returns_to_go_hand_case():
    x = torch.tensor([[1.0, 0.0, 1.0, 9.0]], dtype=torch.float64)
    out = returns_to_go(x, torch.tensor([[1, 1, 1, 0]]), gamma=0.5)
    torch.testing.assert_close(out, torch.tensor([[1.25, 0.5, 1.0, 0.0]], dtype=torch.float64), **ATOL)


# --------------------------------------------------------------------------------------
# Padding invariance, no mutation
# --------------------------------------------------------------------------------------


def _run_all(scores, mask, gids, rmask, kl, values):
    out = {}
    for name in ADVANTAGE_ESTIMATORS:
        adv, ret, _ = compute_advantages(name, scores=scores, mask=mask, group_ids=gids, reward_mask=rmask,
                                         kl=kl, kl_coef=0.3, values=values, gamma=0.95, lam=0.9)
        out[name] = (adv, ret)
    return out


def test_junk_at_padding_changes_nothing():
    scores, mask, gids, rmask, kl, _ = _batch(11, 3, 4, 12)
    values = torch.randn(scores.shape, dtype=torch.float64)
    clean = _run_all(scores, mask, gids, rmask, kl, values)
    pad = mask == 0
    assert pad.any()
    s2, k2, r2, v2 = scores.clone(), kl.clone(), rmask.clone(), values.clone()
    s2[pad], k2[pad], v2[pad] = float("nan"), float("inf"), 1e30
    r2[pad] = True
    dirty = _run_all(s2, mask, gids, r2, k2, v2)
    for name in ADVANTAGE_ESTIMATORS:
        (a, r), (a2, r2_) = clean[name], dirty[name]
        assert torch.equal(a, a2), name
        assert (a[pad] == 0).all() and torch.isfinite(a).all(), name
        if r is not None:
            assert torch.equal(r, r2_)


def test_inputs_are_not_mutated():
    scores, mask, gids, rmask, kl, _ = _batch(12, 2, 3, 8)
    before = [t.clone() for t in (scores, mask, gids, rmask, kl)]
    _run_all(scores, mask, gids, rmask, kl, torch.zeros_like(scores))
    for a, b in zip(before, (scores, mask, gids, rmask, kl)):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# Group edge cases
# --------------------------------------------------------------------------------------


def test_n2_rloo_with_sequence_rewards_is_the_difference_of_the_two_samples():
    # Equal lengths: A_0 = R_0 − R_1 = −A_1 on every token (plain RLOO).
    scores = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    adv, _ = rloo_advantages(scores, torch.ones(2, 3), torch.tensor([1, 1]))
    torch.testing.assert_close(adv, torch.tensor([[1.5] * 3, [-1.5] * 3], dtype=torch.float64), **ATOL)
    # Ragged: RLOO while the other sample runs; past its end it adds 0 to the baseline.
    scores = torch.tensor([[0.0, 0.0, 2.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    adv, _ = rloo_advantages(scores, torch.tensor([[1, 1, 1], [1, 0, 0]]), torch.tensor([1, 1]))
    torch.testing.assert_close(adv, torch.tensor([[1.5, 2.0, 2.0], [-1.5, 0.0, 0.0]], dtype=torch.float64), **ATOL)


def test_n2_grpo_outcome_rewards_are_plus_minus_one_over_sqrt2():
    # Two sequence rewards a ≠ b: (a − μ)/σ = ±1/√2 (Bessel σ = |a − b|/√2).
    scores = torch.tensor([[0.0, 3.0], [1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, _ = grpo_advantages(scores, mask, torch.tensor([0, 0]), eps=0.0)
    h = 1 / math.sqrt(2.0)
    torch.testing.assert_close(adv, torch.tensor([[h, h], [-h, 0.0]], dtype=torch.float64), **ATOL)


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_identical_rewards_in_a_group_give_zero_advantages(name):
    # Every sample of group 0 gets 0.1 at each segment end (a value with rounding error
    # in its mean); group 1 differs, so the batch as a whole is not flat.
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    scores = torch.zeros(4, 4, dtype=torch.float64)
    scores[0, 1] = scores[0, 3] = scores[1, 1] = scores[1, 3] = 0.1
    scores[2, 1], scores[3, 2] = 1.0, -1.0
    gids = torch.tensor([0, 0, 1, 1])
    adv, _, stats = compute_advantages(name, scores=scores, mask=mask, group_ids=gids)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv[:2], torch.zeros(2, 4, dtype=torch.float64), atol=1e-9, rtol=0)
    assert adv[2:].abs().sum() > 0
    if name != "rloo":
        assert stats["adv/flat_group_frac"] == 0.5


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_all_zero_group_gives_zero_not_nan(name):
    mask = torch.ones(2, 3)
    adv, _, _ = compute_advantages(name, scores=torch.zeros(2, 3), mask=mask, group_ids=torch.tensor([4, 4]))
    assert torch.equal(adv, torch.zeros(2, 3))


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_group_of_one_is_rejected(name):
    with pytest.raises(ValueError, match=r"ppo\.advantage_estimator.*rollout\.sampling\.n_samples_per_prompt >= 2"):
        check_estimator_settings(name, 1)
    scores, mask = torch.ones(3, 2), torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"group id\(s\) \[9\] have a single sample"):
        compute_advantages(name, scores=scores, mask=mask, group_ids=torch.tensor([2, 9, 2]))


def test_settings_check_accepts_what_can_run():
    for name in ADVANTAGE_ESTIMATORS:
        check_estimator_settings(name, 2)
    check_estimator_settings("gae", 1)
    check_estimator_settings("reinforce_pp", 1)
    with pytest.raises(ValueError, match=r"ppo\.advantage_estimator = 'ppo' is not known"):
        check_estimator_settings("ppo", 4)


@pytest.mark.parametrize("name", CRITIC_FREE_ESTIMATORS)
def test_non_contiguous_groups_permute_with_the_batch(name):
    # Same samples, batch order shuffled (groups interleaved): outputs shuffle with it.
    scores, mask, gids, rmask, kl, _ = _batch(21, 3, 3, 10)
    order = torch.argsort(gids, stable=True)  # contiguous groups
    perm = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(3))]
    a, _, _ = compute_advantages(name, scores=scores[order], mask=mask[order], group_ids=gids[order],
                                 reward_mask=rmask[order], kl=kl[order], kl_coef=0.2)
    b, _, _ = compute_advantages(name, scores=scores[perm], mask=mask[perm], group_ids=gids[perm],
                                 reward_mask=rmask[perm], kl=kl[perm], kl_coef=0.2)
    inv_order = torch.argsort(order)
    inv_perm = torch.argsort(perm)
    torch.testing.assert_close(a[inv_order], b[inv_perm], **ATOL)


def test_groups_are_independent():
    # Changing one group's rewards leaves the other group's GRPO / RLOO advantages alone.
    scores, mask, gids, rmask, _, _ = _batch(5, 2, 4, 9)
    other = gids != gids[0]
    s2 = scores.clone()
    s2[~other] = s2[~other] * 3.0 + rmask[~other].double()
    for fn in (grpo_advantages, dr_grpo_advantages):
        a, _ = fn(scores, mask, gids, reward_mask=rmask)
        b, _ = fn(s2, mask, gids, reward_mask=rmask)
        assert torch.equal(a[other], b[other])
    a, _ = rloo_advantages(scores, mask, gids)
    b, _ = rloo_advantages(s2, mask, gids)
    torch.testing.assert_close(a[other], b[other], **ATOL)


# --------------------------------------------------------------------------------------
# Dense vs summed rewards
# --------------------------------------------------------------------------------------


def _penalised_middle():
    # Each sample has three segments ending at t = 1, 3, 5. Sample 0's middle segment
    # (tokens 2-3) is penalised; sample 1 is good throughout. Same totals as
    # "summed": the same rewards all on the last token.
    dense = torch.tensor([[0, 1.0, 0, -1.0, 0, 1.0], [0, 1.0, 0, 1.0, 0, 1.0]], dtype=torch.float64)
    summed = torch.zeros_like(dense)
    summed[:, -1] = dense.sum(dim=1)
    return dense, summed, torch.ones(2, 6), torch.tensor([0, 0])


@pytest.mark.parametrize("name", CRITIC_FREE_ESTIMATORS)
def test_dense_rewards_blame_the_penalised_segment_not_the_tokens_after_it(name):
    dense, summed, mask, gids = _penalised_middle()
    a_dense, _, _ = compute_advantages(name, scores=dense, mask=mask, group_ids=gids)
    a_sum, _, _ = compute_advantages(name, scores=summed, mask=mask, group_ids=gids)
    # Summed: one number per sample, every token of it equal.
    assert torch.allclose(a_sum[0], a_sum[0, :1].expand(6))
    # Dense: the tokens that wrote the penalised segment (t = 2, 3) get a lower advantage
    # than the tokens after it (t = 4, 5), which are not blamed for it.
    assert a_dense[0, 2] < a_dense[0, 4] and a_dense[0, 3] < a_dense[0, 5]
    assert not torch.allclose(a_dense, a_sum)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_same_segments_in_another_order_differ_only_where_dense_rewards_say(name):
    # Segment rewards [+1, −1] vs [−1, +1]: equal sums, so outcome estimators give both
    # samples 0 everywhere. Dense: the first tokens (before both segments end) still tie,
    # but the second segment's tokens (t = 2, 3) are low where they wrote the −1 and
    # high where they come after it.
    scores = torch.tensor([[0, 1.0, 0, -1.0], [0, -1.0, 0, 1.0]], dtype=torch.float64)
    adv, _, _ = compute_advantages(name, scores=scores, mask=torch.ones(2, 4), group_ids=torch.tensor([0, 0]))
    torch.testing.assert_close(adv[:, :2], torch.zeros(2, 2, dtype=torch.float64), **ATOL)
    assert adv[0, 2] < 0 < adv[1, 2] and adv[0, 3] < 0 < adv[1, 3]


# --------------------------------------------------------------------------------------
# Reward positions
# --------------------------------------------------------------------------------------


def test_explicit_reward_mask_counts_zero_valued_rewards():
    # A placed reward of exactly 0 is a reward position only when reward_mask says so.
    scores = torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(2, 2)
    rmask = torch.tensor([[0, 1], [0, 1]])
    with_mask, _ = dr_grpo_advantages(scores, mask, torch.tensor([0, 0]), reward_mask=rmask)
    implicit, _ = dr_grpo_advantages(scores, mask, torch.tensor([0, 0]))
    torch.testing.assert_close(with_mask, torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64), **ATOL)
    torch.testing.assert_close(implicit, torch.zeros(2, 2, dtype=torch.float64), **ATOL)


def test_scores_outside_reward_mask_are_an_error():
    scores = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    msg = r"non-zero at 1 real token\(s\) outside reward_mask \(first: sample 0, token 0\)"
    with pytest.raises(ValueError, match=msg):
        grpo_advantages(scores, torch.ones(2, 2), torch.tensor([0, 0]), reward_mask=torch.tensor([[0, 1], [0, 1]]))


def test_token_level_rewards_with_reward_mask_equal_to_mask():
    # Paper B: a reward on every token; pooled over all tokens of the group.
    scores, mask, gids, _, _, _ = _batch(31, 2, 3, 7)
    dense = torch.randn(scores.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * mask
    adv, _ = grpo_advantages(dense, mask, gids, reward_mask=mask)
    torch.testing.assert_close(adv, _loop_grpo(dense, mask, gids, mask.bool(), torch.zeros_like(dense), 0.0, True),
                               **ATOL)


# --------------------------------------------------------------------------------------
# REINFORCE++ whitening, dispatcher
# --------------------------------------------------------------------------------------


def test_reinforce_pp_is_whitened_over_the_batch():
    scores, mask, _, _, kl, _ = _batch(41, 4, 4, 20)
    adv, _ = reinforce_pp_advantages(scores, mask, kl=kl, kl_coef=0.3)
    m = mask.bool()
    assert adv[m].mean().abs() < 1e-9
    assert adv[m].std().item() == pytest.approx(1.0, abs=1e-6)


def test_dispatcher_gae_branch_is_compute_gae_and_others_have_no_returns():
    scores, mask, gids, rmask, kl, _ = _batch(51, 2, 3, 9)
    values = torch.randn(scores.shape, dtype=torch.float64)
    adv, ret, stats = compute_advantages("gae", scores=scores, mask=mask, kl=kl, kl_coef=0.3, values=values,
                                         gamma=1.0, lam=0.95)
    ref_adv, ref_ret = compute_gae(scores - 0.3 * kl, values, mask, 1.0, 0.95)
    torch.testing.assert_close(adv, ref_adv, **ATOL)
    torch.testing.assert_close(ret, ref_ret, **ATOL)
    assert needs_critic("gae")
    for name in CRITIC_FREE_ESTIMATORS:
        adv, ret, stats = compute_advantages(name, scores=scores, mask=mask, group_ids=gids, reward_mask=rmask)
        assert ret is None and adv.shape == scores.shape and "adv/mean" in stats
        assert not needs_critic(name)


def test_dispatcher_errors_are_actionable():
    s, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="needs the critic's values"):
        compute_advantages("gae", scores=s, mask=m)
    with pytest.raises(ValueError, match="group_ids .* is required"):
        compute_advantages("grpo", scores=s, mask=m)
    with pytest.raises(ValueError, match="is not known"):
        compute_advantages("grpo_typo", scores=s, mask=m)
    with pytest.raises(ValueError, match="right-padded"):
        compute_advantages("rloo", scores=s, mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), group_ids=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="integer tensor"):
        compute_advantages("rloo", scores=s, mask=m, group_ids=torch.tensor([0.0, 0.0]))


def test_estimator_tuples_are_consistent():
    assert set(GROUP_ESTIMATORS) <= set(CRITIC_FREE_ESTIMATORS)
    assert set(ADVANTAGE_ESTIMATORS) == {"gae", *CRITIC_FREE_ESTIMATORS}
    assert "reinforce_pp" not in GROUP_ESTIMATORS


def test_empty_responses_and_zero_length_batch():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    scores = torch.tensor([[0.0, 1.0, 0.0], [0.0] * 3, [2.0, 0.0, 0.0], [0.0] * 3])
    for name in CRITIC_FREE_ESTIMATORS:
        adv, _, _ = compute_advantages(name, scores=scores, mask=mask, group_ids=torch.tensor([0, 0, 1, 1]))
        assert torch.isfinite(adv).all() and (adv[mask == 0] == 0).all()
        adv, _, _ = compute_advantages(name, scores=torch.zeros(2, 0), mask=torch.zeros(2, 0),
                                       group_ids=torch.tensor([0, 0]))
        assert adv.shape == (2, 0)


# --------------------------------------------------------------------------------------
# k3 KL loss
# --------------------------------------------------------------------------------------


def test_kl_loss_k3_value_gradient_and_padding():
    g = torch.Generator().manual_seed(0)
    lp = (-torch.rand(3, 5, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    ref = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    loss, stats = kl_loss(lp, ref, mask)
    m = mask.bool()
    d = (ref - lp).detach()
    per_token = torch.where(m, torch.exp(d) - d - 1.0, torch.zeros(()))  # π_ref/π − log(π_ref/π) − 1
    torch.testing.assert_close(loss.detach(), per_token.sum() / m.sum(), **ATOL)
    assert stats["kl_loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    want = torch.where(m, 1.0 - torch.exp(d), torch.zeros(())) / m.sum()
    torch.testing.assert_close(lp.grad, want, **ATOL)
    # Junk at padding: same loss, finite zero gradient there.
    lp2 = lp.detach().clone()
    lp2[~m] = float("nan")
    lp2.requires_grad_(True)
    ref2 = ref.clone()
    ref2[~m] = float("-inf")
    loss2, _ = kl_loss(lp2, ref2, mask)
    loss2.backward()
    assert torch.equal(loss2.detach(), loss.detach())
    assert (lp2.grad[~m] == 0).all() and torch.isfinite(lp2.grad).all()


def test_kl_loss_is_zero_at_the_reference_and_uses_the_aggregation():
    lp = -torch.rand(2, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    loss, _ = kl_loss(lp, lp.clone(), mask)
    assert float(loss) == 0.0
    ref = lp - 0.5
    loss_seq, _ = kl_loss(lp, ref, mask, aggregation="seq_mean")
    per_token = torch.exp(torch.tensor(-0.5, dtype=torch.float64)) + 0.5 - 1.0
    assert float(loss_seq) == pytest.approx(float(per_token))
    kl = torch.full((2, 4), float(per_token), dtype=torch.float64)
    assert float(loss_seq) == pytest.approx(float(aggregate(kl, mask, "seq_mean")))


# --------------------------------------------------------------------------------------
# Import hygiene (DESIGN style 8): algo/__init__ does not import estimators yet
# --------------------------------------------------------------------------------------


def test_estimators_import_no_heavy_frameworks():
    code = (
        "import sys\n"
        "import fgrlhf_ray.algo.estimators, fgrlhf_ray.algo.kl\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm', 'deepspeed'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"fgrlhf_ray.algo.estimators pulled in: {out.stdout.strip()}"
