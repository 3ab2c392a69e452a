"""Per-step metrics: appended to `metrics.jsonl` (resume appends) and TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    """Writes one JSON object per step to `<dir>/metrics.jsonl`, plus TensorBoard if enabled."""

    def __init__(self, directory: str | Path, *, tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.directory / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def append(self, filename: str, record: dict) -> None:
        """Append one JSON record to `<dir>/<filename>` (e.g. warnings.jsonl, audit.jsonl)."""
        with (self.directory / filename).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_after(path: str | Path, step: int) -> int:
    """Drop the records of `path` whose step is greater than `step` (atomically); returns how many.

    On resume from the checkpoint of `step`, rows of later steps belong to work that was
    lost with the interrupted run; without them the file holds every step exactly once.
    Blank lines and a line cut short by a kill are dropped too.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = [line for line in lines if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
    dropped = len(lines) - len(keep)
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        tmp.replace(path)
    return dropped


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):  # a line cut short by a kill
        return None
