"""From generations and scorer verdicts to the eval report (pure: no Ray, no models).

`summarize` takes what the runner gathered — the samples, each reward model's
`SegmentRewards`, reference-LM NLLs, preference scores, toxicity probabilities — and
returns the metrics dict plus one row per sample for the generations file. Metric names:

    rouge_lsum_f1              mean over samples (of prompts with references) of max-over-refs F1
    relevance_ratio            pooled share of the relevance RM's no-error sub-sentences
    factuality_ratio           pooled share of the factuality RM's no-error sentences
    completeness_normalized    mean (R − μ)/σ of the completeness RM
    reward/<rm>, reward/total  mean over samples of w·Σ_segments (v − μ)/σ (as the trainer weighs them)
    length/tokens, length/words  mean response length (policy tokens; whitespace words)
    dist_1, dist_2, dist_3     distinct n-grams among the samples of a prompt, averaged over prompts
    perplexity                 exp(Σ NLL / Σ tokens) under the reference LM
    win_rate (+ wins/ties/losses)  vs the reference policy's response, ties as half
    avg_max_toxicity, toxicity_probability   over the k samples of each prompt
"""

from __future__ import annotations

from collections.abc import Sequence

from fgrlhf_ray.algo.weighting import RewardSpec, sample_rewards, weighted_values
from fgrlhf_ray.evaluation import metrics as M
from fgrlhf_ray.evaluation.data import EvalItem
from fgrlhf_ray.types import RolloutBatch, SegmentRewards


RMSpec = RewardSpec  # how one reward model's raw values are weighed (`algo.weighting`)


def _is_correct(seg) -> bool:
    # Segment classifiers label segments; other scorers: a positive value means no error.
    return seg.label == "no_error" if seg.label is not None else seg.value > 0


def summarize(
    *,
    items: Sequence[EvalItem],
    rollout: RolloutBatch,
    verdicts: dict[str, list[SegmentRewards]],
    specs: Sequence[RMSpec],
    relevance: str = "relevance",
    factuality: str = "factuality",
    completeness: str = "completeness",
    nll: Sequence[tuple[float, int]] | None = None,
    preference: tuple[Sequence[float], Sequence[float]] | None = None,
    reference_responses: Sequence[str] | None = None,
    tie_tolerance: float = 1e-6,
    toxicity: Sequence[float] | None = None,
    toxicity_threshold: float = 0.5,
) -> tuple[dict, list[dict]]:
    """(metrics, per-sample rows). `rollout.prompt_index[i]` indexes `items`; every
    per-sample list (verdicts, nll, preference, toxicity) is aligned with the rollout."""
    n = len(rollout)
    for name, v in verdicts.items():
        if len(v) != n:
            raise ValueError(f"summarize: {len(v)} verdicts of {name!r} for {n} samples")
    rows = _sample_rows(rollout)
    out: dict = {"prompts": len({r["prompt_index"] for r in rows}), "samples": n}
    out.update(_rouge(items, rollout, rows))
    out.update(_rewards(verdicts, specs, rows))
    out.update(_rm_ratios(verdicts, specs, relevance=relevance, factuality=factuality, completeness=completeness))
    out.update(_length_and_diversity(rollout, rows))
    if nll is not None:
        out.update(_perplexity(nll, rows))
    if preference is not None:
        out.update(_win_rate(preference, reference_responses, rows, tie_tolerance=tie_tolerance))
    if toxicity is not None:
        out.update(_toxicity(toxicity, rows, threshold=toxicity_threshold))
    return out, rows


# Each helper below computes one group of metrics and adds its per-sample values to `rows`
# (the generations file `summarize` builds): the groups are independent and optional.


def _sample_rows(rollout: RolloutBatch) -> list[dict]:
    """One row per sample; `sample` numbers the samples of each prompt 0, 1, …"""
    rows = [{"prompt": rollout.prompts[i], "prompt_index": rollout.prompt_index[i],
             "response": rollout.responses[i], "response_tokens": len(rollout.response_ids[i]),
             "finish_reason": rollout.finish_reasons[i] if rollout.finish_reasons else None, "rewards": {}}
            for i in range(len(rollout))]
    sample_no: dict[int, int] = {}
    for row in rows:
        row["sample"] = sample_no.get(row["prompt_index"], 0)
        sample_no[row["prompt_index"]] = row["sample"] + 1
    return rows


def _rouge(items: Sequence[EvalItem], rollout: RolloutBatch, rows: list[dict]) -> dict:
    """Rouge-LSum against the prompt's references (prompts without references are skipped)."""
    rouge = []
    for i, row in enumerate(rows):
        refs = items[row["prompt_index"]].references
        if refs:
            row["rouge_lsum_f1"] = M.rouge_lsum_f1(rollout.responses[i], refs)
            rouge.append(row["rouge_lsum_f1"])
    return {"rouge_lsum_f1": M.mean(rouge)} if rouge else {}


def _rewards(verdicts: dict[str, list[SegmentRewards]], specs: Sequence[RewardSpec], rows: list[dict]) -> dict:
    """Weighted, normalised mean reward per RM and in total (`algo.weighting`, as in training)."""
    out: dict = {}
    total = [0.0] * len(rows)
    for spec in specs:
        per = sample_rewards([[s.value for s in v.segments] for v in verdicts[spec.name]],
                             weight=spec.weight, mean=spec.mean, std=spec.std)
        for i, r in enumerate(per):
            rows[i]["rewards"][spec.name] = r
            total[i] += r
        out[f"reward/{spec.name}"] = M.mean(per)
    if specs:
        out["reward/total"] = M.mean(total)
        for i, r in enumerate(total):
            rows[i]["rewards"]["total"] = r
    return out


def _rm_ratios(verdicts: dict[str, list[SegmentRewards]], specs: Sequence[RewardSpec], *, relevance: str,
               factuality: str, completeness: str) -> dict:
    """Paper A's RM-based metrics: shares of no-error segments, normalised completeness."""
    out: dict = {}
    for key, name in (("relevance_ratio", relevance), ("factuality_ratio", factuality)):
        if name in verdicts:
            segs = [v.segments for v in verdicts[name]]
            out[key] = M.pooled_ratio([sum(map(_is_correct, s)) for s in segs], [len(s) for s in segs])
    if completeness in verdicts:
        spec = {s.name: s for s in specs}.get(completeness, RewardSpec(completeness))
        raw = [sum(s.value for s in v.segments) for v in verdicts[completeness]]
        out["completeness_normalized"] = M.mean(weighted_values(raw, mean=spec.mean, std=spec.std).tolist())
    return out


def _length_and_diversity(rollout: RolloutBatch, rows: list[dict]) -> dict:
    out = {"length/tokens": M.mean([len(ids) for ids in rollout.response_ids]),
           "length/words": M.mean([len(r.split()) for r in rollout.responses])}
    groups: dict[int, list[str]] = {}
    for row in rows:
        groups.setdefault(row["prompt_index"], []).append(row["response"])
    for k in (1, 2, 3):
        out[f"dist_{k}"] = M.distinct_n(list(groups.values()), k)
    return out


def _perplexity(nll: Sequence[tuple[float, int]], rows: list[dict]) -> dict:
    if len(nll) != len(rows):
        raise ValueError(f"summarize: {len(nll)} NLLs for {len(rows)} samples")
    for row, (s, t) in zip(rows, nll):
        row["reference_lm_nll"], row["reference_lm_tokens"] = s, t
    return {"perplexity": M.perplexity([s for s, _ in nll], [t for _, t in nll]),
            "perplexity_tokens": sum(t for _, t in nll)}


def _win_rate(preference: tuple[Sequence[float], Sequence[float]], reference_responses: Sequence[str] | None,
              rows: list[dict], *, tie_tolerance: float) -> dict:
    ours, theirs = preference
    wr = M.win_rate(ours, theirs, tie_tolerance=tie_tolerance)
    for i, row in enumerate(rows):
        row["preference"], row["reference_preference"] = ours[i], theirs[i]
        if reference_responses is not None:
            row["reference_response"] = reference_responses[i]
    return {"win_rate": wr["win_rate"], "win_rate/wins": wr["wins"], "win_rate/ties": wr["ties"],
            "win_rate/losses": wr["losses"]}


def _toxicity(toxicity: Sequence[float], rows: list[dict], *, threshold: float) -> dict:
    if len(toxicity) != len(rows):
        raise ValueError(f"summarize: {len(toxicity)} toxicity values for {len(rows)} samples")
    per_prompt: dict[int, list[float]] = {}
    for row, p in zip(rows, toxicity):
        row["toxicity"] = p
        per_prompt.setdefault(row["prompt_index"], []).append(p)
    return M.toxicity_metrics(list(per_prompt.values()), threshold=threshold)


def format_metrics(metrics: dict) -> str:
    """Aligned `name  value` lines for the terminal."""
    width = max((len(k) for k in metrics), default=0)
    lines = []
    for k, v in metrics.items():
        shown = f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"  {k:<{width}}  {shown}")
    return "\n".join(lines)
