"""Training prompts: loading (QA-FEEDBACK JSON or JSONL) and a resumable, seeded sampler."""

from __future__ import annotations

import json
import random
from pathlib import Path

from fgrlhf_ray.errors import DataError


def load_prompts(path: str | Path, *, format: str = "qa_feedback", prompt_field: str = "text") -> list[str]:
    """Read prompts from a QA-FEEDBACK-style JSON list or a JSONL file.

    Every row must hold a non-empty string in `prompt_field`; a bad row raises
    `DataError` naming the file and the row (JSON: item index; JSONL: line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8")
    prompts: list[str] = []
    if format == "qa_feedback":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
        for index, row in enumerate(rows):
            prompts.append(_prompt_of(row, prompt_field, f"{path}: item {index}"))
    elif format == "jsonl":
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_number}: not valid JSON: {exc.msg}") from None
            prompts.append(_prompt_of(row, prompt_field, f"{path}:{line_number}"))
    else:
        raise DataError(f"unknown prompt format {format!r}; allowed: qa_feedback, jsonl")
    if not prompts:
        raise DataError(f"{path}: no prompts found")
    return prompts


def _prompt_of(row: object, field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    if field not in row:
        raise DataError(f"{where}: missing field {field!r} (fields: {', '.join(sorted(row)) or 'none'})")
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {field!r} must be a non-empty string, got {value!r:.60}")
    return value


class PromptSampler:
    """Draws prompt batches epoch by epoch, each epoch a seeded permutation.

    No prompt is seen twice or skipped within an epoch; a batch that crosses an epoch
    boundary finishes the old epoch then starts the next. `state_dict()` /
    `load_state_dict()` capture the position exactly, for resume.
    """

    def __init__(self, prompts: list[str], *, seed: int, shuffle: bool = True) -> None:
        if not prompts:
            raise ValueError("PromptSampler needs at least one prompt")
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self, size: int) -> list[str]:
        batch: list[str] = []
        while len(batch) < size:
            order = self._order(self.epoch)
            take = min(size - len(batch), len(order) - self.position)
            batch.extend(self.prompts[i] for i in order[self.position:self.position + take])
            self.position += take
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_prompts": len(self.prompts)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_prompts"] != len(self.prompts) or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for {state['num_prompts']} prompts / seed {state['seed']}, "
                f"but this run has {len(self.prompts)} prompts / seed {self.seed}"
            )
        self.epoch, self.position = state["epoch"], state["position"]
