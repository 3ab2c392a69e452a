"""PPO policy / value losses and log-prob helpers against plain loops; padding invariance."""

from __future__ import annotations

import math

import pytest
import torch

from fgrlhf_ray.algo.losses import (
    aggregate,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
)


def _batch(seed: int, B: int, T: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g).tolist()
    lengths[0] = max(lengths[0], 1)  # at least one real token in the batch
    mask = torch.zeros(B, T)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    new = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3  # ratios on both sides of the clip
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    return new, old, adv, mask, lengths


def _loop_policy(new, old, adv, lengths, clip, dual_clip, aggregation):
    per_seq, all_tok = [], []
    for i, L in enumerate(lengths):
        seq = []
        for t in range(L):
            ratio = math.exp(new[i, t].item() - old[i, t].item())
            a = adv[i, t].item()
            loss = max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip))
            if dual_clip is not None and a < 0:
                loss = min(loss, -dual_clip * a)
            seq.append(loss)
        all_tok += seq
        if seq:
            per_seq.append(sum(seq) / len(seq))
    if aggregation == "token_mean":
        return sum(all_tok) / len(all_tok)
    return sum(per_seq) / len(per_seq)


SHAPES = [(1, 1), (3, 4), (6, 11), (2, 50)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
@pytest.mark.parametrize("clip,dual_clip", [(0.2, None), (0.1, 3.0), (0.3, 1.5)])
def test_policy_loss_matches_loop(shape, aggregation, clip, dual_clip):
    new, old, adv, mask, lengths = _batch(sum(shape), *shape)
    loss, stats = ppo_policy_loss(new, old, adv, mask, policy_clip=clip, dual_clip=dual_clip, aggregation=aggregation)
    want = _loop_policy(new, old, adv, lengths, clip, dual_clip, aggregation)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert stats["policy_loss"] == pytest.approx(want, abs=1e-6)


def test_policy_loss_stats_hand_example():
    # Token 0: ratio e^0.5 > 1.2 with A > 0 → clipped; token 1: ratio 1 → not clipped;
    # token 2: ratio e^-0.5 < 0.8 with A < 0 → clipped; token 3 is padding.
    new = torch.tensor([[0.5, 0.0, -0.5, 9.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = ppo_policy_loss(new, old, adv, mask, policy_clip=0.2)
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(2 / 3)
    r = torch.exp(new[0, :3])
    assert stats["approx_kl"] == pytest.approx(((r - 1) - new[0, :3]).mean().item(), abs=1e-6)
    assert stats["ratio_max"] == pytest.approx(math.exp(0.5), abs=1e-6)
    assert "entropy" not in stats


def test_policy_loss_at_ratio_one_is_minus_mean_advantage_and_gradient():
    new, old, adv, mask, _ = _batch(3, 4, 6)
    lp = old.clone().requires_grad_(True)
    loss, stats = ppo_policy_loss(lp, old, adv, mask)
    assert loss.item() == pytest.approx(-masked_mean(adv, mask).item(), abs=1e-9)
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    # d/dlogπ of −A·ρ at ρ = 1 is −A, averaged over masked tokens.
    torch.testing.assert_close(lp.grad, -adv * mask / mask.sum())


def test_dual_clip_bounds_negative_advantage_loss():
    new = torch.tensor([[3.0]])  # ratio e^3 ≈ 20
    loss, stats = ppo_policy_loss(new, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)
    assert stats["dual_clip_frac"] == 1.0
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_policy_loss(new, new, new, torch.ones(1, 1), dual_clip=0.5)


def test_policy_loss_entropy_stat():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    z = torch.zeros(2, 3)
    _, stats = ppo_policy_loss(z, z, z, mask, logits=logits)
    ent = torch.distributions.Categorical(logits=logits).entropy()
    assert stats["entropy"] == pytest.approx(((ent * mask).sum() / mask.sum()).item(), abs=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_policy_loss_junk_at_padding_changes_nothing(aggregation):
    new, old, adv, mask, _ = _batch(8, 5, 9)
    pad = mask == 0
    lp1 = new.clone().requires_grad_(True)
    loss1, stats1 = ppo_policy_loss(lp1, old, adv, mask, dual_clip=3.0, aggregation=aggregation)
    loss1.backward()
    new2, old2, adv2 = new.clone(), old.clone(), adv.clone()
    new2[pad], old2[pad], adv2[pad] = 1e4, float("nan"), float("-inf")
    lp2 = new2.requires_grad_(True)
    loss2, stats2 = ppo_policy_loss(lp2, old2, adv2, mask, dual_clip=3.0, aggregation=aggregation)
    loss2.backward()
    assert loss1.item() == loss2.item() and stats1 == stats2
    assert torch.equal(lp1.grad, lp2.grad) and (lp2.grad[pad] == 0).all()


def _loop_value(values, old, ret, lengths, clip, aggregation):
    per_seq, all_tok = [], []
    for i, L in enumerate(lengths):
        seq = []
        for t in range(L):
            v, o, r = values[i, t].item(), old[i, t].item(), ret[i, t].item()
            unclipped = (v - r) ** 2
            if clip is None:
                seq.append(0.5 * unclipped)
            else:
                vc = o + min(max(v - o, -clip), clip)
                seq.append(0.5 * max(unclipped, (vc - r) ** 2))
        all_tok += seq
        if seq:
            per_seq.append(sum(seq) / len(seq))
    return sum(all_tok) / len(all_tok) if aggregation == "token_mean" else sum(per_seq) / len(per_seq)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
@pytest.mark.parametrize("clip", [0.2, 0.05, None])
def test_value_loss_matches_loop(shape, aggregation, clip):
    values, old, ret, mask, lengths = _batch(3 * sum(shape), *shape)
    loss, stats = ppo_value_loss(values, old, ret, mask, value_clip=clip, aggregation=aggregation)
    want = _loop_value(values, old, ret, lengths, clip, aggregation)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert stats["value_loss"] == pytest.approx(want, abs=1e-6)


def test_value_loss_hand_example_and_junk_invariance():
    # V_old = 0, V = 1, R = 0.5, ε = 0.2: unclipped (1−0.5)² = 0.25, clipped (0.2−0.5)² = 0.09
    # → ½·max = 0.125 and the clip is not active; R = 2: unclipped 1, clipped 3.24 → 1.62, active.
    values = torch.tensor([[1.0, 1.0, 7.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    ret = torch.tensor([[0.5, 2.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = ppo_value_loss(values, old, ret, mask, value_clip=0.2)
    assert loss.item() == pytest.approx((0.125 + 1.62) / 2, abs=1e-6)
    assert stats["value_clip_frac"] == pytest.approx(0.5)
    loss.backward()
    assert torch.isfinite(values.grad).all() and values.grad[0, 2] == 0
    # token 1: clipped branch active → no gradient through V (V_clip is constant in V there)
    assert values.grad[0, 1] == 0 and values.grad[0, 0] == pytest.approx(0.5 * 2 * 0.5 / 2)


def test_value_loss_explained_variance_perfect_fit():
    ret = torch.tensor([[1.0, 2.0, 3.0]])
    _, stats = ppo_value_loss(ret.clone(), ret.clone(), ret, torch.ones(1, 3))
    assert stats["value_explained_var"] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 4, 6)])
def test_logprobs_from_logits_matches_log_softmax(shape):
    g = torch.Generator().manual_seed(len(shape))
    logits = torch.randn(*shape, 13, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 13, shape, generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logprobs_from_logits_half_precision_is_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 50, generator=g) * 5).to(dtype)
    labels = torch.randint(0, 50, (3, 5), generator=g)
    got = logprobs_from_logits(logits, labels)
    want = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_logprobs_from_logits_gradient_matches_log_softmax():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 4, 9, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    labels = torch.randint(0, 9, (2, 4), generator=g)
    logprobs_from_logits(a, labels).sum().backward()
    torch.log_softmax(b, -1).gather(-1, labels.unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_entropy_from_logits():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, 20, generator=g) * 3
    torch.testing.assert_close(
        entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy(), atol=1e-5, rtol=0
    )


def test_masked_mean_and_aggregate():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, float("nan"), float("inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    assert aggregate(x, mask, "seq_mean").item() == pytest.approx(2.75)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
    # Rows without tokens do not count in seq_mean.
    assert aggregate(x, torch.tensor([[1, 1, 0], [0, 0, 0]]), "seq_mean").item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'"):
        aggregate(x, mask, "sum")
