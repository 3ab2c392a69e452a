"""Reward-model losses against hand-computed values and plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from fgrlhf_ray.rewards.losses import (
    changed_token_loss,
    IGNORE_INDEX,
    bradley_terry_loss,
    edit_masks,
    segment_classification_loss,
    token_edit_loss,
)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_hand_computed():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 1.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    # margins 1, 0, -2 → −log σ: 0.31326, 0.69315, 2.12693
    expected = (0.3132617 + 0.6931472 + 2.1269280) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["accuracy"] == pytest.approx(1 / 3)
    assert stats["margin"] == pytest.approx(-1 / 3)


def test_segment_loss_hand_computed_and_ignores_unlabelled_positions():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    loss, stats = segment_classification_loss(logits, labels)
    ce1 = -math.log(math.exp(0.0) / (math.exp(2.0) + math.exp(0.0)))  # label 1 at position 1
    ce2 = -math.log(math.exp(5.0) / (math.exp(5.0) + math.exp(-5.0)))  # label 0 at position 2
    assert loss.item() == pytest.approx((ce1 + ce2) / 2, abs=1e-6)
    assert stats == {"accuracy": 0.5, "n_labelled": 2}
    # Junk logits at the ignored position change nothing.
    logits2 = logits.clone()
    logits2[0, 0] = torch.tensor([100.0, -100.0])
    assert segment_classification_loss(logits2, labels)[0].item() == pytest.approx(loss.item())


def test_segment_loss_class_weights_weighted_mean():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[1, 0]])
    w = torch.tensor([1.0, 3.0])
    loss, _ = segment_classification_loss(logits, labels, class_weights=w)
    ce_a = -(0.0 - math.log(math.exp(2.0) + 1.0))  # label 1
    ce_b = -(0.0 - math.log(1.0 + math.exp(1.0)))  # label 0
    assert loss.item() == pytest.approx((3 * ce_a + 1 * ce_b) / 4, abs=1e-6)


def test_segment_loss_with_nothing_labelled_is_zero_and_differentiable():
    logits = torch.randn(2, 4, 2, requires_grad=True)
    loss, stats = segment_classification_loss(logits, torch.full((2, 4), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and stats["n_labelled"] == 0
    assert torch.all(logits.grad == 0)


def _token_edit_loss_loop(ro, mo, re_, me):
    total = 0.0
    for b in range(len(ro)):
        m = sum(r * k for r, k in zip(re_[b], me[b])) - sum(r * k for r, k in zip(ro[b], mo[b]))
        total += -_log_sigmoid(m)
    return total / len(ro)


def test_token_edit_loss_hand_computed_and_against_loop():
    ro = torch.tensor([[0.5, -1.0, 2.0]])
    mo = torch.tensor([[0.0, 1.0, 1.0]])
    re_ = torch.tensor([[0.5, 3.0, 0.0, 0.0]])
    me = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    loss, stats = token_edit_loss(ro, mo, re_, me)
    # margin = 3.0 − (−1.0 + 2.0) = 2.0
    assert loss.item() == pytest.approx(-_log_sigmoid(2.0), abs=1e-6)
    assert stats["margin"] == pytest.approx(2.0) and stats["accuracy"] == 1.0

    g = torch.Generator().manual_seed(0)
    ro, re_ = torch.randn(4, 7, generator=g), torch.randn(4, 5, generator=g)
    mo, me = (torch.rand(4, 7, generator=g) > 0.5).float(), (torch.rand(4, 5, generator=g) > 0.5).float()
    loss, _ = token_edit_loss(ro, mo, re_, me)
    assert loss.item() == pytest.approx(_token_edit_loss_loop(ro.tolist(), mo.tolist(), re_.tolist(), me.tolist()), abs=1e-5)
    # Junk at masked-out positions (padding, unchanged tokens) changes nothing.
    ro2 = torch.where(mo.bool(), ro, torch.full_like(ro, 1e3))
    re2 = torch.where(me.bool(), re_, torch.full_like(re_, -1e3))
    assert token_edit_loss(ro2, mo, re2, me)[0].item() == pytest.approx(loss.item(), abs=1e-5)


def test_edit_masks_from_opcodes():
    original = ["the", "battle", "was", "in", "1776", "and", "it", "was", "cold"]
    edited = ["the", "battle", "was", "in", "1777", "."]
    om, em = edit_masks(original, edited)
    # replace 1776 → 1777 ; replace "and it was cold" → "."
    assert om == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert em == [0, 0, 0, 0, 1, 1]
    om, em = edit_masks(["a", "b", "c"], ["a", "x", "b", "c"])  # pure insertion
    assert om == [0, 0, 0] and em == [0, 1, 0, 0]
    om, em = edit_masks(["a", "b", "c"], [])  # everything deleted
    assert om == [1, 1, 1] and em == []
    # autojunk=False: a long sequence dominated by one token still aligns exactly.
    long_o = ["the"] * 300 + ["x"]
    long_e = ["the"] * 300 + ["y"]
    om, em = edit_masks(long_o, long_e)
    assert sum(om) == 1 and sum(em) == 1 and om[-1] == 1


def test_changed_token_loss_hand_computed():
    # changed tokens: a removed one (logit 1.0) and a written one (logit 2.0); the others
    # are unchanged or padding and do not count.
    r = torch.tensor([[1.0, 5.0, 0.0], [2.0, -7.0, 9.0]])
    added = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    changed = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    loss, stats = changed_token_loss(r, added, changed)
    assert loss.item() == pytest.approx((-_log_sigmoid(-1.0) - _log_sigmoid(2.0)) / 2, abs=1e-6)
    assert stats["accuracy"] == pytest.approx(0.5) and stats["added_fraction"] == pytest.approx(0.5)
    empty, _ = changed_token_loss(r, added, torch.zeros_like(changed))
    assert empty.item() == 0.0
