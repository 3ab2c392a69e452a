"""Reward-signal diagnostics on crafted batches: a constant RM, a length-only RM, a healthy RM.

Every statistic against a plain-loop / stdlib reference, every warning (fires after
`patience` steps, once, names the RM and the fix; stays silent on the healthy RM), the
audit's agreement metrics against hand-computed values, the `Auditor` with an in-process
judge, the controller wiring (metrics, warnings.jsonl, audit.jsonl) and the config checks.
"""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
import torch

from fgrlhf_ray.control.audit import Auditor, sample_indices
from fgrlhf_ray.config import AuditConfig, DiagnosticsConfig, RunConfig, load_config
from fgrlhf_ray.control.controller import PPOController, ScorerSpec
from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.infra.metrics import MetricsLogger, read_metrics
from fgrlhf_ray.rewards.diagnostics import (
    RewardMonitor,
    agreement,
    batch_diagnostics,
    is_error,
    matched_labels,
    pearson,
    progress_summary,
    rm_batch_stats,
    spearman,
)
from fgrlhf_ray.types import RolloutBatch, Segment, SegmentRewards

# --------------------------------------------------------------------------- crafted batches


def sentences(n: int, labels: list[bool] | None = None, width: int = 10) -> SegmentRewards:
    """n sentences of `width` chars; labels[k] True = error (value −1, label "error")."""
    labels = labels if labels is not None else [False] * n
    segs = [Segment(k * width, (k + 1) * width, -1.0 if err else 1.0, "error" if err else "no_error")
            for k, err in enumerate(labels)]
    return SegmentRewards(segs, "sentence")


def sequence(value: float, length: int = 30) -> SegmentRewards:
    return SegmentRewards([Segment(0, length, value)], "sequence")


def batch(seed: int = 0, size: int = 16):
    """Segment counts 1..4, token lengths ~ 8·segments + noise, and four RMs on the same batch."""
    rng = random.Random(seed)
    counts = [rng.randint(1, 4) for _ in range(size)]
    tokens = [8 * c + rng.randint(0, 24) for c in counts]  # corr(segments, tokens) ≈ 0.8
    verdicts = {
        "blind": [sentences(c) for c in counts],  # every segment no_error: a segment-count bonus
        "flat": [sequence(0.7) for _ in counts],  # the same score for every answer
        "length": [sequence(0.05 * t) for t in tokens],  # a pure length prior
        "healthy": [sentences(c, [rng.random() < 0.4 for _ in range(c)]) for c in counts],
    }
    return verdicts, tokens


def monitor(names, **overrides) -> RewardMonitor:
    config = DiagnosticsConfig(**{"patience": 3, "min_samples": 8, **overrides})
    return RewardMonitor(config=config, names=names)


# --------------------------------------------------------------------------- statistics


def test_pearson_and_spearman_match_references():
    rng = random.Random(1)
    xs = [rng.gauss(0, 1) for _ in range(30)]
    ys = [x + rng.gauss(0, 1) for x in xs]
    assert pearson(xs, ys) == pytest.approx(statistics.correlation(xs, ys), abs=1e-12)
    # No ties: Spearman = 1 − 6·Σ d_i² / (n(n² − 1)) with d_i the rank difference (plain loop).
    n = len(xs)
    rank = lambda v: [sorted(v).index(x) + 1 for x in v]  # noqa: E731
    d2 = sum((a - b) ** 2 for a, b in zip(rank(xs), rank(ys)))
    assert spearman(xs, ys) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)), abs=1e-12)
    # Ties share their average rank: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4].
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(statistics.correlation([1, 2.5, 2.5, 4], [1, 2, 3, 4]))
    assert pearson([0.3] * 5, [1, 2, 3, 4, 5]) is None  # constant: undefined, not 0
    assert pearson([1.0], [2.0]) is None
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_statistics_of_each_rm_against_plain_loops():
    verdicts, tokens = batch()
    for name, v in verdicts.items():
        stats = rm_batch_stats(v, response_tokens=tokens)
        totals = [sum(s.value for s in x.segments) for x in v]
        counts = [len(x.segments) for x in v]
        assert stats["total_mean"] == pytest.approx(statistics.fmean(totals))
        assert stats["total_std"] == pytest.approx(statistics.pstdev(totals), abs=1e-12)
        assert stats["total_spread"] == pytest.approx(max(totals) - min(totals))
        assert stats["segments_mean"] == pytest.approx(statistics.fmean(counts))
        if len(set(totals)) > 1:
            assert stats["corr_length"] == pytest.approx(statistics.correlation(totals, tokens))
        if v[0].density == "sentence":
            errors = sum(s.label == "error" for x in v for s in x.segments)
            assert stats["error_share"] == pytest.approx(errors / sum(counts))
            multi = [x for x in v if len(x.segments) >= 2]
            uniform = sum(len({s.label for s in x.segments}) == 1 for x in multi)
            assert stats["uniform_share"] == pytest.approx(uniform / len(multi))
            assert stats["corr_segments"] == pytest.approx(statistics.correlation(totals, counts))
    blind = rm_batch_stats(verdicts["blind"], response_tokens=tokens)
    assert blind["error_share"] == 0.0 and blind["uniform_share"] == 1.0
    assert blind["corr_segments"] == pytest.approx(1.0)  # total = number of segments
    flat = rm_batch_stats(verdicts["flat"], response_tokens=tokens)
    assert flat["total_std"] == pytest.approx(0.0) and flat["total_spread"] == pytest.approx(0.0)
    assert "corr_length" not in flat and "error_share" not in flat and "uniform_share" not in flat
    assert rm_batch_stats(verdicts["length"], response_tokens=tokens)["corr_length"] == pytest.approx(1.0)
    healthy = rm_batch_stats(verdicts["healthy"], response_tokens=tokens)
    assert 0.2 < healthy["error_share"] < 0.6 and healthy["uniform_share"] < 0.8


def test_unlabelled_segments_use_the_sign_and_token_rms_get_uniform_share():
    assert is_error(Segment(0, 1, -0.2)) and is_error(Segment(0, 1, 0.0)) and not is_error(Segment(0, 1, 0.1))
    assert not is_error(Segment(0, 1, -5.0, "no_error"))  # a label wins over the value
    tok = [SegmentRewards([Segment(0, 1, 0.5), Segment(1, 2, 0.2)], "token"),
           SegmentRewards([Segment(0, 1, 0.5), Segment(1, 2, -0.2)], "token")]
    stats = rm_batch_stats(tok, response_tokens=[2, 2])
    assert stats["uniform_share"] == 0.5 and "error_share" not in stats


def test_no_segments_no_error_share_and_the_judge_needs_a_cpu():
    from fgrlhf_ray.launch.placement import required_cpus

    empty = [SegmentRewards([], "sentence")] * 3
    assert "error_share" not in rm_batch_stats(empty, response_tokens=[0, 0, 0])  # not "100% no_error"
    base = {"reward_models": [{"name": "h", "kind": "function", "target": "m:f", "density": "sequence"}]}
    judged = {**base, "audit": {"judge": {"name": "j", "kind": "function", "target": "m:g", "density": "sequence",
                                          "num_cpus": 0.5}}}
    assert required_cpus(RunConfig.model_validate(judged)) == required_cpus(RunConfig.model_validate(base)) + 0.5


def test_batch_diagnostics_names_and_pairwise_correlation():
    verdicts, tokens = batch()
    stats = batch_diagnostics(verdicts, response_tokens=tokens)
    assert stats["diag/blind/error_share"] == 0.0
    assert "diag/corr/blind/flat" not in stats  # flat is constant: undefined
    totals = {n: [x.total for x in v] for n, v in verdicts.items()}
    assert stats["diag/corr/blind/length"] == pytest.approx(statistics.correlation(totals["blind"], totals["length"]))
    assert stats["diag/corr/blind/healthy"] == pytest.approx(statistics.correlation(totals["blind"], totals["healthy"]))
    assert not any(k.startswith("diag/corr/length/blind") for k in stats)  # each pair once, in order


# --------------------------------------------------------------------------- warnings


def run_monitor(mon: RewardMonitor, steps: int, seed0: int = 0, size: int = 16):
    events = []
    for step in range(1, steps + 1):
        verdicts, tokens = batch(seed0 + step, size)
        verdicts = {n: verdicts[n] for n in mon.names}
        events += mon.update(step, batch_diagnostics(verdicts, response_tokens=tokens), num_samples=size)
    return events


def test_blind_rm_warns_once_after_patience_with_the_fix():
    events = run_monitor(monitor(["blind"]), steps=8)
    assert [(e["step"], e["rm"], e["condition"], e["status"]) for e in events] == [(3, "blind", "label_share",
                                                                                   "warning")]
    message = events[0]["message"]
    assert message.startswith("blind: 100% of segments labelled no_error for 3 steps; its reward is a "
                              "segment-count bonus (corr. with segment count 1.00).")
    assert "fgrlhf eval-rm" in message and "lower its weight" in message


def test_flat_length_and_pair_conditions():
    events = run_monitor(monitor(["flat", "length"]), steps=4)
    got = {(e["rm"], e["condition"]) for e in events}
    assert got == {("flat", "flat"), ("length", "length_corr")}
    assert all(e["step"] == 3 for e in events)
    length = next(e for e in events if e["rm"] == "length")
    assert "correlates +1.00 with response length (policy tokens)" in length["message"]
    assert "length bonus" in length["message"]
    # Two copies of one RM: the pair warning names both.
    mon = monitor(["a", "b"])
    v, tokens = batch(5)
    stats = batch_diagnostics({"a": v["healthy"], "b": v["healthy"]}, response_tokens=tokens)
    events = [e for step in (1, 2, 3) for e in mon.update(step, stats, num_samples=16)]
    assert [(e["rm"], e["condition"]) for e in events] == [("a & b", "pair_corr")]
    assert mon.active("a") == 1 and mon.active("b") == 1


def test_defaults_flag_both_quick_demo_rms_at_step_3_and_not_the_oracle():
    """Error shares measured in `fgrlhf train` runs on the demo's SFT policy: the --quick demo's learned
    relevance (all error) and factuality (3.0%, 4.9%, 7.6% error) RMs, and the oracle's own RMs."""
    mon = RewardMonitor(config=DiagnosticsConfig(), names=["relevance", "factuality"])
    learned = [(1.0, 0.030), (1.0, 0.049), (1.0, 0.076), (1.0, 0.029)]
    events = [e for step, (rel, fact) in enumerate(learned, 1)
              for e in mon.update(step, {"diag/relevance/error_share": rel, "diag/factuality/error_share": fact,
                                         "diag/relevance/total_std": 0.5, "diag/factuality/total_std": 0.8},
                                  num_samples=64)]
    assert [(e["step"], e["rm"], e["condition"]) for e in events] == [(3, "factuality", "label_share"),
                                                                      (3, "relevance", "label_share")]
    oracle = RewardMonitor(config=DiagnosticsConfig(), names=["relevance", "factuality"])
    shares = [(0.27, 0.66), (0.25, 0.55), (0.33, 0.63), (0.32, 0.63), (0.31, 0.69), (0.24, 0.72)] * 2
    assert not [e for step, (rel, fact) in enumerate(shares, 1)
                for e in oracle.update(step, {"diag/relevance/error_share": rel, "diag/factuality/error_share": fact,
                                              "diag/relevance/total_std": 1.7, "diag/factuality/total_std": 1.5},
                                       num_samples=128)]


def test_healthy_rm_stays_silent_over_a_long_run():
    mon = monitor(["healthy"])
    assert run_monitor(mon, steps=50, size=32) == []
    assert mon.active("healthy") == 0


def test_segment_count_proxy_without_extreme_labels():
    """An RM whose total is ~ the segment count though labels are mixed (a per-segment value that
    is mostly positive): `segment_corr`, not `label_share`."""
    mon = monitor(["proxy"], max_segment_corr=0.95)
    counts = [1, 2, 3, 4] * 4
    verdicts = [SegmentRewards([Segment(k, k + 1, 1.0 if k else -0.01) for k in range(c)], "sentence")
                for c in counts]
    stats = batch_diagnostics({"proxy": verdicts}, response_tokens=[9, 5, 20, 11] * 4)
    assert 0.2 < stats["diag/proxy/error_share"] < 0.5
    events = [e for step in (1, 2, 3) for e in mon.update(step, stats, num_samples=16)]
    assert [e["condition"] for e in events] == ["segment_corr"]
    assert "segment-count bonus" in events[0]["message"]


def test_warning_resolves_then_may_fire_again_and_needs_consecutive_steps():
    mon = monitor(["blind"], patience=2)
    blind, healthy = batch(0)[0]["blind"], batch(0)[0]["healthy"]
    tokens = batch(0)[1]

    def step(n, verdicts):
        return mon.update(n, batch_diagnostics({"blind": verdicts}, response_tokens=tokens), num_samples=16)

    assert step(1, blind) == [] and step(2, healthy) == [] and step(3, blind) == []  # streak broken
    assert [e["status"] for e in step(4, blind)] == ["warning"]
    assert step(5, blind) == []  # once, not every step
    assert mon.active("blind") == 1
    assert [e["status"] for e in step(6, healthy)] == ["resolved"]
    assert mon.active("blind") == 0
    assert step(7, blind) == [] and [e["status"] for e in step(8, blind)] == ["warning"]


def test_correlation_warnings_need_min_samples():
    mon = monitor(["length"], min_samples=8)
    assert run_monitor(mon, steps=5, size=4) == []


def test_progress_summary():
    metrics = {"diag/rel/error_share": 0.031, "diag/fact/error_share": 1.0, "diag/comp/total_std": 0.2,
               "diag/rel/flags": 1.0, "diag/fact/flags": 1.0}
    assert progress_summary(metrics, ["rel", "fact", "comp"]) == {"err": "rel:0.03,fact:1.00", "flags": "2"}
    assert progress_summary({"diag/comp/total_std": 0.2}, ["comp"]) == {}


# --------------------------------------------------------------------------- agreement


def test_segment_agreement_hand_computed():
    # Response 0: judge says [ok, err, ok]; the blind RM says all ok → 2/3 right.
    # Response 1: judge [err, err]; RM [err, ok] → 1/2 right. Pooled: 3/5 = 0.6.
    judge = [sentences(3, [False, True, False]), sentences(2, [True, True])]
    rm = [sentences(3), sentences(2, [True, False])]
    got = agreement(rm, judge)
    # error class: tp 1, fp 0, fn 2 → P 1, R 1/3, F1 0.5; no-error: tp 2, fp 2, fn 0 → P 0.5, R 1, F1 2/3.
    assert got["segment_accuracy"] == pytest.approx(0.6)
    assert got["error_f1"] == pytest.approx(0.5)
    assert got["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert got["segments"] == 5 and got["unmatched"] == 0
    assert got["judge_error_share"] == pytest.approx(0.6) and got["rm_error_share"] == pytest.approx(0.2)
    # Baselines: all-error → acc 0.6, error F1 0.75, no-error F1 0 → macro 0.375; all-no-error → 0.25.
    assert got["baseline_macro_f1"] == pytest.approx(0.375)


def test_matching_by_spans_across_granularities():
    # RM sub-sentences [0,5) [5,10) [10,20) [30,35); judge sentences [0,10) ok and [10,20) error.
    rm = SegmentRewards([Segment(0, 5, 1.0), Segment(5, 10, -1.0), Segment(10, 20, 1.0), Segment(30, 35, 1.0)],
                        "sub_sentence")
    judge = SegmentRewards([Segment(0, 10, 1.0, "no_error"), Segment(10, 20, -1.0, "error")], "sentence")
    gold, pred, unmatched = matched_labels(rm, judge)
    assert gold == [0, 0, 1] and pred == [0, 1, 0] and unmatched == 1
    # A sentence RM against a sub-sentence judge: error if any overlapping judge piece is.
    rm2 = SegmentRewards([Segment(0, 10, 1.0)], "sentence")
    judge2 = SegmentRewards([Segment(0, 5, 1.0), Segment(5, 10, -1.0)], "sub_sentence")
    assert matched_labels(rm2, judge2) == ([1], [0], 0)


def test_sequence_and_token_agreement():
    rm = [sequence(v) for v in (0.1, 0.5, 0.3, 0.9)]
    judge = [sequence(v) for v in (1.0, 2.0, 4.0, 3.0)]
    # ranks rm (1, 3, 2, 4), judge (1, 2, 4, 3): d = (0, 1, −2, 1), Spearman 1 − 6·6/(4·15) = 0.4.
    assert agreement(rm, judge) == {"samples": 4.0, "spearman": pytest.approx(0.4)}
    assert "spearman" not in agreement([sequence(1.0)] * 3, judge[:3])  # constant RM: undefined
    tok = [SegmentRewards([Segment(0, 2, 0.3), Segment(2, 4, -0.1), Segment(4, 6, 0.2), Segment(12, 14, 0.2)],
                          "token")]
    judge_tok = [SegmentRewards([Segment(0, 5, 1.0, "no_error"), Segment(5, 10, -1.0, "error")], "sentence")]
    # tokens [0,2) +, [2,4) −, [4,6) + (overlaps the error sentence too → judge says error); [12,14) unmatched.
    got = agreement(tok, judge_tok)
    assert got == {"sign_agreement": pytest.approx(1 / 3), "segments": 3.0, "unmatched": 1.0}


# --------------------------------------------------------------------------- the auditor


class InProcessJudge:
    """Judge service whose results become ready only when `release()` is called."""

    def __init__(self, scorer, fail=False):
        self.scorer, self.fail, self.calls, self.ready = scorer, fail, [], set()

    def judge(self, rollout, indices):
        if self.fail:
            raise RuntimeError("judge down")
        self.calls.append(list(indices))
        return len(self.calls) - 1, rollout, list(indices)

    def done(self, handle):
        return handle[0] in self.ready

    def release(self):
        self.ready.update(range(len(self.calls)))

    def result(self, handle, *, timeout):
        _, rollout, indices = handle
        return self.scorer([rollout.responses[i] for i in indices]), 0.01


def rollout_of(responses):
    return RolloutBatch(prompts=["q"] * len(responses), prompt_ids=[[1]] * len(responses), responses=responses,
                        response_ids=[[1] * len(r) for r in responses], logprobs=[[0.0] * len(r) for r in responses],
                        prompt_index=list(range(len(responses))), finish_reasons=["stop"] * len(responses))


def test_sample_indices_seeded_and_bounded():
    assert sample_indices(16, rate=0.25, min_samples=2, seed=1) == sample_indices(16, rate=0.25, min_samples=2, seed=1)
    assert len(sample_indices(16, rate=0.25, min_samples=2, seed=1)) == 4
    assert len(sample_indices(4, rate=0.25, min_samples=2, seed=1)) == 2
    assert sample_indices(3, rate=0.5, min_samples=5, seed=0) == [0, 1, 2]


def test_auditor_one_in_flight_late_results_and_failures():
    responses = [f"r{i}" for i in range(8)]
    rollout = rollout_of(responses)
    judge = InProcessJudge(lambda rs: [sequence(float(r[1:])) for r in rs])
    verdicts = {"rm": [sequence(float(i)) for i in range(8)], "anti": [sequence(-float(i)) for i in range(8)]}
    auditor = Auditor(config=AuditConfig(sample_rate=0.5, min_samples=2), judge=judge, seed=0)
    assert auditor.submit(1, rollout, rollout, verdicts) == {"audit/submitted": 1.0}
    assert auditor.collect(1) == ({}, [])  # not done yet: no wait
    assert auditor.submit(2, rollout, rollout, verdicts) == {"audit/skipped": 1.0}
    judge.release()
    metrics, records = auditor.collect(2)
    assert metrics["audit/step"] == 1 and metrics["audit/lag_steps"] == 1 and metrics["audit/samples"] == 4
    assert metrics["audit/rm/spearman"] == pytest.approx(1.0) and metrics["audit/anti/spearman"] == pytest.approx(-1.0)
    assert metrics["audit/judge_s"] == 0.01
    (record,) = records
    assert record["indices"] == judge.calls[0] and len(record["samples"]) == 4
    assert all(s["judge_total"] == s["rm_totals"]["rm"] == float(s["index"]) for s in record["samples"])
    # every: only steps divisible by it are audited.
    sparse = Auditor(config=AuditConfig(every=2), judge=judge)
    assert sparse.submit(3, rollout, rollout, verdicts) == {}
    # A failing judge is logged and counted; training goes on.
    broken = Auditor(config=AuditConfig(), judge=InProcessJudge(None, fail=True))
    assert broken.submit(1, rollout, rollout, verdicts) == {"audit/failures": 1.0}


# --------------------------------------------------------------------------- the controller


decode = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731
RESPONSES = ["Ab. Cd. Ef.", "Xyz is long!", "Gh. Ij.", "Kl, then more."]


class Rollout:
    def generate(self, prompts, *, n, sampling, seed):
        responses = [RESPONSES[i % 4] for i in range(len(prompts) * n)]
        return RolloutBatch(prompts=[p for p in prompts for _ in range(n)],
                            prompt_ids=[[ord(c) for c in p] for p in prompts for _ in range(n)],
                            responses=responses, response_ids=[[ord(c) for c in r] for r in responses],
                            logprobs=[[-1.0] * len(r) for r in responses],
                            prompt_index=[i for i in range(len(prompts)) for _ in range(n)],
                            finish_reasons=["stop"] * len(responses))

    def sync_weights(self, weights):
        return "ok"

    def probe_logprobs(self, prompt_ids, response_ids):
        return [[-1.0] * len(response_ids)]


def split(text):
    ends = [i + 1 for i, c in enumerate(text) if c in ".!"]
    return list(zip([0] + ends[:-1], ends))


class Scorer:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def score(self, rollout, num_samples):
        return [self.fn(t) for t in rollout.responses]


def blind(text):  # every sentence "no_error"
    return SegmentRewards([Segment(a, b, 1.0, "no_error") for a, b in split(text)], "sentence")


def judge_error(text, a, b):  # the "truth": sentences starting with X or G are errors
    return text[a:b].lstrip()[0] in "XG"


def judge_labels(text):
    return SegmentRewards([Segment(a, b, -1.0 if judge_error(text, a, b) else 1.0) for a, b in split(text)],
                          "sentence")


class Reference:
    def logprobs(self, rollout):
        return torch.full((len(rollout), max(map(len, rollout.response_ids))), -1.0)


class Learner:
    def logprobs_and_values(self, rollout):
        T = max(map(len, rollout.response_ids))
        return torch.full((len(rollout), T), -1.0), torch.zeros(len(rollout), T)

    def train(self, experience):
        return {"loss/policy": 0.0}

    def weights(self):
        return "w"

    def probe_logprobs(self, prompt_ids, response_ids):
        return [-1.0] * len(response_ids)


def test_controller_logs_diagnostics_warnings_and_audit(tmp_path):
    config = RunConfig.model_validate({
        "reward_models": [{"name": "blind", "kind": "function", "target": "m:f", "density": "sentence"},
                          {"name": "truth", "kind": "function", "target": "m:g", "density": "sentence"}],
        "ppo": {"prompts_per_step": 8, "minibatch_size": 8, "total_steps": 4},
        "diagnostics": {"patience": 2},
        "audit": {"judge": {"name": "judge", "kind": "function", "target": "m:h", "density": "sentence"},
                  "sample_rate": 0.5},
        "logging": {"tensorboard": False},
    })
    judge = InProcessJudge(lambda rs: [judge_labels(r) for r in rs])
    judge.done = lambda handle: True  # results ready at the end of the same step
    controller = PPOController(
        config=config, prompts=[f"p{i}" for i in range(8)], rollout=Rollout(),
        scorers=[Scorer("blind", blind), Scorer("truth", judge_labels)],
        scorer_specs=[ScorerSpec("blind", 0.3), ScorerSpec("truth", 0.5)], reference=Reference(), learner=Learner(),
        decode=decode, pad_token_id=0, metrics=MetricsLogger(tmp_path, tensorboard=False), probe=None,
        auditor=Auditor(config=config.audit, judge=judge, seed=0),
    )
    controller.run()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["diag/blind/error_share"] == 0.0 and rows[0]["diag/blind/uniform_share"] == 1.0
    assert rows[0]["diag/blind/flags"] == 0.0 and rows[1]["diag/blind/flags"] == 1.0
    assert rows[0]["diag/truth/error_share"] == pytest.approx(2 / 7)  # X.., G.. of 7 sentences per 4 answers
    warnings = [json.loads(line) for line in (tmp_path / "warnings.jsonl").read_text().splitlines()]
    assert [(w["step"], w["rm"], w["condition"]) for w in warnings] == [(2, "blind", "label_share")]
    # The truth RM is the judge: agreement 1; the blind RM is right on the 5 of 7 no-error sentences.
    for row in rows:
        assert row["audit/truth/segment_accuracy"] == 1.0 and row["audit/lag_steps"] == 0
        audited = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[row["step"] - 1])
        texts = [s["response"] for s in audited["samples"]]
        n_sent = sum(len(split(t)) for t in texts)
        n_err = sum(judge_error(t, a, b) for t in texts for a, b in split(t))
        assert row["audit/blind/segment_accuracy"] == pytest.approx((n_sent - n_err) / n_sent)
        assert row["audit/samples"] == 4 and "time/audit" in row
    assert sum(r.get("audit/skipped", 0) for r in rows) == 0


def test_diagnostics_can_be_turned_off(tmp_path):
    config = RunConfig.model_validate({
        "reward_models": [{"name": "blind", "kind": "function", "target": "m:f", "density": "sentence"}],
        "ppo": {"prompts_per_step": 2, "minibatch_size": 2, "total_steps": 1},
        "diagnostics": {"enabled": False}, "logging": {"tensorboard": False}})
    controller = PPOController(config=config, prompts=["p"], rollout=Rollout(), scorers=[Scorer("blind", blind)],
                               scorer_specs=[ScorerSpec("blind", 1.0)], reference=Reference(), learner=Learner(),
                               decode=decode, pad_token_id=0, probe=None)
    (result,) = controller.run()
    assert not any(k.startswith("diag/") for k in result.metrics)


# --------------------------------------------------------------------------- config


BASE = "reward_models: [{name: h, kind: function, target: 'm:f', density: sequence}]\n"


@pytest.mark.parametrize("override, expected", [
    ("diagnostics.max_label_share=0.4", "diagnostics.max_label_share: Input should be greater than 0.5"),
    ("diagnostics.patience=0", "diagnostics.patience: Input should be greater than or equal to 1"),
    ("diagnostics.max_length_corr=1.5", "diagnostics.max_length_corr: Input should be less than or equal to 1"),
    ("diagnostics.min_samples=2", "diagnostics.min_samples"),
    ("diagnostics.treshold=1", "diagnostics.treshold: unknown field"),
    ("audit.sample_rate=0", "audit.sample_rate: Input should be greater than 0"),
    ("audit.every=0", "audit.every"),
    ("audit.judge={name: j, kind: function, density: sentence}", "audit.judge: reward model 'j' of kind 'function' "
                                                                 "needs `target`"),
    ("audit.judge={name: j, kind: http, target: 'x', density: sentence}", "audit.judge: reward model 'j' of kind "
                                                                          "'http' needs `target` as an http"),
])
def test_bad_values_name_the_field(tmp_path, override, expected):
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert expected in str(info.value), str(info.value)


def test_audit_min_samples_must_fit_the_batch(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "ppo: {prompts_per_step: 2, minibatch_size: 2}\n"
                    "audit: {judge: {name: j, kind: function, target: 'm:g', density: sequence}, min_samples: 3}\n")
    with pytest.raises(ConfigError, match=r"audit\.min_samples \(3\) exceeds the rollout batch"):
        load_config(path)
    config = load_config(path, ["audit.min_samples=2"])
    assert config.audit.judge.name == "j" and config.diagnostics.enabled  # on by default
    assert math.isclose(config.audit.sample_rate, 0.25)
