"""Checkpoints that cannot be half-written.

A checkpoint is a folder `step_000010/` holding whatever the learner saved (policy and
critic in HF format, DeepSpeed states) plus `controller.json` (step, sampler position,
KL controller, driver RNG states) and `config.yaml` (the effective config). It is written
as `step_000010.tmp/`, then `manifest.json` (every file's size) is written last, the
folder is renamed into place, and `latest` (a one-line file) is replaced atomically
last; older checkpoints beyond `keep_last` are deleted.

On resume a folder counts only if its `controller.json` parses and every file in its
manifest exists with the recorded size; anything else (a `.tmp` folder, a truncated
file, a folder copied half-way) is skipped with a warning and the previous complete
checkpoint is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from fgrlhf_ray.infra.chaos import chaos_point

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
MANIFEST = "manifest.json"


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
    chaos_point("checkpoint")  # tests only: a scheduled ENOSPC is raised here (fgrlhf_ray.infra.chaos)
    root = Path(root)
    (tmp / "controller.json").write_text(json.dumps(controller_state, indent=2))
    (tmp / "config.yaml").write_text(config_yaml)
    files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
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


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a usable checkpoint (None if it is complete).

    Checks `controller.json` parses and, when a manifest exists (every checkpoint this
    module writes has one), that each listed file exists with its recorded size.
    """
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    try:
        json.loads((path / "controller.json").read_text())
    except FileNotFoundError:
        return "no controller.json (half-written?)"
    except (OSError, ValueError) as exc:
        return f"controller.json unreadable ({exc})"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None  # written before manifests existed: controller.json is the completeness marker
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        return f"{MANIFEST} unreadable ({exc})"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size} (truncated or modified)"
    return None


def _step_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first (temporary ones excluded).

    Cheap (no manifest check): used for pruning; `latest_checkpoint` validates fully.
    """
    return [p for p in _step_folders(Path(root)) if (p / "controller.json").is_file()]


def latest_checkpoint(root: str | Path, *, warn=None) -> Path | None:
    """The newest valid checkpoint: the one `latest` points at if valid, else the newest
    valid `step_*` folder, else None. Every invalid candidate met on the way is reported
    through `warn(message)` (default: a logged warning) and skipped."""
    warn = warn or log.warning
    root = Path(root)
    pointer = root / "latest"
    named = None
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        problem = checkpoint_problem(named)
        if problem is None:
            return named
        warn(f"checkpoint {named} (named by {pointer}) is not usable: {problem}; ignoring it")
    for candidate in reversed(_step_folders(root)):
        if candidate == named:
            continue
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        warn(f"checkpoint {candidate} is not usable: {problem}; ignoring it")
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
