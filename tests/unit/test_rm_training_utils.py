"""Training helpers that need no model: split selection, best checkpoint, LR schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgrlhf_ray.data.rm_data import PreferencePair, SplitSpec, group_fingerprint, split_groups
from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards.training import _lr_lambda, detect_format, pick_best, select_split


def test_select_split_reproduces_the_stored_split():
    pairs = [PreferencePair(f"q{i}", "a", "b") for i in range(50)]
    assign = split_groups([p.group for p in pairs], SplitSpec(test_size=10, dev_size=5, seed=1))
    record = {
        "test_groups": [group_fingerprint(g) for g, s in assign.items() if s == "test"],
        "dev_groups": [group_fingerprint(g) for g, s in assign.items() if s == "dev"],
    }
    test = select_split(pairs, record, "test")
    assert {p.group for p in test} == {g for g, s in assign.items() if s == "test"}
    assert len(select_split(pairs, record, "dev")) == 5
    assert len(select_split(pairs, record, "train")) == 35
    assert select_split(pairs, record, "all") == pairs
    with pytest.raises(ConfigError, match="unknown split"):
        select_split(pairs, record, "validation")


def test_pick_best_prefers_the_metric_then_the_earliest_epoch():
    ck = [(Path(f"e{i}"), {"epoch": i, "dev_metric": m}) for i, m in [(1, 0.5), (2, 0.7), (10, 0.7), (3, 0.6)]]
    assert pick_best(ck)[0] == Path("e2")


def test_lr_schedule_warms_up_then_decays_to_zero():
    f = _lr_lambda(total=10, warmup=2)
    assert [round(f(s), 3) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    assert _lr_lambda(total=4, warmup=0)(0) == 1.0


def test_detect_format():
    assert detect_format("a/b.jsonl", "auto") == "jsonl"
    assert detect_format("a/b.json", "auto") == "qa_feedback"
    assert detect_format("a/b.json", "jsonl") == "jsonl"
