"""Deterministic function scorers for tests, examples and benchmarks (no model weights):
usable as `kind: function` targets, e.g. `target: fgrlhf_ray.serve.testing:word_count_reward`.

`faulty_reward` injects faults for the failure-handling tests:
- a response equal to `FAIL` makes that call raise (the replica itself stays healthy);
- a response equal to `POISON` breaks the replica's process for good: every later call
  raises, the health probe included, so only Serve replacing the replica heals it.
"""

from __future__ import annotations

from collections.abc import Sequence

FAIL = "__fgrlhf_fail_this_call__"
POISON = "__fgrlhf_poison_this_replica__"
_poisoned = False


def word_count_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Sequence reward: words in the response / 10."""
    return [len(r.split()) / 10.0 for r in responses]


def faulty_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Sequence reward len(response) / 100, with the faults described in the module docstring."""
    global _poisoned
    if any(r == POISON for r in responses):
        _poisoned = True
    if _poisoned:
        raise RuntimeError("this replica was poisoned by a test request; only a replica restart heals it")
    if any(r == FAIL for r in responses):
        raise ValueError("a test request asked this call to fail")
    return [len(r) / 100.0 for r in responses]


def build_tiny_reward_models(out_dir, *, head_std: float = 0.3, seed: int = 0, head_seed: int = 3) -> dict[str, str]:
    """Save tiny random reward models (one per neural kind) under `out_dir`, for tests and
    benchmarks: `relevance` (segment classifier, sub-sentence), `completeness` (sequence
    preference with stored normalisation μ = 0.25, σ = 2.0) and `token_level`. Their heads
    are re-drawn with std `head_std` from `head_seed` (3 gives a mix of error / no-error labels
    with the default backbone) so that labels and scores vary. Returns name → folder.
    """
    from pathlib import Path

    import torch

    from fgrlhf_ray.rewards.segment_classifier import SegmentClassifierRM
    from fgrlhf_ray.rewards.sequence_preference import SequencePreferenceRM
    from fgrlhf_ray.rewards.tiny import build_tiny_bert
    from fgrlhf_ray.rewards.token_level import TokenLevelRM

    out = Path(out_dir)
    backbone = build_tiny_bert(out / "backbone", seed=seed)
    paths = {}
    for cls, task in ((SegmentClassifierRM, "relevance"), (SequencePreferenceRM, "completeness"),
                      (TokenLevelRM, "token_level")):
        rm = cls.from_backbone(str(backbone), task=task, max_length=256, seed=seed)
        with torch.no_grad():
            rm.network.head.weight.normal_(0.0, head_std, generator=torch.Generator().manual_seed(head_seed))
        if task == "completeness":
            rm.metadata.normalization = {"mean": 0.25, "std": 2.0}
        paths[task] = str(rm.save(out / task))
    return paths
