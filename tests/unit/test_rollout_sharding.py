"""Fast tests of RolloutGroup's driver-side logic (no Ray cluster, no vLLM engine)."""

from __future__ import annotations

import os

import pytest

from fgrlhf_ray.actors.rollout import contiguous_shards, merge_rollouts
from fgrlhf_ray.workers.rollout import resolve_cpu_bind
from fgrlhf_ray.types import RolloutBatch


@pytest.mark.parametrize("n_items,n_shards", [(0, 2), (1, 2), (5, 2), (64, 2), (7, 3), (3, 5)])
def test_contiguous_shards_cover_in_order_and_balance(n_items, n_shards):
    shards = contiguous_shards(n_items, n_shards)
    flat = [i for lo, hi in shards for i in range(lo, hi)]
    assert flat == list(range(n_items))
    sizes = [hi - lo for lo, hi in shards]
    assert all(s > 0 for s in sizes) and len(sizes) <= n_shards
    if sizes:
        assert max(sizes) - min(sizes) <= 1


def test_merge_rollouts_concatenates_all_fields():
    def part(idx):
        return RolloutBatch(
            [f"p{idx}"], [[idx]], [f"r{idx}"], [[idx, 2]], [[-0.1, -0.2]], [idx], ["stop"]
        )

    merged = merge_rollouts([part(0), part(3)])
    assert merged.prompts == ["p0", "p3"] and merged.prompt_index == [0, 3]
    assert merged.response_ids == [[0, 2], [3, 2]] and merged.finish_reasons == ["stop", "stop"]
    assert len(merged) == 2


def test_resolve_cpu_bind_spread_and_passthrough():
    cpus = sorted(os.sched_getaffinity(0))
    slices = [resolve_cpu_bind(f"spread:{i}/{len(cpus)}") for i in range(len(cpus))]
    assert slices == [str(c) for c in cpus]  # one core each, all different
    assert resolve_cpu_bind("spread:0/1") == ",".join(map(str, cpus))
    assert resolve_cpu_bind("auto") == "auto" and resolve_cpu_bind("0-3|4-7") == "0-3|4-7"
    with pytest.raises(ValueError, match="spread:i/N"):
        resolve_cpu_bind("spread:2/2")
    with pytest.raises(ValueError, match="TP=1"):
        resolve_cpu_bind("spread:0/2", tensor_parallel_size=2)
