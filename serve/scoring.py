"""From the models' raw verdicts to the `/v1/score` reply: weighted totals and per-token
rewards computed by training's own placement code (`fgrlhf_ray.algo.rewards`).

For item i, model m with weight w_m and normalisation (μ_m, σ_m):

    weighted_total[i, m] = Σ_{segments s} w_m · (v_s − μ_m) / σ_m
    weighted_total[i]    = Σ_m weighted_total[i, m]
    token_rewards[i, t]  = Σ_m Σ_{s placed on token t} w_m · (v_s − μ_m) / σ_m

Both come from `place_segment_rewards`: the totals by placing every segment on one
pseudo-token spanning the response, the per-token values with the item's policy-token
offsets — so they equal what the trainer adds to its per-token scores (before the KL
term, which needs policy log-probabilities the server does not have).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fgrlhf_ray.algo.rewards import ScorerOutput, place_segment_rewards
from fgrlhf_ray.serve.schema import ItemResult, ModelScore, SegmentOut
from fgrlhf_ray.types import SegmentRewards


def _outputs(verdicts: Mapping[str, Sequence[SegmentRewards]], weights: Mapping[str, float],
             normalizations: Mapping[str, tuple[float, float]]) -> list[ScorerOutput]:
    out = []
    for name, per_item in verdicts.items():
        mean, std = normalizations[name]
        out.append(ScorerOutput.from_segment_rewards(name, list(per_item), weight=float(weights[name]),
                                                     mean=float(mean), std=float(std)))
    return out


def weighted_totals(
    verdicts: Mapping[str, Sequence[SegmentRewards]],
    responses: Sequence[str],
    *,
    weights: Mapping[str, float],
    normalizations: Mapping[str, tuple[float, float]],
) -> dict[str, list[float]]:
    """Per model, per item: Σ_s w·(v_s − μ)/σ (B floats each)."""
    B = len(responses)
    # One pseudo-token covering the whole response: every segment lands on it, so the
    # placed value is the weighted, normalised sum — computed by the training code path.
    offsets = [[(0, max(len(r), 1))] for r in responses]
    _, per_scorer, _ = place_segment_rewards(
        _outputs(verdicts, weights, normalizations), token_offsets=offsets, action_mask=torch.ones(B, 1)
    )
    return {name: [float(x) for x in t[:, 0]] for name, t in per_scorer.items()}


def token_rewards(
    verdicts: Mapping[str, Sequence[SegmentRewards]],
    token_offsets: Sequence[Sequence[tuple[int, int]]],
    *,
    weights: Mapping[str, float],
    normalizations: Mapping[str, tuple[float, float]],
) -> list[list[float]]:
    """Per item, the weighted score of each policy token (L_i = len(token_offsets[i]) floats)."""
    lengths = [len(o) for o in token_offsets]
    B, T = len(lengths), max(lengths, default=0)
    mask = torch.zeros(B, max(T, 1))
    for i, L in enumerate(lengths):
        mask[i, :L] = 1.0
    scores, _, _ = place_segment_rewards(
        _outputs(verdicts, weights, normalizations), token_offsets=[list(o) for o in token_offsets], action_mask=mask
    )
    return [[float(x) for x in scores[i, :L]] for i, L in enumerate(lengths)]


def build_results(
    verdicts: Mapping[str, Sequence[SegmentRewards]],
    responses: Sequence[str],
    *,
    weights: Mapping[str, float],
    normalizations: Mapping[str, tuple[float, float]],
    return_total: bool = False,
    token_offsets: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> list[ItemResult]:
    """The `results` of a `/v1/score` reply, one `ItemResult` per response, in order.

    `verdicts[name][i]` is model `name`'s `SegmentRewards` for response i. Weighted totals
    are filled when `return_total`; per-token rewards when `token_offsets` is given.
    """
    totals = weighted_totals(verdicts, responses, weights=weights, normalizations=normalizations) if return_total else None
    per_token = (token_rewards(verdicts, token_offsets, weights=weights, normalizations=normalizations)
                 if token_offsets is not None else None)
    results = []
    for i in range(len(responses)):
        scores = {}
        for name, per_item in verdicts.items():
            v = per_item[i]
            scores[name] = ModelScore(
                density=v.density,
                segments=[SegmentOut(char_start=s.char_start, char_end=s.char_end, label=s.label, value=s.value,
                                     probability=s.probability) for s in v.segments],
                raw_total=v.total,
                weighted_total=totals[name][i] if totals is not None else None,
            )
        results.append(ItemResult(
            index=i,
            scores=scores,
            weighted_total=sum(totals[name][i] for name in verdicts) if totals is not None else None,
            token_offsets=[tuple(o) for o in token_offsets[i]] if token_offsets is not None else None,
            token_rewards=per_token[i] if per_token is not None else None,
        ))
    return results
