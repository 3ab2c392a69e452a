"""Reward-model training examples and their JSONL formats (bring your own data).

Three example types, one per reward-model family:

- `SegmentExample` — a response cut into segments, each labelled error / no-error
  (relevance and factuality RMs, `SegmentClassifierRM`).
- `PreferencePair` — a prompt with a preferred and a rejected response (completeness and
  holistic RMs, `SequencePreferenceRM`).
- `EditPair` — a response and its minimal edit (token-level RM, `TokenLevelRM`; a
  sequence RM can also learn edited ≻ original from them).

JSONL formats (one JSON object per line; blank lines are skipped; unknown keys are
errors so that typos do not silently drop data):

Segment examples (``read_segment_jsonl``)::

    {"prompt": "question: Who ...? context: wikipage: ... text: ...",
     "response": "It was X. It was founded in 1820.",
     "segments": [{"start": 0, "end": 9, "label": "error"},
                  {"start": 10, "end": 33, "label": "no_error"}]}

  or, instead of ``segments``, ``"error_spans": [{"start": 0, "end": 9}]``: the
  response is then split with the RM's own splitter (sentences or sub-sentences) and
  each segment overlapping an error span is labelled error. ``label`` accepts
  ``"error"`` / ``"no_error"`` / ``1`` / ``0`` / ``null`` (null: keep the segment in
  the input but do not train on it). Offsets are Python string indices (Unicode code
  points) into ``response``, ``[start, end)``.

Preference pairs (``read_preference_jsonl``)::

    {"prompt": "...", "chosen": "the better response", "rejected": "the worse one"}

Edit pairs (``read_edit_jsonl``)::

    {"prompt": "...", "original": "model response", "edited": "minimally corrected response"}

Every row may carry an optional ``"group"`` string: rows sharing a group always land in
the same train/dev/test split (default group: the prompt). A malformed row raises
`DataError` naming the file, the 1-based line and the problem.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fgrlhf_ray.errors import DataError

logger = logging.getLogger(__name__)

#: Label values of a segment: 1 = error, 0 = no error, None = not trained on.
ERROR, NO_ERROR = 1, 0
SegmentDensity = Literal["sentence", "sub_sentence"]


@dataclass
class SegmentExample:
    """One response with a label per segment (relevance / factuality RMs).

    `spans[i]` is the `[start, end)` character span of segment i in `response`;
    `labels[i]` is 1 (error), 0 (no error) or None (kept in the input, not trained on).
    """

    prompt: str
    response: str
    spans: list[tuple[int, int]]
    labels: list[int | None]
    group: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spans = [(int(a), int(b)) for a, b in self.spans]
        if len(self.spans) != len(self.labels):
            raise ValueError(f"SegmentExample: {len(self.spans)} spans but {len(self.labels)} labels")
        if not self.group:
            self.group = self.prompt


@dataclass
class PreferencePair:
    """`chosen` is preferred over `rejected` for `prompt`."""

    prompt: str
    chosen: str
    rejected: str
    group: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.prompt


@dataclass
class EditPair:
    """`edited` is a minimal correction of `original` (paper B); edited ≻ original."""

    prompt: str
    original: str
    edited: str
    group: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.prompt

    def as_preference(self) -> PreferencePair:
        return PreferencePair(prompt=self.prompt, chosen=self.edited, rejected=self.original, group=self.group)


# ----------------------------------------------------------------------- span helpers


def overlaps_non_space(text: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """True when spans `a` and `b` of `text` share at least one non-whitespace character.

    Whitespace-only contact (a span ending in a space that the other starts after) does
    not count, so an error span ending at a sentence's trailing space does not taint the
    next sentence.
    """
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return any(not text[i].isspace() for i in range(lo, hi))


def label_segments(
    text: str,
    spans: Sequence[tuple[int, int]],
    error_spans: Sequence[tuple[int, int]],
    ignore_spans: Sequence[tuple[int, int]] = (),
) -> list[int | None]:
    """Label each segment: 1 if it overlaps an error span, else None if it overlaps an
    ignore span, else 0. Overlap is judged on non-whitespace characters."""
    labels: list[int | None] = []
    for span in spans:
        if any(overlaps_non_space(text, span, e) for e in error_spans):
            labels.append(ERROR)
        elif any(overlaps_non_space(text, span, g) for g in ignore_spans):
            labels.append(None)
        else:
            labels.append(NO_ERROR)
    return labels


def segment_splitter(density: SegmentDensity, *, min_words: int = 5) -> Callable[[str], list[tuple[int, int]]]:
    """The splitter a segment RM of this density uses (shared by data and scoring)."""
    from fgrlhf_ray.data.segments import split_sentences, split_sub_sentences

    if density == "sentence":
        return split_sentences
    if density == "sub_sentence":
        return lambda text: split_sub_sentences(text, min_words=min_words)
    raise ValueError(f"segment density must be 'sentence' or 'sub_sentence', got {density!r}")


# ------------------------------------------------------------------------ JSONL core


def _iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if not p.is_file():
        raise DataError(f"{p}: not a file")
    try:
        fh = p.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{p}: cannot open ({exc})") from None
    with fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{p}: line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{p}: line {lineno}: expected a JSON object, got {type(row).__name__}")
                yield lineno, row
        except UnicodeDecodeError as exc:
            raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _check_keys(path, lineno: int, row: dict, required: Iterable[str], optional: Iterable[str]) -> None:
    required = list(required)
    allowed = set(required) | set(optional)
    missing = [k for k in required if k not in row]
    if missing:
        raise DataError(
            f"{path}: line {lineno}: missing field(s) {', '.join(repr(m) for m in missing)} "
            f"(a row needs {', '.join(repr(k) for k in required)})"
        )
    unknown = sorted(set(row) - allowed)
    if unknown:
        raise DataError(
            f"{path}: line {lineno}: unknown field(s) {', '.join(repr(u) for u in unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _str_field(path, lineno: int, row: dict, key: str, *, allow_empty: bool = True) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataError(f"{path}: line {lineno}: field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{path}: line {lineno}: field {key!r} is empty")
    return value


def _group(path, lineno: int, row: dict, default: str) -> str:
    if "group" not in row:
        return default
    return _str_field(path, lineno, row, "group", allow_empty=False)


def _parse_span(path, lineno: int, where: str, obj: Any, text_len: int) -> tuple[int, int]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: line {lineno}: {where} must be an object with 'start' and 'end'")
    start, end = obj.get("start"), obj.get("end")
    if not isinstance(start, int) or isinstance(start, bool) or not isinstance(end, int) or isinstance(end, bool):
        raise DataError(f"{path}: line {lineno}: {where}: 'start' and 'end' must be integers, got {start!r}, {end!r}")
    if not 0 <= start < end <= text_len:
        raise DataError(
            f"{path}: line {lineno}: {where}: span [{start}, {end}) is outside the response "
            f"(need 0 <= start < end <= {text_len})"
        )
    return start, end


_LABELS = {"error": ERROR, "no_error": NO_ERROR, 1: ERROR, 0: NO_ERROR, None: None}


def read_segment_jsonl(path: str | os.PathLike, *, density: SegmentDensity, min_words: int = 5) -> list[SegmentExample]:
    """Read segment examples (format in the module docstring).

    `density` picks the splitter used for rows that give `error_spans` instead of
    explicit `segments`. Rows with an empty response are skipped and counted in the log.
    """
    split = segment_splitter(density, min_words=min_words)
    examples: list[SegmentExample] = []
    empty = 0
    for lineno, row in _iter_jsonl(path):
        _check_keys(path, lineno, row, ["prompt", "response"], ["segments", "error_spans", "group", "meta"])
        prompt = _str_field(path, lineno, row, "prompt")
        response = _str_field(path, lineno, row, "response")
        has_segments, has_errors = "segments" in row, "error_spans" in row
        if has_segments == has_errors:
            raise DataError(f"{path}: line {lineno}: give exactly one of 'segments' or 'error_spans'")
        if has_segments:
            segs = row["segments"]
            if not isinstance(segs, list):
                raise DataError(f"{path}: line {lineno}: 'segments' must be a list")
            spans, labels = [], []
            for i, seg in enumerate(segs):
                spans.append(_parse_span(path, lineno, f"segments[{i}]", seg, len(response)))
                raw = seg.get("label", "missing")
                if isinstance(raw, bool) or raw not in _LABELS:
                    raise DataError(
                        f"{path}: line {lineno}: segments[{i}].label must be 'error', 'no_error', 1, 0 or null, got {raw!r}"
                    )
                labels.append(_LABELS[raw])
            for i in range(1, len(spans)):
                if spans[i][0] < spans[i - 1][1]:
                    raise DataError(
                        f"{path}: line {lineno}: segments[{i}] starts at {spans[i][0]}, before segments[{i - 1}] "
                        f"ends ({spans[i - 1][1]}); segments must be ordered and non-overlapping"
                    )
        else:
            errs = row["error_spans"]
            if not isinstance(errs, list):
                raise DataError(f"{path}: line {lineno}: 'error_spans' must be a list")
            error_spans = [_parse_span(path, lineno, f"error_spans[{i}]", e, len(response)) for i, e in enumerate(errs)]
            spans = split(response)
            labels = label_segments(response, spans, error_spans)
        if not spans:
            empty += 1
            continue
        examples.append(
            SegmentExample(
                prompt=prompt,
                response=response,
                spans=spans,
                labels=labels,
                group=_group(path, lineno, row, prompt),
                meta=row.get("meta") or {},
            )
        )
    if empty:
        logger.warning("%s: skipped %d row(s) with an empty response (no segments)", path, empty)
    logger.info("%s: read %d segment example(s)", path, len(examples))
    return examples


def read_preference_jsonl(path: str | os.PathLike) -> list[PreferencePair]:
    """Read preference pairs (format in the module docstring). Rows whose two responses
    are identical are skipped and counted in the log (they carry no preference)."""
    pairs: list[PreferencePair] = []
    identical = 0
    for lineno, row in _iter_jsonl(path):
        _check_keys(path, lineno, row, ["prompt", "chosen", "rejected"], ["group", "meta"])
        prompt = _str_field(path, lineno, row, "prompt")
        chosen = _str_field(path, lineno, row, "chosen")
        rejected = _str_field(path, lineno, row, "rejected")
        if chosen == rejected:
            identical += 1
            continue
        pairs.append(PreferencePair(prompt, chosen, rejected, _group(path, lineno, row, prompt), row.get("meta") or {}))
    if identical:
        logger.warning("%s: skipped %d pair(s) whose chosen and rejected responses are identical", path, identical)
    logger.info("%s: read %d preference pair(s)", path, len(pairs))
    return pairs


def read_edit_jsonl(path: str | os.PathLike) -> list[EditPair]:
    """Read minimal-edit pairs (format in the module docstring). Rows whose edit changes
    nothing are skipped and counted in the log."""
    pairs: list[EditPair] = []
    unchanged = 0
    for lineno, row in _iter_jsonl(path):
        _check_keys(path, lineno, row, ["prompt", "original", "edited"], ["group", "meta"])
        prompt = _str_field(path, lineno, row, "prompt")
        original = _str_field(path, lineno, row, "original")
        edited = _str_field(path, lineno, row, "edited")
        if original == edited:
            unchanged += 1
            continue
        pairs.append(EditPair(prompt, original, edited, _group(path, lineno, row, prompt), row.get("meta") or {}))
    if unchanged:
        logger.warning("%s: skipped %d pair(s) whose edited response equals the original", path, unchanged)
    logger.info("%s: read %d edit pair(s)", path, len(pairs))
    return pairs


def write_jsonl(path: str | os.PathLike, examples: Iterable[SegmentExample | PreferencePair | EditPair]) -> int:
    """Write examples in the JSONL format their reader accepts; returns the row count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("w", encoding="utf-8") as fh:
        for ex in examples:
            if isinstance(ex, SegmentExample):
                row: dict[str, Any] = {
                    "prompt": ex.prompt,
                    "response": ex.response,
                    "segments": [
                        {"start": a, "end": b, "label": {ERROR: "error", NO_ERROR: "no_error", None: None}[lab]}
                        for (a, b), lab in zip(ex.spans, ex.labels)
                    ],
                }
            elif isinstance(ex, PreferencePair):
                row = {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}
            elif isinstance(ex, EditPair):
                row = {"prompt": ex.prompt, "original": ex.original, "edited": ex.edited}
            else:
                raise TypeError(f"write_jsonl: cannot write {type(ex).__name__}")
            if ex.group != ex.prompt:
                row["group"] = ex.group
            if ex.meta:
                row["meta"] = ex.meta
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitSpec:
    """How examples are split by group: `test_size` groups are held out (never seen in
    training), `dev_size` more select the best epoch; the rest train. Sizes are counts
    (int >= 1) or fractions (0 < float < 1) of the groups."""

    test_size: float = 0
    dev_size: float = 0.1
    seed: int = 0


def _count(size: float, n: int) -> int:
    if size <= 0:
        return 0
    if size < 1:
        return max(1, int(round(size * n)))
    return int(size)


def split_groups(groups: Sequence[str], spec: SplitSpec) -> dict[str, str]:
    """Assign each distinct group to "train", "dev" or "test" (seeded, order-independent).

    Groups are sorted before the seeded shuffle, so the assignment depends only on the
    set of groups and the seed, not on the file order.
    """
    import random

    distinct = sorted(set(groups))
    n_test, n_dev = _count(spec.test_size, len(distinct)), _count(spec.dev_size, len(distinct))
    if n_test + n_dev >= len(distinct):
        raise DataError(
            f"split: test_size={spec.test_size} and dev_size={spec.dev_size} leave no training groups "
            f"out of {len(distinct)} (groups are questions/prompts); lower them"
        )
    rng = random.Random(spec.seed)
    rng.shuffle(distinct)
    out = {}
    for i, g in enumerate(distinct):
        out[g] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    return out


def group_fingerprint(group: str) -> str:
    """Short stable hash of a group key (stored with a model to reproduce its split)."""
    import hashlib

    return hashlib.sha1(group.encode("utf-8")).hexdigest()[:16]
