"""Reward-model evaluation with trivial baselines.

- Segment RMs: accuracy, precision / recall / F1 of the error and the no-error class,
  macro-F1, and the same for the two trivial baselines (all-error, all-no-error).
- Preference RMs: pairwise accuracy with the pair order randomised (seeded), against
  prefer-first, prefer-shorter and prefer-longer (length in characters; equal lengths
  count as half right).
- Token-level RM: pairwise accuracy of edited ≻ original by the trained margin
  Σ_{changed in edited} r − Σ_{changed in original} r, and by the whole-response sums
  Σ_t r(edited)_t vs Σ_t r(original)_t; accuracy of the per-token sign on changed
  tokens (inserted/replaced in edited should be > 0, deleted/replaced in original < 0).
- On policy samples without gold labels (`evaluate_against_judge`): agreement with a judge
  scorer (segment accuracy / macro-F1, Spearman, sign agreement, see
  `fgrlhf_ray.rewards.diagnostics.agreement`) and the RM's reward-signal statistics there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from fgrlhf_ray.data.rm_data import EditPair, PreferencePair, SegmentExample
from fgrlhf_ray.rewards.losses import edit_masks

#: The metric each task's "best epoch" is chosen by.
DEV_METRIC = {
    "relevance": "macro_f1",
    "factuality": "error_f1",
    "completeness": "accuracy",
    "holistic": "accuracy",
    "edit_preference": "accuracy",
    "token_level": "pair_accuracy",
}


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def binary_metrics(gold: Sequence[int], pred: Sequence[int]) -> dict[str, float]:
    """Metrics for labels 1 = error, 0 = no error (both lists the same length)."""
    if len(gold) != len(pred):
        raise ValueError(f"binary_metrics: {len(gold)} gold labels but {len(pred)} predictions")
    n = len(gold)
    tp = sum(1 for g, p in zip(gold, pred) if g == 1 and p == 1)
    tn = sum(1 for g, p in zip(gold, pred) if g == 0 and p == 0)
    fp = sum(1 for g, p in zip(gold, pred) if g == 0 and p == 1)
    fn = sum(1 for g, p in zip(gold, pred) if g == 1 and p == 0)
    ep, er, ef = _prf(tp, fp, fn)
    np_, nr, nf = _prf(tn, fn, fp)
    return {
        "n": n,
        "accuracy": (tp + tn) / n if n else 0.0,
        "error_precision": ep,
        "error_recall": er,
        "error_f1": ef,
        "no_error_precision": np_,
        "no_error_recall": nr,
        "no_error_f1": nf,
        "macro_f1": (ef + nf) / 2,
    }


def segment_predictions(rm, examples: Sequence[SegmentExample]) -> tuple[list[int], list[float]]:
    """Gold labels and P(error) of every labelled segment of `examples` (segments as given)."""
    probs, _ = rm.predict_proba([e.prompt for e in examples], [e.response for e in examples], [e.spans for e in examples])
    gold, p_err = [], []
    for ex, pr in zip(examples, probs):
        for lab, p in zip(ex.labels, pr):
            if lab is not None:
                gold.append(int(lab))
                p_err.append(p)
    return gold, p_err


def best_threshold(gold: Sequence[int], p_err: Sequence[float], metric: str) -> tuple[float, float]:
    """The P(error) threshold in {0.05, 0.10, …, 0.95} maximising `metric` (ties → closest to 0.5)."""
    best = (-1.0, 0.5)
    for k in range(1, 20):
        thr = k / 20
        m = binary_metrics(gold, [int(p >= thr) for p in p_err])[metric]
        if m > best[0] + 1e-12 or (abs(m - best[0]) <= 1e-12 and abs(thr - 0.5) < abs(best[1] - 0.5)):
            best = (m, thr)
    return best[1], best[0]


def evaluate_segment_rm(rm, examples: Sequence[SegmentExample], *, threshold: float | None = None) -> dict:
    """Segment-level metrics of `rm` on `examples` plus the all-error / all-no-error baselines."""
    gold, p_err = segment_predictions(rm, examples)
    thr = rm.metadata.threshold if threshold is None else threshold
    pred = [int(p >= thr) for p in p_err]
    out = binary_metrics(gold, pred)
    out.update(
        threshold=thr,
        examples=len(examples),
        error_rate=sum(gold) / len(gold) if gold else 0.0,
        baselines={
            "all_error": binary_metrics(gold, [1] * len(gold)),
            "all_no_error": binary_metrics(gold, [0] * len(gold)),
        },
    )
    out["majority_accuracy"] = max(out["error_rate"], 1 - out["error_rate"])
    return out


def evaluate_preference_rm(rm, pairs: Sequence[PreferencePair], *, seed: int = 0) -> dict:
    """Pairwise accuracy with randomised pair order, plus trivial baselines.

    Each pair is shown as (A, B) with the preferred one first or second by a seeded
    coin flip; the model is right when it scores the preferred response higher (equal
    scores count as half).
    """
    rng = random.Random(seed)
    prompts, texts, first_is_chosen = [], [], []
    for pair in pairs:
        flip = rng.random() < 0.5
        a, b = (pair.rejected, pair.chosen) if flip else (pair.chosen, pair.rejected)
        prompts += [pair.prompt, pair.prompt]
        texts += [a, b]
        first_is_chosen.append(not flip)
    scores = rm.score_texts(prompts, texts) if pairs else []
    n = len(pairs)

    def acc(decide) -> float:
        total = 0.0
        for i, fc in enumerate(first_is_chosen):
            d = decide(i)  # +1: A preferred, -1: B preferred, 0: undecided
            total += 0.5 if d == 0 else float((d > 0) == fc)
        return total / n if n else 0.0

    def sign(x: float) -> int:
        return (x > 0) - (x < 0)

    model_acc = acc(lambda i: sign(scores[2 * i] - scores[2 * i + 1]))
    baselines = {
        "prefer_first": acc(lambda i: 1),
        "prefer_shorter": acc(lambda i: sign(len(texts[2 * i + 1]) - len(texts[2 * i]))),
        "prefer_longer": acc(lambda i: sign(len(texts[2 * i]) - len(texts[2 * i + 1]))),
    }
    return {
        "n": n,
        "accuracy": model_acc,
        "seed": seed,
        "baselines": baselines,
        "best_baseline": max(baselines.values()) if baselines else 0.0,
        "score_mean": sum(scores) / len(scores) if scores else 0.0,
    }


def evaluate_token_rm(rm, pairs: Sequence[EditPair]) -> dict:
    """Edit-pair metrics of a `TokenLevelRM` (see the module docstring) plus length baselines."""
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.original for p in pairs] + [p.edited for p in pairs]
    results = rm.token_rewards(prompts, responses)
    n = len(pairs)
    margin_right = sum_right = 0.0
    sign_right = sign_total = 0
    margins = []
    for i in range(n):
        (lo, ro), (le, re_) = results[i], results[n + i]
        om, em = edit_masks(lo.response_token_ids, le.response_token_ids)
        m = sum(r for r, k in zip(re_, em) if k) - sum(r for r, k in zip(ro, om) if k)
        margins.append(m)
        margin_right += 0.5 if m == 0 else float(m > 0)
        d = sum(re_) - sum(ro)
        sum_right += 0.5 if d == 0 else float(d > 0)
        sign_right += sum(1 for r, k in zip(re_, em) if k and r > 0) + sum(1 for r, k in zip(ro, om) if k and r < 0)
        sign_total += sum(em) + sum(om)
    prefer_shorter = sum(
        0.5 if len(p.edited) == len(p.original) else float(len(p.edited) < len(p.original)) for p in pairs
    )
    return {
        "n": n,
        "pair_accuracy": margin_right / n if n else 0.0,
        "sum_accuracy": sum_right / n if n else 0.0,
        "changed_token_sign_accuracy": sign_right / sign_total if sign_total else 0.0,
        "changed_tokens": sign_total,
        "mean_margin": sum(margins) / n if n else 0.0,
        "baselines": {
            "prefer_shorter": prefer_shorter / n if n else 0.0,
            "prefer_longer": (n - prefer_shorter) / n if n else 0.0,
        },
    }


def evaluate(rm, examples: Sequence, *, seed: int = 0) -> dict:
    """Dispatch on the RM's kind / the examples' type; adds `task` and `dev_metric`."""
    task = rm.metadata.task
    if rm.kind == "segment_classifier":
        res = evaluate_segment_rm(rm, examples)
    elif rm.kind == "sequence_preference":
        pairs = [e.as_preference() if isinstance(e, EditPair) else e for e in examples]
        res = evaluate_preference_rm(rm, pairs, seed=seed)
    elif rm.kind == "token_level":
        res = evaluate_token_rm(rm, examples)
    else:
        raise ValueError(f"cannot evaluate reward-model kind {rm.kind!r}")
    res["task"] = task
    res["dev_metric_name"] = DEV_METRIC[task]
    res["dev_metric"] = res[DEV_METRIC[task]]
    return res


def evaluate_against_judge(rm, judge, prompts: Sequence[str], responses: Sequence[str], *,
                           response_lengths: Sequence[int]) -> dict:
    """A reward model on policy samples, judged by another scorer (no gold labels needed).

    Both `rm` and `judge` score the same (prompt, response) pairs. Returns the agreement
    stats of `fgrlhf_ray.rewards.diagnostics.agreement`, the RM's statistics on these samples
    (`rm_batch_stats`: error share, per-sample total mean / std / spread, uniform share,
    correlation with length and segment count) under `policy/…`, and the judge's error share
    (segment judges) under `judge/…`. `response_lengths` (B,) is each response's length
    (policy tokens where known).
    """
    from fgrlhf_ray.rewards.diagnostics import agreement, rm_batch_stats

    rm_verdicts = rm.score(list(prompts), list(responses))
    judge_verdicts = judge.score(list(prompts), list(responses))
    out: dict = {"n": len(responses)}
    out.update(agreement(rm_verdicts, judge_verdicts))
    out.update({f"policy/{k}": v for k, v in rm_batch_stats(rm_verdicts, response_tokens=response_lengths).items()})
    judge_stats = rm_batch_stats(judge_verdicts, response_tokens=response_lengths)
    out.update({f"judge/{k}": judge_stats[k] for k in ("error_share", "total_mean", "total_std") if k in judge_stats})
    return out
