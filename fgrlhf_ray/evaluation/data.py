"""Evaluation prompts (with optional references) and reference-policy outputs.

Accepted prompt files (`load_eval_items`):

- QA-FEEDBACK-style JSON list (`.json`): prompt in `text`, references in `answer`
  (a string or a list of strings), e.g. `../shared/data/qa_feedback/dev400.json`.
- JSONL (`.jsonl`), one object per line: the prompt in `prompt` (or `text`) — either a
  string, or an object with a `text` field as in RealToxicityPrompts
  (`{"prompt": {"text": "..."}, ...}`) — and optional references in `references` (or
  `answer`), a string or a list of strings.

`prompt_field` / `references_field` override the field names. Bad rows raise
`DataError` naming the file and the item index (JSON) or line (JSONL).

Reference outputs (`load_reference_outputs`) are the generations JSONL that
`fgrlhf eval` writes (`{"prompt", "sample", "response", ...}` per line), or any JSONL with
`prompt` and `response`: the first response of each prompt is the reference's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fgrlhf_ray.errors import DataError


@dataclass
class EvalItem:
    prompt: str
    references: list[str] = field(default_factory=list)


def _read_rows(path: Path, fmt: str) -> list[tuple[str, object]]:
    """[(where, row)] from a JSON list or JSONL file."""
    if not path.is_file():
        raise DataError(f"eval data not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if fmt == "auto":
        fmt = "json" if path.suffix == ".json" or text.lstrip().startswith("[") else "jsonl"
    rows: list[tuple[str, object]] = []
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        rows = [(f"{path}: item {i}", row) for i, row in enumerate(data)]
    elif fmt == "jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
    else:
        raise DataError(f"unknown eval data format {fmt!r}; allowed: auto, json, jsonl")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _pick(row: dict, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in row), None)


def _prompt_of(row: object, where: str, prompt_field: str | None) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    name = prompt_field or _pick(row, ("prompt", "text"))
    if name is None or name not in row:
        raise DataError(f"{where}: no prompt field {prompt_field or 'prompt / text'!r} "
                        f"(fields: {', '.join(sorted(row)) or 'none'})")
    value = row[name]
    if isinstance(value, dict):  # RealToxicityPrompts: {"prompt": {"text": ..., "toxicity": ...}}
        if "text" not in value:
            raise DataError(f"{where}: field {name!r} is an object without 'text' (RealToxicityPrompts format is "
                            '{"prompt": {"text": "..."}})')
        value = value["text"]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the prompt ({name!r}) must be a non-empty string, got {value!r:.60}")
    return value


def _references_of(row: dict, where: str, references_field: str | None) -> list[str]:
    name = references_field or _pick(row, ("references", "answer"))
    if name is None:
        return []
    if name not in row:
        raise DataError(f"{where}: no references field {name!r}")
    value = row[name]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: references ({name!r}) must be a string or a list of strings")
    return [v for v in value if v.strip()]


def load_eval_items(path: str | Path, *, fmt: str = "auto", prompt_field: str | None = None,
                    references_field: str | None = None, limit: int | None = None) -> list[EvalItem]:
    """Prompts (and references) of an eval file; the first `limit` rows if given."""
    rows = _read_rows(Path(path), fmt)
    if limit is not None:
        rows = rows[:limit]
    items = []
    for where, row in rows:
        prompt = _prompt_of(row, where, prompt_field)
        items.append(EvalItem(prompt, _references_of(row, where, references_field)))  # type: ignore[arg-type]
    return items


def load_reference_outputs(path: str | Path) -> dict[str, str]:
    """prompt → the reference policy's (first) response, from a generations JSONL file."""
    out: dict[str, str] = {}
    for where, row in _read_rows(Path(path), "jsonl"):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise DataError(f"{where}: a reference-output row needs string fields 'prompt' and 'response' "
                            "(the generations file of `fgrlhf eval`)")
        out.setdefault(row["prompt"], row["response"])
    return out
