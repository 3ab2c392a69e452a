"""Weighted totals and per-token rewards of `/v1/score` against plain-loop references."""

from __future__ import annotations

import pytest

from fgrlhf_ray.serve.scoring import build_results, token_rewards, weighted_totals
from fgrlhf_ray.types import Segment, SegmentRewards

RESPONSES = ["First part, second part. Last one!", "Short."]
# Policy tokens: whitespace-split words (with a trailing empty EOS span) — any offsets work.
OFFSETS = [[(0, 5), (5, 11), (11, 18), (18, 24), (24, 29), (29, 34), (34, 34)], [(0, 6), (6, 6)]]

VERDICTS = {
    "relevance": [
        SegmentRewards([Segment(0, 11, 1.0, "no_error", 0.9), Segment(12, 24, -1.0, "error", 0.7),
                        Segment(25, 34, 1.0, "no_error", 0.6)], "sub_sentence", "relevance"),
        SegmentRewards([Segment(0, 6, -1.0, "error", 0.8)], "sub_sentence", "relevance"),
    ],
    "completeness": [
        SegmentRewards([Segment(0, 34, 2.5)], "sequence", "completeness"),
        SegmentRewards([Segment(0, 6, -0.5)], "sequence", "completeness"),
    ],
}
WEIGHTS = {"relevance": 0.3, "completeness": 0.3}
NORMS = {"relevance": (0.0, 1.0), "completeness": (0.25, 2.0)}


def reference_total(name: str, i: int) -> float:
    mean, std = NORMS[name]
    return sum(WEIGHTS[name] * (s.value - mean) / std for s in VERDICTS[name][i].segments)


def reference_tokens(i: int) -> list[float]:
    """Plain loop: a segment's value on the last token whose span starts at or before its last
    character (skipping empty spans); a sequence value on the last token."""
    offsets = OFFSETS[i]
    out = [0.0] * len(offsets)
    for name, verdicts in VERDICTS.items():
        mean, std = NORMS[name]
        for s in verdicts[i].segments:
            if verdicts[i].density == "sequence":
                t = len(offsets) - 1
            else:
                t = max(k for k, (a, b) in enumerate(offsets) if b > a and a <= s.char_end - 1)
            out[t] += WEIGHTS[name] * (s.value - mean) / std
    return out


def test_weighted_totals_match_formula():
    totals = weighted_totals(VERDICTS, RESPONSES, weights=WEIGHTS, normalizations=NORMS)
    for name in VERDICTS:
        for i in range(len(RESPONSES)):
            assert totals[name][i] == pytest.approx(reference_total(name, i), abs=1e-6)


def test_token_rewards_match_plain_loop_and_sum_to_total():
    per_token = token_rewards(VERDICTS, OFFSETS, weights=WEIGHTS, normalizations=NORMS)
    totals = weighted_totals(VERDICTS, RESPONSES, weights=WEIGHTS, normalizations=NORMS)
    for i in range(len(RESPONSES)):
        assert len(per_token[i]) == len(OFFSETS[i])
        assert per_token[i] == pytest.approx(reference_tokens(i), abs=1e-6)
        assert sum(per_token[i]) == pytest.approx(sum(totals[n][i] for n in VERDICTS), abs=1e-5)
    # The sequence reward sits on the last token (the empty EOS span), as in training.
    assert per_token[1][-1] == pytest.approx(0.3 * (-0.5 - 0.25) / 2.0, abs=1e-6)


def test_build_results_shapes_and_optional_fields():
    plain = build_results(VERDICTS, RESPONSES, weights=WEIGHTS, normalizations=NORMS)
    assert [r.index for r in plain] == [0, 1]
    first = plain[0].scores["relevance"]
    assert [(s.char_start, s.char_end, s.label, s.value) for s in first.segments] == [
        (0, 11, "no_error", 1.0), (12, 24, "error", -1.0), (25, 34, "no_error", 1.0)]
    assert first.raw_total == 1.0 and first.weighted_total is None
    assert plain[0].weighted_total is None and plain[0].token_rewards is None

    full = build_results(VERDICTS, RESPONSES, weights=WEIGHTS, normalizations=NORMS, return_total=True,
                         token_offsets=OFFSETS)
    for i, r in enumerate(full):
        assert r.weighted_total == pytest.approx(sum(reference_total(n, i) for n in VERDICTS), abs=1e-6)
        assert r.scores["completeness"].weighted_total == pytest.approx(reference_total("completeness", i), abs=1e-6)
        assert r.token_offsets == [tuple(o) for o in OFFSETS[i]]
        assert r.token_rewards == pytest.approx(reference_tokens(i), abs=1e-6)
