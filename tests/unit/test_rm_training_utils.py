"""Training helpers that need no model: split selection, best checkpoint, LR schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgrlhf_ray.data.rm_data import PreferencePair, SplitSpec, group_fingerprint, split_groups
from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards.training import _lr_lambda, _param_groups, detect_format, pick_best, select_split


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


def test_param_groups_give_the_heads_their_own_learning_rate():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
            self.head = torch.nn.Linear(4, 1)
            self.feature_head = torch.nn.Linear(3, 1)
            self.frozen = torch.nn.Linear(2, 2).requires_grad_(False)

    net = Net()
    groups = _param_groups(net, 0.01, 1e-5, 1e-3)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(p.numel() > 0 for p in net.parameters() if p.requires_grad)  # frozen ones left out
    assert by_id[id(net.head.weight)]["lr"] == 1e-3 and by_id[id(net.head.weight)]["weight_decay"] == 0.01
    assert by_id[id(net.feature_head.bias)]["lr"] == 1e-3 and by_id[id(net.feature_head.bias)]["weight_decay"] == 0.0
    assert by_id[id(net.backbone[0].weight)]["lr"] == 1e-5 and by_id[id(net.backbone[1].weight)]["weight_decay"] == 0.0
    assert {g["lr"] for g in _param_groups(net, 0.01, 1e-5)} == {1e-5}  # no head_lr: one rate
