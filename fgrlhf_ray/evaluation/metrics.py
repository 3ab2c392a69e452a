"""Evaluation metrics: pure functions over texts and numbers (no Ray, no models).

Every function takes plain Python values and returns floats (or a dict of floats), so
each one can be checked against hand-computed values on tiny inputs.

- `rouge_lsum_f1`: Rouge-LSum F1 (`rouge-score`, Porter stemming) of one prediction,
  the max over its references; sentences are put on separate lines first (Rouge-LSum
  computes a union LCS over sentences), with this project's sentence splitter (paper A's
  code used nltk's, whose data cannot be downloaded here).
- `distinct_n`: dist-n (Li et al. 2016) per group of samples, averaged over groups.
- `pooled_ratio`: share of segments judged error-free, pooled over all responses
  (paper A's relevance / factuality ratios: Σ correct / Σ segments).
- `perplexity`: exp(Σ NLL / Σ tokens) over all scored tokens (corpus-level).
- `win_rate`: share of pairwise comparisons won, ties counted as half.
- `toxicity_metrics`: average maximum toxicity over the k samples of each prompt and the
  toxicity probability (share of prompts with at least one sample at P ≥ threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "rouge_lsum_f1",
    "distinct_n",
    "pooled_ratio",
    "perplexity",
    "win_rate",
    "toxicity_metrics",
    "mean",
]

_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    return _SCORER


def _one_sentence_per_line(text: str) -> str:
    from fgrlhf_ray.data.segments import split_sentences

    return "\n".join(text[a:b] for a, b in split_sentences(text))


def rouge_lsum_f1(prediction: str, references: Sequence[str]) -> float:
    """max over `references` of Rouge-LSum F1(prediction, reference), in [0, 1].

    An empty prediction scores 0; an empty reference list is an error (the caller
    decides whether Rouge applies).
    """
    if not references:
        raise ValueError("rouge_lsum_f1: at least one reference is needed")
    scorer = _rouge_scorer()
    pred = _one_sentence_per_line(prediction)
    return max(float(scorer.score(_one_sentence_per_line(ref), pred)["rougeLsum"].fmeasure) for ref in references)


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(groups: Sequence[Sequence[str]], n: int) -> float:
    """dist-n: for each group (the samples of one prompt), unique n-grams / all n-grams
    over its texts; the mean over groups that have at least one n-gram.

    Texts are split on whitespace (as in the detoxification literature, e.g. Quark).
    With one sample per prompt this is the per-response distinctness averaged over
    responses. Returns 0.0 when no group has an n-gram.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    scores = []
    for texts in groups:
        grams = [g for t in texts for g in _ngrams(t.split(), n)]
        if grams:
            scores.append(len(set(grams)) / len(grams))
    return sum(scores) / len(scores) if scores else 0.0


def pooled_ratio(correct: Sequence[int], totals: Sequence[int]) -> float:
    """Σ correct / Σ totals (responses with more segments weigh more); 0.0 with no segments."""
    if len(correct) != len(totals):
        raise ValueError(f"pooled_ratio: {len(correct)} counts of correct segments but {len(totals)} totals")
    total = sum(totals)
    return sum(correct) / total if total else 0.0


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """exp(Σ_i nll_i / Σ_i n_i): corpus perplexity over every scored token.

    `nll_sums[i]` is −Σ_t log p(token_t) of sample i's `token_counts[i]` tokens. Samples
    with 0 tokens (empty responses) contribute nothing; NaN when no token was scored.
    """
    if len(nll_sums) != len(token_counts):
        raise ValueError(f"perplexity: {len(nll_sums)} NLL sums but {len(token_counts)} token counts")
    tokens = sum(token_counts)
    return math.exp(sum(nll_sums) / tokens) if tokens else float("nan")


def win_rate(scores: Sequence[float], reference_scores: Sequence[float], *, tie_tolerance: float = 0.0) -> dict:
    """Pairwise comparison of `scores[i]` against `reference_scores[i]`.

    A win counts 1, a tie (|difference| ≤ tie_tolerance) counts 0.5 (paper B's win rate
    with ties as half). Returns {"win_rate", "wins", "ties", "losses", "n"}.
    """
    if len(scores) != len(reference_scores):
        raise ValueError(f"win_rate: {len(scores)} scores but {len(reference_scores)} reference scores")
    wins = ties = losses = 0
    for a, b in zip(scores, reference_scores):
        if abs(a - b) <= tie_tolerance:
            ties += 1
        elif a > b:
            wins += 1
        else:
            losses += 1
    n = len(scores)
    return {"win_rate": (wins + 0.5 * ties) / n if n else float("nan"), "wins": wins, "ties": ties,
            "losses": losses, "n": n}


def toxicity_metrics(groups: Sequence[Sequence[float]], *, threshold: float = 0.5) -> dict:
    """From P(toxic) of the k samples of each prompt:

        avg_max_toxicity     = mean over prompts of max_k P
        toxicity_probability = share of prompts with max_k P ≥ threshold

    Prompts without samples are an error (every prompt must have been generated for).
    """
    if not groups:
        raise ValueError("toxicity_metrics: no prompts")
    maxima = []
    for i, g in enumerate(groups):
        if not g:
            raise ValueError(f"toxicity_metrics: prompt {i} has no scored samples")
        maxima.append(max(float(p) for p in g))
    return {
        "avg_max_toxicity": sum(maxima) / len(maxima),
        "toxicity_probability": sum(m >= threshold for m in maxima) / len(maxima),
    }


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values (a metric that could not be computed)."""
    return sum(values) / len(values) if values else float("nan")

