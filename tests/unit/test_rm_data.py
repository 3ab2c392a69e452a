"""Bring-your-own JSONL formats and the group split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fgrlhf_ray.data import rm_data as rd
from fgrlhf_ray.errors import DataError


def jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return p


RESP = "It was Cornwallis. He led 1,400 troops, and the weather was cold that day."


def test_segment_jsonl_explicit_segments_and_error_spans(tmp_path):
    rows = [
        {"prompt": "q1", "response": RESP,
         "segments": [{"start": 0, "end": 18, "label": "error"}, {"start": 19, "end": len(RESP), "label": 0}]},
        {"prompt": "q2", "response": RESP, "error_spans": [{"start": 19, "end": 30}], "group": "g"},
        {"prompt": "q3", "response": "", "error_spans": []},  # empty: skipped
    ]
    exs = rd.read_segment_jsonl(jsonl(tmp_path, rows), density="sentence")
    assert len(exs) == 2
    assert exs[0].spans == [(0, 18), (19, len(RESP))] and exs[0].labels == [1, 0]
    assert exs[1].spans == [(0, 18), (19, len(RESP))] and exs[1].labels == [0, 1]
    assert exs[0].group == "q1" and exs[1].group == "g"


def test_segment_jsonl_round_trip(tmp_path):
    ex = rd.SegmentExample("question: q", RESP, [(0, 18), (19, len(RESP))], [1, None], group="G")
    path = tmp_path / "rt.jsonl"
    assert rd.write_jsonl(path, [ex]) == 1
    [back] = rd.read_segment_jsonl(path, density="sentence")
    assert (back.prompt, back.response, back.spans, back.labels, back.group) == (ex.prompt, ex.response, ex.spans,
                                                                                   ex.labels, "G")


def test_preference_and_edit_jsonl(tmp_path, caplog):
    pref = rd.read_preference_jsonl(jsonl(tmp_path, [
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
    ], "p.jsonl"))
    assert [(x.chosen, x.rejected) for x in pref] == [("good", "bad")]
    with caplog.at_level(logging.WARNING):
        edits = rd.read_edit_jsonl(jsonl(tmp_path, [
            {"prompt": "p", "original": "a b c", "edited": "a c"},
            {"prompt": "p", "original": "x", "edited": "x"},
        ], "e.jsonl"))
    assert [(e.original, e.edited) for e in edits] == [("a b c", "a c")]
    assert "skipped 1 pair(s)" in caplog.text
    assert edits[0].as_preference().chosen == "a c"


@pytest.mark.parametrize(
    "reader, line, message",
    [
        ("segment", "{not json", "line 2: not valid JSON"),
        ("segment", "[1, 2]", "line 2: expected a JSON object"),
        ("segment", {"prompt": "p"}, "line 2: missing field(s) 'response'"),
        ("segment", {"prompt": "p", "response": "r.", "segments": [], "extra": 1}, "line 2: unknown field(s) 'extra'"),
        ("segment", {"prompt": "p", "response": "r.", "segments": [], "error_spans": []},
         "line 2: give exactly one of 'segments' or 'error_spans'"),
        ("segment", {"prompt": "p", "response": "abc", "segments": [{"start": 0, "end": 9, "label": 1}]},
         "line 2: segments[0]: span [0, 9) is outside the response"),
        ("segment", {"prompt": "p", "response": "abc", "segments": [{"start": 0, "end": 2, "label": "bad"}]},
         "segments[0].label must be 'error', 'no_error', 1, 0 or null"),
        ("segment", {"prompt": "p", "response": "abcdef", "segments": [
            {"start": 0, "end": 4, "label": 1}, {"start": 2, "end": 6, "label": 0}]}, "must be ordered and non-overlapping"),
        ("segment", {"prompt": 3, "response": "abc", "segments": []}, "field 'prompt' must be a string"),
        ("preference", {"prompt": "p", "chosen": "a"}, "missing field(s) 'rejected'"),
        ("edit", {"prompt": "p", "original": "a", "edited": None}, "field 'edited' must be a string"),
    ],
)
def test_bad_rows_name_file_line_and_problem(tmp_path, reader, line, message):
    good = {
        "segment": {"prompt": "p", "response": "ok.", "segments": [{"start": 0, "end": 3, "label": 0}]},
        "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
        "edit": {"prompt": "p", "original": "a", "edited": "b"},
    }[reader]
    path = jsonl(tmp_path, [good, line])
    read = {"segment": lambda p: rd.read_segment_jsonl(p, density="sentence"),
            "preference": rd.read_preference_jsonl, "edit": rd.read_edit_jsonl}[reader]
    with pytest.raises(DataError) as exc:
        read(path)
    assert str(path) in str(exc.value) and message in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        rd.read_edit_jsonl(tmp_path / "nope.jsonl")


def test_label_segments_ignore_and_overlap():
    text = "aaa bbb. ccc ddd."
    spans = [(0, 8), (9, 17)]
    assert rd.label_segments(text, spans, [(4, 7)]) == [1, 0]
    assert rd.label_segments(text, spans, [(8, 9)]) == [0, 0]  # only the space between them
    assert rd.label_segments(text, spans, [], ignore_spans=[(9, 12)]) == [0, None]
    assert rd.label_segments(text, spans, [(9, 12)], ignore_spans=[(9, 12)]) == [0, 1]


def test_split_groups_is_seeded_order_independent_and_sized():
    groups = [f"q{i}" for i in range(100)]
    spec = rd.SplitSpec(test_size=20, dev_size=0.1, seed=3)
    a = rd.split_groups(groups, spec)
    b = rd.split_groups(list(reversed(groups)) + groups[:5], spec)  # order and duplicates do not matter
    assert a == b
    counts = {s: sum(1 for v in a.values() if v == s) for s in ("train", "dev", "test")}
    assert counts == {"train": 70, "dev": 10, "test": 20}
    assert rd.split_groups(groups, rd.SplitSpec(test_size=20, dev_size=0.1, seed=4)) != a
    with pytest.raises(DataError, match="leave no training groups"):
        rd.split_groups(groups[:5], rd.SplitSpec(test_size=3, dev_size=2))
