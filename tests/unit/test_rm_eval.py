"""Evaluation metrics and baselines, with hand-computed values and fake models."""

from __future__ import annotations

import pytest

from fgrlhf_ray.data.rm_data import PreferencePair
from fgrlhf_ray.rewards.evaluation import (
    best_threshold,
    binary_metrics,
    evaluate_preference_rm,
    evaluate_segment_rm,
)


def test_binary_metrics_hand_computed():
    gold = [1, 1, 1, 0, 0, 0, 0, 0]
    pred = [1, 1, 0, 1, 0, 0, 0, 0]
    m = binary_metrics(gold, pred)
    # error: tp 2, fp 1, fn 1 → P = R = F1 = 2/3 ; no-error: tp 4, fp 1, fn 1 → 0.8
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["error_precision"] == pytest.approx(2 / 3) and m["error_recall"] == pytest.approx(2 / 3)
    assert m["error_f1"] == pytest.approx(2 / 3)
    assert m["no_error_f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    allerr = binary_metrics(gold, [1] * 8)
    assert allerr["error_f1"] == pytest.approx(2 * (3 / 8) / (3 / 8 + 1))  # P = 3/8, R = 1
    assert allerr["no_error_f1"] == 0.0


def test_best_threshold_picks_the_separating_cut():
    gold = [1, 1, 0, 0]
    p = [0.9, 0.35, 0.3, 0.1]
    thr, f1 = best_threshold(gold, p, "error_f1")
    assert 0.3 < thr <= 0.35 and f1 == 1.0


class FakeSegmentRM:
    class metadata:  # noqa: N801 - mimics RMMetadata
        threshold = 0.5

    def predict_proba(self, prompts, responses, spans):
        return [[0.9 if "bad" in r[a:b] else 0.2 for a, b in sp] for r, sp in zip(responses, spans)], None


def test_evaluate_segment_rm_with_baselines():
    from fgrlhf_ray.data.rm_data import SegmentExample

    r = "good one. bad one. good two."
    ex = SegmentExample("p", r, [(0, 9), (10, 18), (19, 28)], [0, 1, None])
    res = evaluate_segment_rm(FakeSegmentRM(), [ex])
    assert res["n"] == 2 and res["accuracy"] == 1.0 and res["macro_f1"] == 1.0
    assert res["error_rate"] == 0.5 and res["majority_accuracy"] == 0.5
    assert res["baselines"]["all_error"]["accuracy"] == 0.5
    assert res["baselines"]["all_no_error"]["error_f1"] == 0.0


class LengthRM:
    def score_texts(self, prompts, responses):
        return [float(len(r)) for r in responses]


def test_preference_eval_randomises_order_and_reports_baselines():
    pairs = [PreferencePair("p", "a much longer response " + str(i), "short") for i in range(200)]
    res = evaluate_preference_rm(LengthRM(), pairs, seed=0)
    assert res["accuracy"] == 1.0
    assert res["baselines"]["prefer_longer"] == 1.0 and res["baselines"]["prefer_shorter"] == 0.0
    assert 0.4 < res["baselines"]["prefer_first"] < 0.6  # the order really is randomised
    again = evaluate_preference_rm(LengthRM(), pairs, seed=0)
    assert again["baselines"]["prefer_first"] == res["baselines"]["prefer_first"]

    class Const:
        def score_texts(self, prompts, responses):
            return [0.0] * len(responses)

    assert evaluate_preference_rm(Const(), pairs)["accuracy"] == 0.5  # ties count half
