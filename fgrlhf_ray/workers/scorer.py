"""What a scorer actor does in its process: score its shard of a rollout.

The scorer itself is built where it runs, by `fgrlhf_ray.rewards.factory.build_scorer`.
"""

from __future__ import annotations

from fgrlhf_ray.types import RolloutBatch, SegmentRewards


def score_rollout(scorer, rollout: RolloutBatch, *, start: int = 0, stop: int | None = None) -> list[SegmentRewards]:
    """Score samples `[start, stop)` of a rollout (a replica's shard)."""
    stop = len(rollout) if stop is None else stop
    return scorer.score(rollout.prompts[start:stop], rollout.responses[start:stop])
