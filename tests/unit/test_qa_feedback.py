"""QA-FEEDBACK → reward-model examples: each mapping on hand-made rows, and bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fgrlhf_ray.data import qa_feedback as qf
from fgrlhf_ray.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "qa_feedback" / "dev400_feedback.json"

PASSAGES = [
    ["Princeton", "Princeton\n\nThe battle was fought on January 3, 1777.", "Cornwallis left troops under Mawhood.",
     "Washington attacked the British garrison at Princeton."],
    ["Trenton", "Trenton\n\nThe Hessians were defeated at Trenton in 1776.", "Washington withdrew to Pennsylvania."],
]


def row(pred1: str, *, errors=(), missing=(), corrected=None, preference=None, preds=None) -> dict:
    preds = preds or [pred1, "second answer here.", "third answer here.", "fourth answer here."]
    out = {"question": "Who led the British at Princeton?", "passages": PASSAGES}
    for i, p in enumerate(preds):
        out[f"prediction {i + 1}"] = p
    out["feedback"] = {
        "errors": [dict(e) for e in errors],
        "missing-info": [dict(m) for m in missing],
        "corrected-prediction": pred1 if corrected is None else corrected,
    }
    if preference is not None:
        out["preference"] = preference
    return out


def write(tmp_path: Path, rows: list, name: str = "fb.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(rows), encoding="utf-8")
    return p


def err(etype: str, text: str, piece: str) -> dict:
    start = text.index(piece)
    return {"error type": etype, "explanation": "", "start": start, "end": start + len(piece)}


# ------------------------------------------------------------------ (a) relevance

TEXT = ("Cornwallis led the British troops at Princeton, and the weather that winter was very cold. "
        "Mawhood commanded the garrison in the town.")


def test_relevance_labels_sub_sentences_overlapping_c1_spans(tmp_path):
    rows = [row(TEXT, errors=[err("Irrelevant", TEXT, "the weather that winter was very cold."),
                              err("Wrong-Grounding", TEXT, "Mawhood commanded the garrison")])]
    recs = qf.load_qa_feedback(write(tmp_path, rows))
    [ex] = qf.relevance_examples(recs)
    pieces = [TEXT[a:b] for a, b in ex.spans]
    assert pieces == ["Cornwallis led the British troops at Princeton,",
                      "and the weather that winter was very cold.",
                      "Mawhood commanded the garrison in the town."]
    # The factual error does not count for relevance.
    assert ex.labels == [0, 1, 0]
    assert ex.prompt.startswith("question: Who led the British at Princeton? context: wikipage: Princeton text:")
    assert ex.group == "Who led the British at Princeton?"


def test_relevance_whitespace_only_contact_is_not_overlap(tmp_path):
    # The error span ends with the trailing space before the next sub-sentence.
    piece = "Cornwallis led the British troops at Princeton, "
    e = {"error type": "Redundant", "explanation": "", "start": 0, "end": len(piece)}
    [ex] = qf.relevance_examples(qf.load_qa_feedback(write(tmp_path, [row(TEXT, errors=[e])])))
    assert ex.labels == [1, 0, 0]


def test_relevance_partial_overlap_counts_and_min_span_words_filters(tmp_path):
    rows = [row(TEXT, errors=[err("Incoherent", TEXT, "cold. Mawhood")])]
    recs = qf.load_qa_feedback(write(tmp_path, rows))
    [ex] = qf.relevance_examples(recs)
    assert ex.labels == [0, 1, 1]  # the span straddles two sub-sentences
    [ex2] = qf.relevance_examples(recs, min_error_span_words=5)  # a 2-word span is dropped
    assert ex2.labels == [0, 0, 0]


def test_unicode_offsets_are_code_points(tmp_path):
    text = "Café “Les Deux Magots” is in Paris, and it serves très bon café au lait. Naïve 🙂 readers love it."
    e = err("Irrelevant", text, "Naïve 🙂 readers love it.")
    [ex] = qf.relevance_examples(qf.load_qa_feedback(write(tmp_path, [row(text, errors=[e])])))
    assert text[ex.spans[-1][0]:ex.spans[-1][1]] == "Naïve 🙂 readers love it."
    assert ex.labels[-1] == 1 and ex.labels[0] == 0


def test_empty_prediction_is_skipped_and_counted(tmp_path, caplog):
    rows = [row(TEXT), row("   ")]
    stats: dict = {}
    with caplog.at_level(logging.WARNING):
        exs = qf.relevance_examples(qf.load_qa_feedback(write(tmp_path, rows)), stats=stats)
    assert len(exs) == 1
    assert stats["skipped_empty_prediction"] == 1
    assert "skipped_empty_prediction=1" in caplog.text


# ----------------------------------------------------------------- (b) factuality


def test_factuality_sentences_and_context(tmp_path):
    text = "Cornwallis led the British. Mawhood was in Princeton. It was cold, and it snowed a lot that day."
    rows = [row(text, errors=[err("Unverifiable", text, "It was cold, and it snowed a lot that day."),
                              err("Irrelevant", text, "Mawhood was in Princeton.")])]
    recs = qf.load_qa_feedback(write(tmp_path, rows))
    [ex] = qf.factuality_examples(recs)
    assert [text[a:b] for a, b in ex.spans] == ["Cornwallis led the British.", "Mawhood was in Princeton.",
                                                "It was cold, and it snowed a lot that day."]
    assert ex.labels == [0, 0, 1]
    assert "context: wikipage: Princeton text: Princeton\n\nThe battle was fought" in ex.prompt
    assert "| wikipage: Trenton text:" in ex.prompt
    # Paper A's rule: sentences with only relevance errors are not trained on.
    [ex2] = qf.factuality_examples(recs, ignore_relevance_error_sentences=True)
    assert ex2.labels == [0, None, 1]


# --------------------------------------------------------------- (c) completeness


def test_completeness_pairs_follow_coverage_of_required_info(tmp_path):
    s_troops = "Cornwallis left troops under Mawhood."
    s_attack = "Washington attacked the British garrison at Princeton."
    s_trenton = "Washington withdrew to Pennsylvania."
    preds = [
        f"{s_troops} {s_attack}",  # covers both required sentences
        f"{s_troops} The day was cold and grey.",  # covers one
        "The day was cold and grey in New Jersey.",  # covers none
        f"{s_trenton} It was winter in the state.",  # minor info only: none required
    ]
    missing = [
        {"error type": "Missing-Answer", "passage_id": 1, "sentence_id": [3]},  # s_attack
        {"error type": "Missing-Minor-Auxiliary", "passage_id": 2, "sentence_id": [2]},  # s_trenton
    ]
    rows = [row(preds[0], preds=preds, missing=missing, corrected=s_troops)]
    rec = qf.load_qa_feedback(write(tmp_path, rows))[0]
    cov, n_required = qf.completeness_coverage(rec)
    assert n_required == 2
    assert cov == [1.0, 0.5, 0.0, 0.0]
    stats: dict = {}
    pairs = qf.completeness_pairs([rec], stats=stats)
    got = {(p.meta["chosen"], p.meta["rejected"]) for p in pairs}
    assert got == {(1, 2), (1, 3), (1, 4), (2, 3), (2, 4)}
    assert stats["skipped_tie_pairs"] == 1  # 3 vs 4: both cover nothing


def test_completeness_skips_rows_without_required_info(tmp_path):
    rows = [row("Something unrelated to any passage at all.", corrected="Nothing grounded here either, sadly.")]
    stats: dict = {}
    assert qf.completeness_pairs(qf.load_qa_feedback(write(tmp_path, rows)), stats=stats) == []
    assert stats["skipped_no_required_info"] == 1


# ------------------------------------------------------------------- (d) holistic


def test_holistic_pairs_map_preferences_and_skip_ties(tmp_path):
    preds = ["answer one.", "answer two.", "answer three.", "answer four."]
    rows = [row(preds[0], preds=preds, preference=[1, 2, 0, 1, 0, 2])]
    stats: dict = {}
    pairs = qf.holistic_pairs(qf.load_qa_feedback(write(tmp_path, rows)), stats=stats)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("answer one.", "answer two."),  # 1v2 → 1
        ("answer three.", "answer one."),  # 1v3 → 2
        ("answer two.", "answer three."),  # 2v3 → 1
        ("answer four.", "answer three."),  # 3v4 → 2
    ]
    assert stats["skipped_ties"] == 2 and stats["pairs"] == 4


# ------------------------------------------------------------------ (e) edit pairs


def test_edit_pairs(tmp_path):
    rows = [
        row("It was Cornwallis, and it was cold.", corrected="It was Cornwallis."),
        row("Unchanged answer.", corrected="Unchanged  answer."),  # whitespace only: skipped
        row("All of this is wrong.", corrected=""),  # empty correction: kept
    ]
    stats: dict = {}
    pairs = qf.edit_pairs(qf.load_qa_feedback(write(tmp_path, rows)), stats=stats)
    assert [(p.original, p.edited) for p in pairs] == [
        ("It was Cornwallis, and it was cold.", "It was Cornwallis."),
        ("All of this is wrong.", ""),
    ]
    assert stats["skipped_unchanged"] == 1


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("question"), "row 2: 'question' must be a non-empty string"),
        (lambda r: r.pop("prediction 1"), "row 2: no 'prediction 1' field"),
        (lambda r: r["feedback"]["errors"].append({"error type": "Typo", "start": 0, "end": 3}),
         "row 2: feedback.errors[0]: unknown 'error type' 'Typo'"),
        (lambda r: r["feedback"]["errors"].append({"error type": "Irrelevant", "start": 5, "end": 999}),
         "row 2: feedback.errors[0]: span [5, 999) is outside 'prediction 1'"),
        (lambda r: r["feedback"]["errors"].append({"error type": "Irrelevant", "start": "0", "end": 3}),
         "'start' and 'end' must be integers"),
        (lambda r: r["feedback"]["missing-info"].append(
            {"error type": "Missing-Answer", "passage_id": 9, "sentence_id": [1]}), "passage_id 9 is not in 1..2"),
        (lambda r: r["feedback"]["missing-info"].append(
            {"error type": "Missing-Answer", "passage_id": 1, "sentence_id": [7]}), "sentence_id [7] not in 0..3"),
        (lambda r: r.__setitem__("preference", [1, 2, 3]), "'preference' must be a list of 6 values"),
        (lambda r: r.__setitem__("passages", "text"), "'passages' must be a list"),
    ],
)
def test_malformed_rows_name_file_row_and_problem(tmp_path, mutate, message):
    bad = row(TEXT)
    mutate(bad)
    path = write(tmp_path, [row(TEXT), bad])
    with pytest.raises(DataError) as exc:
        qf.load_qa_feedback(path)
    assert str(path) in str(exc.value)
    assert message in str(exc.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        qf.load_qa_feedback(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        qf.load_qa_feedback(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list"):
        qf.load_qa_feedback(tmp_path / "obj.json")


def test_mapping_needs_its_fields(tmp_path):
    r = row(TEXT)
    del r["feedback"]
    recs = qf.load_qa_feedback(write(tmp_path, [r]))
    with pytest.raises(DataError, match=r"row 1: no 'feedback' \(needed for relevance examples\)"):
        qf.relevance_examples(recs)
    with pytest.raises(DataError, match=r"no 'preference' \(needed for holistic pairs\)"):
        qf.holistic_pairs(recs)


# ------------------------------------------------------------------ real data


@pytest.mark.skipif(not SHARED.exists(), reason="QA-FEEDBACK sample not present (../shared/data/qa_feedback)")
def test_real_qa_feedback_counts():
    recs = qf.load_qa_feedback(SHARED)
    assert len(recs) == 400
    stats: dict = {}
    hol = qf.holistic_pairs(recs, stats=stats)
    assert len(hol) + stats["skipped_ties"] == 400 * 6
    fact_stats: dict = {}
    fact = qf.factuality_examples(recs, stats=fact_stats)
    total = fact_stats["segments_error"] + fact_stats["segments_no_error"]
    assert 0.12 < fact_stats["segments_error"] / total < 0.22  # ~17% error sentences
    assert len(fact) == 400


def test_label_transfer_to_other_predictions(tmp_path):
    text = "Cornwallis led the British. Mawhood was in Princeton. It was cold that winter."
    preds = [
        text,
        "Mawhood was in Princeton. The battle was short.",  # one matching sentence
        "Nothing here matches at all.",  # no match: skipped
        text,  # identical to prediction 1: skipped (adds nothing)
    ]
    rows = [row(text, preds=preds, errors=[err("Wrong-Grounding", text, "Mawhood was in Princeton.")])]
    recs = qf.load_qa_feedback(write(tmp_path, rows))
    base = qf.factuality_examples(recs)
    stats: dict = {}
    [extra] = qf.transfer_segment_labels(base, recs, density="sentence", stats=stats)
    assert extra.response == preds[1] and extra.labels == [1, None]
    assert extra.group == base[0].group and extra.meta["prediction"] == 2
    assert stats["skipped_no_match"] == 1 and stats["skipped_same_as_prediction_1"] == 1
