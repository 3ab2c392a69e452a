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
