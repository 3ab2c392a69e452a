"""Checkpoints that cannot be half-written.

A checkpoint is a folder `step_000010/` holding whatever the learner saved (policy and
critic in HF format, DeepSpeed states) plus `controller.json` (step, sampler position,
KL controller) and `config.yaml` (the effective config). It is written as
`step_000010.tmp/`, renamed into place only when complete, and `latest` (a one-line
file) is replaced atomically last; older checkpoints beyond `keep_last` are deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def begin(root: str | Path, step: int) -> Path:
    """A fresh temporary folder to write the checkpoint of `step` into."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (step_dir_name(step) + ".tmp")
    if tmp.exists():  # left over from an interrupted save
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(root: str | Path, tmp: Path, step: int, *, controller_state: dict, config_yaml: str,
           keep_last: int) -> Path:
    """Finish a checkpoint written into `tmp`: metadata, rename, `latest`, pruning."""
    root = Path(root)
    (tmp / "controller.json").write_text(json.dumps(controller_state, indent=2))
    (tmp / "config.yaml").write_text(config_yaml)
    _fsync_dir(tmp)
    final = root / step_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / "latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first (temporary ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))
             and (p / "controller.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint `latest` points at, else the newest complete one, else None."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "controller.json").is_file():
            return candidate
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
