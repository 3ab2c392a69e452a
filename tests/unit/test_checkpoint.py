"""Atomic checkpoint folders: temp + rename, `latest` pointer, pruning, half-written ignored."""

from __future__ import annotations

from fgrlhf_ray.infra import checkpoint


def save(root, step, keep_last=2):
    tmp = checkpoint.begin(root, step)
    (tmp / "weights.bin").write_bytes(b"x" * step)
    return checkpoint.commit(root, tmp, step, controller_state={"step": step}, config_yaml="seed: 1\n",
                             keep_last=keep_last)


def test_commit_renames_and_points_latest(tmp_path):
    final = save(tmp_path, 5)
    assert final.name == "step_000005" and not (tmp_path / "step_000005.tmp").exists()
    assert checkpoint.latest_checkpoint(tmp_path) == final
    assert (final / "controller.json").read_text().strip().startswith("{")


def test_keep_last_prunes_oldest(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step_000003", "step_000004"]


def test_half_written_checkpoint_is_ignored(tmp_path):
    save(tmp_path, 1)
    tmp = checkpoint.begin(tmp_path, 2)  # crash before commit
    (tmp / "weights.bin").write_bytes(b"partial")
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000001"
    # A folder renamed but missing its metadata is not complete either.
    (tmp_path / "step_000003").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000001"


def test_stale_latest_pointer_falls_back(tmp_path):
    save(tmp_path, 1)
    (tmp_path / "latest").write_text("step_000099\n")
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000001"
    assert checkpoint.latest_checkpoint(tmp_path / "nothing") is None
