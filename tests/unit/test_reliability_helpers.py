"""Pure reliability helpers: corrupt-checkpoint selection, RNG state round trip, metrics
truncation on resume, fault classification, the memory limit."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fgrlhf_ray.infra import checkpoint
from fgrlhf_ray.infra.reliability import ActorDied, ParticipantFailed
from fgrlhf_ray.infra.metrics import truncate_after
from fgrlhf_ray.infra.reliability import failure_kind, memory_over_limit
from fgrlhf_ray.infra.rng import capture_rng_state, restore_rng_state


def save(root, step):
    tmp = checkpoint.begin(root, step)
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.bin").write_bytes(b"w" * (100 + step))
    return checkpoint.commit(root, tmp, step, controller_state={"step": step}, config_yaml="seed: 1\n", keep_last=5)


def test_manifest_lists_every_file_with_its_size(tmp_path):
    final = save(tmp_path, 1)
    manifest = json.loads((final / checkpoint.MANIFEST).read_text())
    assert manifest["files"]["model/weights.bin"] == 101 and "controller.json" in manifest["files"]
    assert checkpoint.checkpoint_problem(final) is None


def test_truncated_file_makes_latest_fall_back_with_a_warning(tmp_path):
    save(tmp_path, 1)
    second = save(tmp_path, 2)
    (second / "model" / "weights.bin").write_bytes(b"w" * 10)  # cut short (disk full, copy interrupted)
    warnings = []
    assert checkpoint.latest_checkpoint(tmp_path, warn=warnings.append).name == "step_000001"
    assert len(warnings) == 1 and "step_000002" in warnings[0] and "truncated" in warnings[0]


@pytest.mark.parametrize("damage", ["delete_file", "bad_controller_json", "tmp_only", "bad_manifest"])
def test_damaged_newest_checkpoint_is_skipped(tmp_path, damage):
    save(tmp_path, 1)
    if damage == "tmp_only":
        tmp = checkpoint.begin(tmp_path, 2)  # killed before the rename
        (tmp / "controller.json").write_text('{"step": 2}')
    else:
        second = save(tmp_path, 2)
        if damage == "delete_file":
            (second / "model" / "weights.bin").unlink()
        elif damage == "bad_controller_json":
            (second / "controller.json").write_text('{"step": 2')
        else:
            (second / checkpoint.MANIFEST).write_text("not json")
    assert checkpoint.latest_checkpoint(tmp_path, warn=lambda _: None).name == "step_000001"


def test_no_valid_checkpoint_gives_none(tmp_path):
    first = save(tmp_path, 1)
    (first / "controller.json").unlink()
    assert checkpoint.latest_checkpoint(tmp_path, warn=lambda _: None) is None


def test_checkpoint_without_manifest_still_loads(tmp_path):
    old = tmp_path / "step_000004"  # written by an earlier version (no manifest)
    old.mkdir()
    (old / "controller.json").write_text('{"step": 4}')
    assert checkpoint.latest_checkpoint(tmp_path) == old


def test_rng_state_round_trips_through_json():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    state = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3).tolist())
    random.random(), np.random.rand(7), torch.rand(11)
    restore_rng_state(state)
    assert (random.random(), np.random.randn(), np.random.rand(), torch.rand(3).tolist()) == expected


def test_truncate_after_drops_lost_steps_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "x"')
    assert truncate_after(path, 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert truncate_after(path, 2) == 0
    assert truncate_after(tmp_path / "missing.jsonl", 1) == 0


def test_failure_kinds():
    ray_exceptions = pytest.importorskip("ray.exceptions")
    assert failure_kind(ActorDied("x")) == "died"
    assert failure_kind(ray_exceptions.ActorDiedError()) == "died"
    assert failure_kind(ray_exceptions.GetTimeoutError("slow")) == "timeout"
    assert failure_kind(TimeoutError("slow")) == "timeout"
    assert failure_kind(ParticipantFailed(["score:a"], "died", None)) == "died"
    assert failure_kind(ParticipantFailed(["score:a"], "error", ValueError("bug"))) is None
    assert failure_kind(ValueError("a bug")) is None


def test_memory_over_limit():
    reports = {"scorer/a/0": {"rss_bytes": 3 * 2**30}, "reference": {"rss_bytes": 2**29}}
    assert memory_over_limit(reports, None) == {}
    assert memory_over_limit(reports, 2.0) == {"scorer/a/0": 3.0}


def test_an_engine_that_lost_its_weights_counts_as_died():
    from fgrlhf_ray.infra.reliability import EngineWeightsLost

    assert failure_kind(EngineWeightsLost("restarted since the last sync")) == "died"
