"""Explicit segment features (pure part) and the feature head's warm start."""

from __future__ import annotations

import pytest
import torch

from fgrlhf_ray.rewards.segment_features import (
    FEATURE_NAMES,
    feature_norm,
    fit_feature_head,
    segment_feature_rows,
    standardize,
)


def _unit(*v: float) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def test_feature_rows_on_hand_made_embeddings():
    q = _unit(1, 0, 0)
    segs = torch.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 1, 0)])  # the third repeats the second
    resp = _unit(1, 1, 0)
    texts = ["Who won the battle", "It rained a lot, says Bob", "It rained"]
    rows = segment_feature_rows("who won the battle?", texts, q, segs, resp)
    col = {n: [r[i] for r in rows] for i, n in enumerate(FEATURE_NAMES)}
    assert col["index"] == [0.0, 1.0, 2.0]
    assert col["relative_position"] == [0.0, 0.5, 1.0]
    assert col["n_segments"] == [3.0] * 3
    assert col["question_similarity"] == pytest.approx([1.0, 0.0, 0.0])
    assert col["max_similarity_previous"] == pytest.approx([0.0, 0.0, 1.0])
    assert col["max_similarity_next"] == pytest.approx([0.0, 1.0, 0.0])
    assert col["response_similarity"] == pytest.approx([2 ** -0.5] * 3, abs=1e-6)
    assert col["question_word_overlap"] == [1.0, 0.0, 0.0]  # case-folded words
    assert col["question_word_coverage"] == [1.0, 0.0, 0.0]
    assert col["n_words"] == [4.0, 6.0, 2.0]
    single = segment_feature_rows("q", ["Only one"], q, segs[:1], resp)
    assert single[0][1] == 0.0 and single[0][4] == 0.0 and single[0][5] == 0.0
    assert segment_feature_rows("q", [], q, segs[:0], resp) == []


def test_norm_and_standardize():
    rows = [[1.0, 5.0], [3.0, 5.0]]
    norm = feature_norm(rows)
    assert norm["mean"] == [2.0, 5.0] and norm["std"] == [1.0, 1.0]  # constant column: std 1
    assert standardize(rows, norm) == [[-1.0, 0.0], [1.0, 0.0]]


def test_fit_feature_head_finds_the_informative_feature():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    y = (x[:, 1] + 0.3 * torch.randn(400, generator=g) > 0).long()
    w, b = fit_feature_head(x.tolist(), y.tolist(), l2=1e-3)
    assert w[1] > 2.0 and abs(w[0]) < 0.5 and abs(w[2]) < 0.5 and abs(b) < 0.5
    acc = (((x @ w + b) > 0).long() == y).float().mean().item()
    assert acc > 0.85
    # a heavier error weight moves the boundary towards predicting errors
    _, b_heavy = fit_feature_head(x.tolist(), y.tolist(), l2=1e-3, error_weight=4.0)
    assert b_heavy > b + 0.5
