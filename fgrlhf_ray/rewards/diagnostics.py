"""Reward-signal diagnostics: is each reward model still telling the policy anything?

A reward model that labels every segment of the policy's answers the same way teaches the
policy nothing but a segmentation or length prior; PPO's reward curve looks healthy all the
same. This module measures, per reward model and per PPO step, how much its verdicts vary
over the batch, and what they correlate with, from the `SegmentRewards` the scorers return.
It also compares reward models with an audit judge (`agreement`). Pure Python: no Ray, no
torch on the hot path (the audit's F1 reuses `fgrlhf_ray.rewards.evaluation.binary_metrics`).

Per reward model m, over the B samples of a batch (n_i = segments of sample i,
x_i = Σ_segments v, the raw per-sample total, before weight and normalisation):

    error_share     = Σ_i #{error segments of i} / Σ_i n_i          (sub_sentence / sentence RMs)
    total_mean/std  = mean, population std of x_i;  total_spread = max_i x_i − min_i x_i
    uniform_share   = share of samples with n_i ≥ 2 whose segments all got one label
                      (segment RMs: error / no_error; token RMs: the sign of the value)
    corr_length     = Pearson(x_i, response length in *policy tokens*)
    corr_segments   = Pearson(x_i, n_i)
    corr/<a>/<b>    = Pearson(x_i^a, x_i^b) for each pair of reward models

A segment is an error when its label is "error"; an unlabelled one (function, HTTP scorers)
when its value is ≤ 0 (the rule of `fgrlhf eval`'s relevance / factuality ratios). A
Pearson or Spearman correlation of a constant series is undefined and left out of the stats
(a constant reward model is flagged by its std instead).

`RewardMonitor` turns the stats of consecutive steps into warnings that name the reward
model and the fix, each fired once when its condition has held for `patience` steps in a
row (and again only after it cleared).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fgrlhf_ray.types import Segment, SegmentRewards

__all__ = [
    "SEGMENT_DENSITIES",
    "is_error",
    "pearson",
    "spearman",
    "rm_batch_stats",
    "batch_diagnostics",
    "RewardMonitor",
    "progress_summary",
    "matched_labels",
    "agreement",
]

SEGMENT_DENSITIES = ("sub_sentence", "sentence")
PREFIX = "diag"


def is_error(seg: Segment) -> bool:
    """A segment labelled "error", or an unlabelled one with value ≤ 0."""
    return seg.label == "error" if seg.label is not None else seg.value <= 0


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length series; None if either is constant or n < 2."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"pearson: series of lengths {n} and {len(ys)}")
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    # Constant up to rounding: the spread is negligible against the values' magnitude.
    if sxx <= 1e-12 * sum(x * x for x in xs) or syy <= 1e-12 * sum(y * y for y in ys):
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    k = 0
    while k < len(order):
        j = k
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[k]]:
            j += 1
        for m in range(k, j + 1):
            ranks[order[m]] = (k + j) / 2 + 1
        k = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); None if undefined."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman: series of lengths {len(xs)} and {len(ys)}")
    return pearson(_ranks(xs), _ranks(ys))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def rm_batch_stats(verdicts: Sequence[SegmentRewards], *, response_tokens: Sequence[int]) -> dict[str, float]:
    """One reward model's statistics over a batch (names as in the module docstring).

    Args:
        verdicts: (B,) the RM's verdict on each sample.
        response_tokens: (B,) each response's length in policy tokens.

    Returns keys `total_mean`, `total_std`, `total_spread`, `segments_mean` always;
    `error_share` for segment RMs (when the batch has a segment); `uniform_share` for segment / token RMs when some sample
    has two segments or more; `corr_length`, `corr_segments` when defined.
    """
    if len(verdicts) != len(response_tokens):
        raise ValueError(f"rm_batch_stats: {len(verdicts)} verdicts for {len(response_tokens)} responses")
    totals = [v.total for v in verdicts]
    counts = [len(v.segments) for v in verdicts]
    density = verdicts[0].density if verdicts else "sequence"
    mean = _mean(totals)
    stats = {
        "total_mean": mean,
        "total_std": math.sqrt(_mean([(x - mean) ** 2 for x in totals])),
        "total_spread": (max(totals) - min(totals)) if totals else 0.0,
        "segments_mean": _mean(counts),
    }
    if density in SEGMENT_DENSITIES and sum(counts):
        errors = sum(is_error(s) for v in verdicts for s in v.segments)
        stats["error_share"] = errors / sum(counts)
    if density in SEGMENT_DENSITIES or density == "token":
        multi = [{is_error(s) for s in v.segments} for v in verdicts if len(v.segments) >= 2]
        if multi:
            stats["uniform_share"] = sum(len(labels) == 1 for labels in multi) / len(multi)
    for key, other in (("corr_length", response_tokens), ("corr_segments", counts)):
        r = pearson(totals, [float(x) for x in other])
        if r is not None:
            stats[key] = r
    return stats


def batch_diagnostics(verdicts: Mapping[str, Sequence[SegmentRewards]], *,
                      response_tokens: Sequence[int]) -> dict[str, float]:
    """`diag/<rm>/<stat>` for every reward model and `diag/corr/<a>/<b>` for every pair (a before b
    in the mapping's order), from one step's verdicts. Undefined correlations are left out."""
    out: dict[str, float] = {}
    names = list(verdicts)
    for name in names:
        for key, value in rm_batch_stats(verdicts[name], response_tokens=response_tokens).items():
            out[f"{PREFIX}/{name}/{key}"] = value
    totals = {name: [v.total for v in verdicts[name]] for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = pearson(totals[a], totals[b])
            if r is not None:
                out[f"{PREFIX}/corr/{a}/{b}"] = r
    return out


# --------------------------------------------------------------------------- warnings


EVAL_RM_HINT = "Check the RM on this policy's answers (`fgrlhf eval-rm --generations`) or lower its weight."


@dataclass
class _Condition:
    streak: int = 0
    fired: bool = False


@dataclass
class RewardMonitor:
    """Warnings from consecutive steps' `batch_diagnostics` (stateful; no I/O).

    Conditions, per reward model (thresholds from `config`, a `DiagnosticsConfig`):

    - `label_share`: a segment RM gives one label to ≥ max_label_share of all segments;
    - `flat`: the per-sample total's std ≤ min_total_std × σ (σ: the RM's normalisation std);
    - `length_corr`: |corr(total, response tokens)| ≥ max_length_corr;
    - `segment_corr`: |corr(total, segment count)| ≥ max_segment_corr (not reported while
      `label_share` holds: that message already names the correlation);
    - `pair_corr` (per pair of RMs): |corr(total_a, total_b)| ≥ max_pair_corr.

    Correlation conditions need a batch of at least `min_samples`. `update` returns the
    events of this step: a warning when a condition reaches `patience` consecutive steps,
    a "resolved" record when a warned condition stops holding (it may then warn again).
    """

    config: Any  # fgrlhf_ray.config.DiagnosticsConfig
    names: Sequence[str]
    scale: Mapping[str, float] = field(default_factory=dict)  # RM name -> σ (default 1)

    def __post_init__(self) -> None:
        self._state: dict[tuple[str, str], _Condition] = {}

    def update(self, step: int, stats: Mapping[str, float], *, num_samples: int) -> list[dict]:
        holding = self._conditions(stats, num_samples)
        events = []
        for key in set(self._state) | set(holding):
            state = self._state.setdefault(key, _Condition())
            if key in holding:
                state.streak += 1
                if state.streak == self.config.patience and not state.fired:
                    state.fired = True
                    events.append(self._event(step, key, holding[key], "warning"))
            else:
                if state.fired:
                    events.append({"step": step, "rm": key[0], "condition": key[1], "status": "resolved",
                                   "message": f"{key[0]}: {key[1]} no longer holds at step {step}"})
                state.streak, state.fired = 0, False
        return sorted(events, key=lambda e: (e["rm"], e["condition"]))

    def active(self, name: str) -> int:
        """How many warned conditions of reward model `name` (pairs included) hold now."""
        return sum(1 for (rm, _), s in self._state.items() if s.fired and name in rm.split(" & "))

    def _event(self, step: int, key: tuple[str, str], detail: tuple[float, str], status: str) -> dict:
        value, message = detail
        return {"step": step, "rm": key[0], "condition": key[1], "status": status, "value": value,
                "steps": self.config.patience, "message": message}

    def _conditions(self, stats: Mapping[str, float], num_samples: int) -> dict[tuple[str, str], tuple[float, str]]:
        """(rm, condition) -> (value, message) for every condition holding in `stats`."""
        cfg, n = self.config, self.config.patience
        corr_ok = num_samples >= cfg.min_samples
        out: dict[tuple[str, str], tuple[float, str]] = {}
        for name in self.names:
            get = lambda key: stats.get(f"{PREFIX}/{name}/{key}")  # noqa: E731
            err, seg_corr, len_corr = get("error_share"), get("corr_segments"), get("corr_length")
            label_share = None
            if err is not None:
                label, label_share = ("error", err) if err >= 0.5 else ("no_error", 1.0 - err)
                if label_share >= cfg.max_label_share:
                    kind = "penalty" if label == "error" else "bonus"
                    corr = f"corr. with segment count {seg_corr:.2f}" if seg_corr is not None else \
                        "every sample has the same segment count"
                    out[(name, "label_share")] = (label_share, (
                        f"{name}: {100 * label_share:.0f}% of segments labelled {label} for {n} steps; its reward "
                        f"is a segment-count {kind} ({corr}). {EVAL_RM_HINT}"))
            std, sigma = get("total_std"), float(self.scale.get(name, 1.0))
            if std is not None and std <= cfg.min_total_std * sigma:
                out[(name, "flat")] = (std, (
                    f"{name}: every answer gets the same reward (per-sample std {std:.3g}, spread "
                    f"{get('total_spread') or 0.0:.3g}) for {n} steps; it only shifts the baseline and gives the "
                    f"policy no signal. {EVAL_RM_HINT}"))
            if corr_ok and len_corr is not None and abs(len_corr) >= cfg.max_length_corr:
                kind = "bonus" if len_corr > 0 else "penalty"
                out[(name, "length_corr")] = (len_corr, (
                    f"{name}: per-sample reward correlates {len_corr:+.2f} with response length (policy tokens) for "
                    f"{n} steps; its reward is mostly a length {kind}. {EVAL_RM_HINT}"))
            extreme_labels = label_share is not None and label_share >= cfg.max_label_share
            if corr_ok and seg_corr is not None and abs(seg_corr) >= cfg.max_segment_corr and not extreme_labels:
                kind = "bonus" if seg_corr > 0 else "penalty"
                out[(name, "segment_corr")] = (seg_corr, (
                    f"{name}: per-sample reward correlates {seg_corr:+.2f} with the number of segments for {n} steps; "
                    f"its reward is mostly a segment-count {kind} (the policy can game it by splitting or merging "
                    f"sentences). {EVAL_RM_HINT}"))
        if corr_ok:
            for i, a in enumerate(self.names):
                for b in self.names[i + 1:]:
                    r = stats.get(f"{PREFIX}/corr/{a}/{b}")
                    if r is not None and abs(r) >= cfg.max_pair_corr:
                        out[(f"{a} & {b}", "pair_corr")] = (r, (
                            f"{a} and {b}: per-sample rewards correlate {r:+.2f} for {n} steps; they reward the same "
                            f"thing (often: both just count segments), so one adds weight but no information. Check "
                            f"both with `fgrlhf eval-rm --generations`, or drop one."))
        return out


def progress_summary(metrics: Mapping[str, float], names: Sequence[str]) -> dict[str, str]:
    """Progress-bar fields: `err` (each segment RM's error share) and `flags` (warned conditions now
    holding, when any) from one step's metrics."""
    out = {}
    shares = [f"{n}:{metrics[f'{PREFIX}/{n}/error_share']:.2f}" for n in names
              if f"{PREFIX}/{n}/error_share" in metrics]
    if shares:
        out["err"] = ",".join(shares)
    flags = int(sum(metrics.get(f"{PREFIX}/{n}/flags", 0.0) for n in names))
    if flags:
        out["flags"] = str(flags)
    return out


# --------------------------------------------------------------------------- agreement


def _overlaps(a: Segment, b: Segment) -> bool:
    if a.char_start == a.char_end:  # an empty span: the segment that contains its position
        return b.char_start <= a.char_start < b.char_end or (b.char_start == b.char_end == a.char_start)
    return min(a.char_end, b.char_end) > max(a.char_start, b.char_start)


def matched_labels(rm: SegmentRewards, judge: SegmentRewards) -> tuple[list[int], list[int], int]:
    """(judge labels, RM labels, unmatched) for the RM's segments of one response; 1 = error.

    An RM segment whose span equals a judge segment's takes that segment's label; otherwise
    it is an error for the judge if any judge segment overlapping it is an error (a judge at
    another granularity: a sentence judge passes its label to every sub-sentence in it). RM
    segments that overlap no judge segment are unmatched and left out.
    """
    by_span = {(s.char_start, s.char_end): s for s in judge.segments}
    gold, pred, unmatched = [], [], 0
    for seg in rm.segments:
        exact = by_span.get((seg.char_start, seg.char_end))
        if exact is not None:
            gold.append(int(is_error(exact)))
        else:
            hits = [j for j in judge.segments if _overlaps(seg, j)]
            if not hits:
                unmatched += 1
                continue
            gold.append(int(any(is_error(j) for j in hits)))
        pred.append(int(is_error(seg)))
    return gold, pred, unmatched


def agreement(rm: Sequence[SegmentRewards], judge: Sequence[SegmentRewards]) -> dict[str, float]:
    """How well one reward model agrees with a judge on the same responses (no gold labels).

    By the RM's density:
      - sub_sentence / sentence: `segment_accuracy`, `macro_f1`, `error_f1` over the RM's
        segments matched to the judge's (`matched_labels`), `segments`, `unmatched`, and the
        judge's / RM's error shares (`judge_error_share`, `rm_error_share`) plus the macro-F1 of
        the constant baselines (`baseline_macro_f1`: the better of all-error / all-no-error);
      - token: `sign_agreement` (share of matched RM tokens whose sign — value > 0 — equals the
        judge's no-error verdict on the span), `segments`, `unmatched`;
      - sequence: `spearman` of the per-sample totals (when defined), `samples`.
    """
    from fgrlhf_ray.rewards.evaluation import binary_metrics

    if len(rm) != len(judge):
        raise ValueError(f"agreement: {len(rm)} RM verdicts but {len(judge)} judge verdicts")
    density = rm[0].density if rm else "sequence"
    if density == "sequence":
        out = {"samples": float(len(rm))}
        r = spearman([v.total for v in rm], [v.total for v in judge])
        if r is not None:
            out["spearman"] = r
        return out
    gold, pred, unmatched = [], [], 0
    for r_v, j_v in zip(rm, judge):
        g, p, u = matched_labels(r_v, j_v)
        gold += g
        pred += p
        unmatched += u
    m = binary_metrics(gold, pred)
    if density == "token":
        return {"sign_agreement": m["accuracy"], "segments": float(len(gold)), "unmatched": float(unmatched)}
    return {
        "segment_accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "error_f1": m["error_f1"],
        "segments": float(len(gold)), "unmatched": float(unmatched),
        "judge_error_share": _mean(gold), "rm_error_share": _mean(pred),
        "baseline_macro_f1": max(binary_metrics(gold, [1] * len(gold))["macro_f1"],
                                 binary_metrics(gold, [0] * len(gold))["macro_f1"]),
    }
