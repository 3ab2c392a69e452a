"""QA-FEEDBACK (paper A) → reward-model training examples.

`load_qa_feedback(path)` reads a feedback file (a JSON list; schema in
`../shared/data/qa_feedback/README.md`) and validates every row; the mapping functions
turn records into examples for each reward model, following paper A's mapping:

(a) `relevance_examples` — sub-sentences of ``prediction 1`` (``split_sub_sentences``,
    5 words minimum); a sub-sentence is an error when it shares a non-whitespace
    character with an Irrelevant, Redundant or Incoherent span (C1). Input: the
    question only (the model drops the passages).
(b) `factuality_examples` — sentences of ``prediction 1`` (``split_sentences``); error
    when overlapping a Wrong-Grounding or Unverifiable span (C2), otherwise no-error
    (about 17% of sentences are errors). With `ignore_relevance_error_sentences=True`
    (paper A's released code), a sentence overlapping only relevance errors is kept in
    the input but not trained on (label None): paper A's annotators did not judge the
    facts of text they had already marked irrelevant. The prompt carries the passages.
(c) `completeness_pairs` — pairs of the four predictions ordered by how much of the
    required information they cover (C3). Our rule (paper A's released code does the
    same in spirit, with a different matcher):

    1. *Grounding.* A text's sub-sentence is grounded in the passage sentence with
       the highest word containment |words(sub) ∩ words(sent)| / |words(sub)|
       (lower-cased ``\\w+`` words, multiset intersection), if that is at least
       `min_containment` (0.8); otherwise it is grounded nowhere.
    2. *Required information* I = sentences grounding the annotator's
       ``corrected-prediction`` ∪ sentences listed as Missing-Answer or
       Missing-Major-Auxiliary − sentences listed as Missing-Minor-Auxiliary
       (minor details must not decide completeness).
    3. *Coverage* of a prediction = |grounded(prediction) ∩ I| / |I|.
    4. For each of the 6 prediction pairs, the one with higher coverage is preferred;
       equal coverage is a tie and is skipped. Questions with an empty I are skipped.

(d) `holistic_pairs` — the six human ``preference`` labels (1 = first preferred,
    2 = second); ties (0) are skipped.
(e) `edit_pairs` — (``prediction 1``, ``corrected-prediction``) minimal-edit pairs;
    pairs where the correction changes nothing are skipped.

Every skip is counted and logged, and written into the optional `stats` dict.
Offsets in the file are Python string indices (code points) into ``prediction 1``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgrlhf_ray.data.rm_data import (
    EditPair,
    PreferencePair,
    SegmentExample,
    label_segments,
    segment_splitter,
)
from fgrlhf_ray.errors import DataError

logger = logging.getLogger(__name__)

RELEVANCE_ERRORS = ("Irrelevant", "Redundant", "Incoherent")
FACTUALITY_ERRORS = ("Wrong-Grounding", "Unverifiable")
ERROR_TYPES = RELEVANCE_ERRORS + FACTUALITY_ERRORS
MISSING_TYPES = ("Missing-Answer", "Missing-Major-Auxiliary", "Missing-Minor-Auxiliary")
#: Pair order of the `preference` list: (1v2, 1v3, 1v4, 2v3, 2v4, 3v4), 1-based predictions.
PREFERENCE_PAIRS = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))


@dataclass(frozen=True)
class ErrorSpan:
    type: str
    start: int
    end: int


@dataclass(frozen=True)
class MissingInfo:
    type: str
    passage_id: int  # 1-based index into `passages`
    sentence_ids: tuple[int, ...]  # 1-based indices into that passage's sentences


@dataclass
class QAFeedbackRecord:
    """One validated row of a QA-FEEDBACK file.

    `passages[i]` is `[title, sentence_1, sentence_2, ...]`; `predictions[k]` is
    ``prediction k+1``. Feedback fields are None when the row has no `feedback`.
    """

    source: str
    row: int  # 1-based position in the file's list
    question: str
    passages: list[list[str]]
    predictions: list[str]
    errors: list[ErrorSpan] | None = None
    missing: list[MissingInfo] | None = None
    corrected: str | None = None
    preference: list[int] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return format_qa_prompt(self.question, self.passages)

    def where(self) -> str:
        return f"{self.source}: row {self.row}"


def format_qa_prompt(question: str, passages: list[list[str]]) -> str:
    """The policy prompt of paper A's QA task (the same text as ``dev400.json``'s `text`):
    ``question: Q context: wikipage: T text: s1 s2 ... | wikipage: T2 text: ...``."""
    ctx = " | ".join(f"wikipage: {p[0]} text: {' '.join(p[1:])}" for p in passages)
    return f"question: {question} context: {ctx}" if ctx else f"question: {question}"


# ----------------------------------------------------------------------------- load


def _fail(source: str, row: int, msg: str) -> DataError:
    return DataError(f"{source}: row {row}: {msg}")


def _as_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_record(source: str, row: int, obj: Any) -> QAFeedbackRecord:
    """One validated row; `DataError` "{source}: row {row}: problem" on the first problem."""
    if not isinstance(obj, dict):
        raise _fail(source, row, f"expected an object, got {type(obj).__name__}")
    q = obj.get("question")
    if not isinstance(q, str) or not q.strip():
        raise _fail(source, row, "'question' must be a non-empty string")
    passages = _parse_passages(source, row, obj.get("passages", []))
    predictions = _parse_predictions(source, row, obj)
    rec = QAFeedbackRecord(source=source, row=row, question=q, passages=passages, predictions=predictions)
    fb = obj.get("feedback")
    if fb is not None:
        if not isinstance(fb, dict):
            raise _fail(source, row, "'feedback' must be an object")
        rec.errors = _parse_error_spans(source, row, fb.get("errors", []), predictions[0])
        rec.missing = _parse_missing_info(source, row, fb.get("missing-info", []), passages)
        corrected = fb.get("corrected-prediction")
        if corrected is not None and not isinstance(corrected, str):
            raise _fail(source, row, "feedback.corrected-prediction must be a string")
        rec.corrected = corrected
    pref = obj.get("preference")
    if pref is not None:
        rec.preference = _parse_preference(source, row, pref, len(predictions))
    return rec


def _parse_passages(source: str, row: int, passages: Any) -> list[list[str]]:
    """A row's 'passages': a list of non-empty [title, sentence, ...] string lists (checked, not copied)."""
    if not isinstance(passages, list):
        raise _fail(source, row, "'passages' must be a list of [title, sentence, ...] lists")
    for i, p in enumerate(passages):
        if not isinstance(p, list) or not p or not all(isinstance(s, str) for s in p):
            raise _fail(source, row, f"passages[{i}] must be a non-empty list of strings [title, sentence, ...]")
    return passages


def _parse_predictions(source: str, row: int, obj: dict) -> list[str]:
    """The strings 'prediction 1', 'prediction 2', ... up to the first missing number (at least one)."""
    predictions: list[str] = []
    k = 1
    while f"prediction {k}" in obj:
        pred = obj[f"prediction {k}"]
        if not isinstance(pred, str):
            raise _fail(source, row, f"'prediction {k}' must be a string, got {type(pred).__name__}")
        predictions.append(pred)
        k += 1
    if not predictions:
        raise _fail(source, row, "no 'prediction 1' field")
    return predictions


def _parse_error_spans(source: str, row: int, errors: Any, pred1: str) -> list[ErrorSpan]:
    """feedback.errors: typed [start, end) character spans inside 'prediction 1' (`pred1`)."""
    if not isinstance(errors, list):
        raise _fail(source, row, "feedback.errors must be a list")
    out = []
    for i, e in enumerate(errors):
        where = f"feedback.errors[{i}]"
        if not isinstance(e, dict):
            raise _fail(source, row, f"{where} must be an object")
        etype = e.get("error type")
        if etype not in ERROR_TYPES:
            raise _fail(source, row, f"{where}: unknown 'error type' {etype!r} (known: {', '.join(ERROR_TYPES)})")
        s, t = e.get("start"), e.get("end")
        if not (_as_int(s) and _as_int(t)):
            raise _fail(source, row, f"{where}: 'start' and 'end' must be integers, got {s!r}, {t!r}")
        if not 0 <= s < t <= len(pred1):
            raise _fail(
                source, row,
                f"{where}: span [{s}, {t}) is outside 'prediction 1' (length {len(pred1)}); "
                "offsets are character (code point) indices",
            )
        out.append(ErrorSpan(etype, s, t))
    return out


def _parse_missing_info(source: str, row: int, missing: Any, passages: list[list[str]]) -> list[MissingInfo]:
    """feedback.missing-info: typed (1-based passage, sentence indices) references into `passages`."""
    if not isinstance(missing, list):
        raise _fail(source, row, "feedback.missing-info must be a list")
    out = []
    for i, m in enumerate(missing):
        where = f"feedback.missing-info[{i}]"
        if not isinstance(m, dict):
            raise _fail(source, row, f"{where} must be an object")
        mtype = m.get("error type")
        if mtype not in MISSING_TYPES:
            raise _fail(source, row, f"{where}: unknown 'error type' {mtype!r} (known: {', '.join(MISSING_TYPES)})")
        pid, sids = m.get("passage_id"), m.get("sentence_id")
        if not _as_int(pid) or not 1 <= pid <= len(passages):
            raise _fail(source, row, f"{where}: passage_id {pid!r} is not in 1..{len(passages)}")
        if not isinstance(sids, list) or not all(_as_int(x) for x in sids):
            raise _fail(source, row, f"{where}: sentence_id must be a list of integers, got {sids!r}")
        # Index into the passage list [title, s1, ...]: 1..n are sentences; 0 (the
        # title, found twice in the released dev data) is accepted and never counts
        # as required information.
        n_sent = len(passages[pid - 1]) - 1
        bad = [x for x in sids if not 0 <= x <= n_sent]
        if bad:
            raise _fail(source, row, f"{where}: sentence_id {bad} not in 0..{n_sent} (passage {pid})")
        out.append(MissingInfo(mtype, pid, tuple(sids)))
    return out


def _parse_preference(source: str, row: int, pref: Any, n_predictions: int) -> list[int]:
    """'preference': one value in {0, 1, 2} per pair of `PREFERENCE_PAIRS` (needs 4 predictions)."""
    if not isinstance(pref, list) or len(pref) != len(PREFERENCE_PAIRS) or not all(
        _as_int(x) and x in (0, 1, 2) for x in pref
    ):
        raise _fail(source, row, f"'preference' must be a list of 6 values in {{0, 1, 2}}, got {pref!r}")
    if n_predictions < 4:
        raise _fail(source, row, f"'preference' needs 'prediction 1'..'prediction 4', found {n_predictions}")
    return list(pref)


def load_qa_feedback(path: str | os.PathLike) -> list[QAFeedbackRecord]:
    """Read and validate a QA-FEEDBACK JSON file (a list of rows).

    Raises `DataError` naming the file, the 1-based row and the problem for a missing
    file, invalid JSON or a malformed row.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if not p.is_file():
        raise DataError(f"{p}: not a file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of QA-FEEDBACK rows, got {type(data).__name__}")
    records = [_parse_record(str(p), i + 1, obj) for i, obj in enumerate(data)]
    logger.info("%s: read %d QA-FEEDBACK row(s)", p, len(records))
    return records


# ---------------------------------------------------------------------------- mappings


def _need(rec: QAFeedbackRecord, what: str, value: Any, purpose: str) -> Any:
    if value is None:
        raise DataError(f"{rec.where()}: no {what} (needed for {purpose})")
    return value


def _report(stats: dict | None, name: str, counts: Counter) -> None:
    skipped = {k: v for k, v in counts.items() if k.startswith("skipped") and v}
    msg = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    (logger.warning if skipped else logger.info)("QA-FEEDBACK → %s: %s", name, msg)
    if stats is not None:
        stats.update(counts)


def relevance_examples(
    records: list[QAFeedbackRecord],
    *,
    min_words: int = 5,
    min_error_span_words: int = 0,
    stats: dict | None = None,
) -> list[SegmentExample]:
    """(a) Sub-sentence relevance examples of ``prediction 1`` (see module docstring).

    `min_error_span_words`: ignore relevance error spans with fewer words (paper A's
    code drops spans under 5 words as annotation noise; 0 keeps every span).
    """
    split = segment_splitter("sub_sentence", min_words=min_words)
    out, counts = [], Counter()
    for rec in records:
        errors = _need(rec, "'feedback'", rec.errors, "relevance examples")
        text = rec.predictions[0]
        spans = split(text)
        if not spans:
            counts["skipped_empty_prediction"] += 1
            continue
        err = [
            (e.start, e.end)
            for e in errors
            if e.type in RELEVANCE_ERRORS and len(text[e.start : e.end].split()) >= min_error_span_words
        ]
        labels = label_segments(text, spans, err)
        out.append(SegmentExample(rec.prompt, text, spans, labels, group=rec.question, meta={"row": rec.row}))
        counts["examples"] += 1
        counts["segments_error"] += labels.count(1)
        counts["segments_no_error"] += labels.count(0)
    _report(stats, "relevance", counts)
    return out


def factuality_examples(
    records: list[QAFeedbackRecord],
    *,
    ignore_relevance_error_sentences: bool = False,
    stats: dict | None = None,
) -> list[SegmentExample]:
    """(b) Sentence factuality examples of ``prediction 1`` (see module docstring)."""
    split = segment_splitter("sentence")
    out, counts = [], Counter()
    for rec in records:
        errors = _need(rec, "'feedback'", rec.errors, "factuality examples")
        text = rec.predictions[0]
        spans = split(text)
        if not spans:
            counts["skipped_empty_prediction"] += 1
            continue
        fact = [(e.start, e.end) for e in errors if e.type in FACTUALITY_ERRORS]
        rel = [(e.start, e.end) for e in errors if e.type in RELEVANCE_ERRORS] if ignore_relevance_error_sentences else []
        labels = label_segments(text, spans, fact, ignore_spans=rel)
        out.append(SegmentExample(rec.prompt, text, spans, labels, group=rec.question, meta={"row": rec.row}))
        counts["examples"] += 1
        counts["segments_error"] += labels.count(1)
        counts["segments_no_error"] += labels.count(0)
        counts["segments_ignored_relevance_error"] += labels.count(None)
    _report(stats, "factuality", counts)
    return out


def transfer_segment_labels(
    examples: list[SegmentExample],
    records: list[QAFeedbackRecord],
    *,
    density: str,
    min_words: int = 5,
    stats: dict | None = None,
) -> list[SegmentExample]:
    """Extra training examples from the unlabelled predictions 2..4 (augmentation).

    The four predictions of a question share much of their text. A segment of
    prediction k whose text (whitespace-normalised, case-folded) equals a labelled
    segment of the same question's prediction 1 gets that label; other segments are
    kept in the input with label None (not trained on). Predictions without any
    transferred label are skipped. Use on training questions only: evaluation stays on
    prediction 1's human labels.
    """
    split = segment_splitter(density, min_words=min_words)
    by_row = {ex.meta.get("row"): ex for ex in examples}
    out, counts = [], Counter()

    def norm(t: str) -> str:
        return " ".join(t.lower().split())

    for rec in records:
        ex = by_row.get(rec.row)
        if ex is None:
            continue
        known = {norm(ex.response[a:b]): lab for (a, b), lab in zip(ex.spans, ex.labels) if lab is not None}
        for k, pred in enumerate(rec.predictions[1:], start=2):
            if pred.strip() == ex.response.strip():
                counts["skipped_same_as_prediction_1"] += 1
                continue
            spans = split(pred)
            labels = [known.get(norm(pred[a:b])) for a, b in spans]
            n = sum(lab is not None for lab in labels)
            if n == 0:
                counts["skipped_no_match"] += 1
                continue
            out.append(SegmentExample(rec.prompt, pred, spans, labels, group=rec.question,
                                      meta={"row": rec.row, "prediction": k, "transferred": True}))
            counts["examples"] += 1
            counts["segments_labelled"] += n
            counts["segments_unlabelled"] += len(labels) - n
    _report(stats, f"{density} label transfer", counts)
    return out


_WORD = re.compile(r"\w+")


def _words(text: str) -> Counter:
    return Counter(w.lower() for w in _WORD.findall(text))


def grounding(
    text: str,
    passage_sentences: dict[tuple[int, int], Counter],
    *,
    min_containment: float = 0.8,
    min_words: int = 5,
) -> set[tuple[int, int]]:
    """Passage sentences (passage_id, sentence_id) that `text`'s sub-sentences ground in.

    Each sub-sentence goes to the passage sentence with the largest word containment
    |words(sub) ∩ words(sent)| / |words(sub)| (first one on ties) when that is at least
    `min_containment`.
    """
    from fgrlhf_ray.data.segments import split_sub_sentences

    found = set()
    for a, b in split_sub_sentences(text, min_words=min_words):
        sub = _words(text[a:b])
        n = sum(sub.values())
        if n == 0:
            continue
        best, best_id = -1.0, None
        for sid, sent in passage_sentences.items():
            c = sum((sub & sent).values()) / n
            if c > best:
                best, best_id = c, sid
        if best_id is not None and best >= min_containment:
            found.add(best_id)
    return found


def completeness_coverage(rec: QAFeedbackRecord, *, min_containment: float = 0.8) -> tuple[list[float], int] | None:
    """Coverage of each prediction of `rec` (rule (c) of the module docstring) and |I|;
    None when the row has no required information (I empty)."""
    missing = _need(rec, "'feedback'", rec.missing, "completeness pairs")
    corrected = _need(rec, "feedback.corrected-prediction", rec.corrected, "completeness pairs")
    sents = {
        (pi + 1, si + 1): _words(s) for pi, p in enumerate(rec.passages) for si, s in enumerate(p[1:])
    }
    required = grounding(corrected, sents, min_containment=min_containment)
    minor = set()
    for m in missing:
        ids = {(m.passage_id, s) for s in m.sentence_ids}
        if m.type == "Missing-Minor-Auxiliary":
            minor |= ids
        else:
            required |= ids
    required = (required - minor) & set(sents)  # drops title references (sentence_id 0)
    if not required:
        return None
    cov = [len(grounding(p, sents, min_containment=min_containment) & required) / len(required) for p in rec.predictions]
    return cov, len(required)


def _seen_before(seen: set, prompt: str, chosen: str, rejected: str, counts: Counter) -> bool:
    """True (and counted) if this (prompt, chosen, rejected) pair was already taken. Rows of
    policy samples written with `feedback_on="all"` repeat a question's predictions rotated
    (`fgrlhf_ray.data.policy_feedback`); without this each pair would count k times."""
    key = (prompt, chosen, rejected)
    if key in seen:
        counts["skipped_duplicate_pairs"] += 1
        return True
    seen.add(key)
    return False


def completeness_pairs(
    records: list[QAFeedbackRecord],
    *,
    min_containment: float = 0.8,
    stats: dict | None = None,
) -> list[PreferencePair]:
    """(c) Completeness preference pairs from coverage of the required information."""
    out, counts, seen = [], Counter(), set()
    for rec in records:
        res = completeness_coverage(rec, min_containment=min_containment)
        if res is None:
            counts["skipped_no_required_info"] += 1
            continue
        cov, _ = res
        n = len(rec.predictions)
        for i in range(n):
            for j in range(i + 1, n):
                if cov[i] == cov[j]:
                    counts["skipped_tie_pairs"] += 1
                    continue
                if rec.predictions[i] == rec.predictions[j]:
                    counts["skipped_identical_pairs"] += 1
                    continue
                win, lose = (i, j) if cov[i] > cov[j] else (j, i)
                if _seen_before(seen, rec.prompt, rec.predictions[win], rec.predictions[lose], counts):
                    continue
                out.append(
                    PreferencePair(
                        rec.prompt,
                        rec.predictions[win],
                        rec.predictions[lose],
                        group=rec.question,
                        meta={"row": rec.row, "chosen": win + 1, "rejected": lose + 1,
                              "coverage": [cov[win], cov[lose]]},
                    )
                )
                counts["pairs"] += 1
    _report(stats, "completeness", counts)
    return out


def holistic_pairs(records: list[QAFeedbackRecord], *, stats: dict | None = None) -> list[PreferencePair]:
    """(d) Holistic preference pairs from the human `preference` labels; ties skipped."""
    out, counts, seen = [], Counter(), set()
    for rec in records:
        prefs = _need(rec, "'preference'", rec.preference, "holistic pairs")
        for (a, b), p in zip(PREFERENCE_PAIRS, prefs):
            if p == 0:
                counts["skipped_ties"] += 1
                continue
            win, lose = (a, b) if p == 1 else (b, a)
            chosen, rejected = rec.predictions[win - 1], rec.predictions[lose - 1]
            if chosen == rejected:
                counts["skipped_identical_pairs"] += 1
                continue
            if _seen_before(seen, rec.prompt, chosen, rejected, counts):
                continue
            out.append(
                PreferencePair(rec.prompt, chosen, rejected, group=rec.question,
                               meta={"row": rec.row, "chosen": win, "rejected": lose})
            )
            counts["pairs"] += 1
            counts["first_preferred"] += int(p == 1)
    _report(stats, "holistic", counts)
    return out


def edit_pairs(records: list[QAFeedbackRecord], *, stats: dict | None = None) -> list[EditPair]:
    """(e) (``prediction 1``, ``corrected-prediction``) minimal-edit pairs."""
    out, counts = [], Counter()
    for rec in records:
        corrected = _need(rec, "feedback.corrected-prediction", rec.corrected, "edit pairs")
        original = rec.predictions[0]
        # An empty correction is a real edit (everything was wrong): kept. An empty
        # original has nothing to learn from.
        if not original.strip():
            counts["skipped_empty_prediction"] += 1
            continue
        if " ".join(original.split()) == " ".join(corrected.split()):
            counts["skipped_unchanged"] += 1
            continue
        out.append(EditPair(rec.prompt, original, corrected, group=rec.question, meta={"row": rec.row}))
        counts["pairs"] += 1
    _report(stats, "edit pairs", counts)
    return out
