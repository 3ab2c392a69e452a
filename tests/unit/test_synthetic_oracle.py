"""The synthetic world's oracle on hand-made responses: one test per error type, a
perfect answer, unicode text, an empty response, preferences and aggregate metrics."""

from __future__ import annotations

import pytest

from fgrlhf_ray.data.synthetic import Oracle, build_text, oracle_metrics, spec_from_record
from fgrlhf_ray.errors import DataError

PASSAGES = [
    ("Doren Valk", ["Doren Valk was born in Meribel.", "Doren Valk works as a baker.",
                    "Doren Valk works for Valtor Systems."]),
    ("Meribel", ["Meribel is located in Ostravia.", "Meribel has a population of 120,000."]),
    ("Asha Penn", ["Asha Penn was born in Tolbury.", "Asha Penn works as a pilot."]),
]
QUESTION = "Where was Doren Valk born?"
GOLD = "Doren Valk was born in Meribel. Meribel is located in Ostravia."


def _record() -> dict:
    """A prompts-file row built by hand (same keys as dev400.json)."""
    passages = [{"wikipage": t, "content": f"{t}\n\n" + " ".join(s)} for t, s in PASSAGES]
    return {
        "text": build_text(QUESTION, [(p["wikipage"], p["content"]) for p in passages]),
        "answer": [GOLD],
        "passages": passages,
        "question": QUESTION,
    }


@pytest.fixture()
def rec() -> dict:
    return _record()


@pytest.fixture()
def oracle() -> Oracle:
    return Oracle()


def _types(fb: dict) -> list[str]:
    return [e["error type"] for e in fb["errors"]]


def _span(resp: str, fb: dict, i: int = 0) -> str:
    return resp[fb["errors"][i]["start"]:fb["errors"][i]["end"]]


def test_spec_required_facts(rec):
    spec = spec_from_record(rec)
    assert spec.subject == "Doren Valk" and spec.asked == ("born_in",)
    assert [(r.fact, r.kind, r.passage_id, r.sentence_id) for r in spec.required] == [
        (("Doren Valk", "born_in", "Meribel"), "Missing-Answer", 1, 1),
        (("Meribel", "country", "Ostravia"), "Missing-Major-Auxiliary", 2, 1),
    ]


def test_feedback_format_record_gives_same_spec(rec):
    fb_row = {"question": QUESTION,
              "passages": [[t, f"{t}\n\n{s[0]}", *s[1:]] for t, s in PASSAGES]}
    assert spec_from_record(fb_row).required == spec_from_record(rec).required


def test_perfect_answer(rec, oracle):
    for resp in (GOLD, "Doren Valk was born in Meribel, and Meribel is located in Ostravia."):
        fb = oracle.annotate(rec, resp)
        assert fb["errors"] == [] and fb["missing-info"] == []
        assert fb["corrected-prediction"] == resp
        assert oracle.quality(rec, resp) == pytest.approx(1.5) == oracle.max_quality(rec)


def test_irrelevant(rec, oracle):
    resp = GOLD + " Doren Valk works as a baker."
    fb = oracle.annotate(rec, resp)
    assert _types(fb) == ["Irrelevant"]
    assert _span(resp, fb) == "Doren Valk works as a baker."
    assert fb["corrected-prediction"] == GOLD
    assert oracle.quality(rec, resp) == pytest.approx(1.25)


def test_irrelevant_clause_span_ends_at_comma(rec, oracle):
    resp = "Doren Valk works for Valtor Systems, and Doren Valk was born in Meribel. Meribel is located in Ostravia."
    fb = oracle.annotate(rec, resp)
    assert _types(fb) == ["Irrelevant"]
    assert _span(resp, fb) == "Doren Valk works for Valtor Systems,"
    # The kept clause becomes its own sentence; untouched sentences stay verbatim.
    assert fb["corrected-prediction"] == GOLD


def test_redundant(rec, oracle):
    resp = "Doren Valk was born in Meribel. Meribel is located in Ostravia. Doren Valk was born in Meribel."
    fb = oracle.annotate(rec, resp)
    assert _types(fb) == ["Redundant"]
    assert fb["errors"][0]["start"] == len(GOLD) + 1 and fb["errors"][0]["end"] == len(resp)
    assert fb["corrected-prediction"] == GOLD


def test_wrong_grounding(rec, oracle):
    resp = "Doren Valk was born in Tolbury. Meribel is located in Ostravia."
    fb = oracle.annotate(rec, resp)
    assert _types(fb) == ["Wrong-Grounding"]
    assert _span(resp, fb) == "Doren Valk was born in Tolbury."
    assert fb["missing-info"] == [{"error type": "Missing-Answer", "passage_id": 1, "sentence_id": [1]}]
    assert fb["corrected-prediction"] == GOLD
    assert oracle.quality(rec, resp) == pytest.approx(0.5 - 0.75)


def test_unverifiable_unasked_fact_is_also_irrelevant(rec, oracle):
    resp = GOLD + " Doren Valk was born in the year 1950."
    fb = oracle.annotate(rec, resp)
    # Relevance and factuality are judged independently: one span, one label of each.
    assert _types(fb) == ["Irrelevant", "Unverifiable"]
    assert fb["errors"][0]["start"] == fb["errors"][1]["start"] == len(GOLD) + 1
    assert fb["corrected-prediction"] == GOLD


def test_unverifiable_unknown_entity(rec, oracle):
    resp = "Doren Valk was born in Meribel. Meribel is located in Ostravia. Kaloo Brent works for Valtor Systems."
    fb = oracle.annotate(rec, resp)
    assert set(_types(fb)) == {"Irrelevant", "Unverifiable"}


def test_wrong_value_of_unasked_relation(rec, oracle):
    resp = GOLD + " Asha Penn works as a baker."
    fb = oracle.annotate(rec, resp)
    assert _types(fb) == ["Irrelevant", "Wrong-Grounding"]


def test_incoherent_garbage_and_truncation(rec, oracle):
    resp = "Valk born Meribel in was Doren. Meribel is located in Ostravia. Doren Valk was born"
    fb = oracle.annotate(rec, resp)
    assert _types(fb) == ["Incoherent", "Incoherent"]
    assert _span(resp, fb, 0) == "Valk born Meribel in was Doren."
    assert _span(resp, fb, 1) == "Doren Valk was born"  # no final "." → incoherent
    assert [m["error type"] for m in fb["missing-info"]] == ["Missing-Answer"]
    assert fb["corrected-prediction"] == "Meribel is located in Ostravia. Doren Valk was born in Meribel."


def test_question_mark_sentence_is_incoherent(rec, oracle):
    fb = oracle.annotate(rec, "Doren Valk was born in Meribel?")
    assert _types(fb) == ["Incoherent"]


def test_empty_response(rec, oracle):
    for resp in ("", "   \n "):
        fb = oracle.annotate(rec, resp)
        assert fb["errors"] == []
        assert [m["error type"] for m in fb["missing-info"]] == ["Missing-Answer", "Missing-Major-Auxiliary"]
        assert fb["corrected-prediction"] == GOLD
        assert oracle.quality(rec, resp) == 0.0


def test_unicode_offsets_are_code_points(rec, oracle):
    resp = " Dören Välk was born in Meribel. ☃ snow ünïcödé. " + GOLD
    fb = oracle.annotate(rec, resp)
    # A well-formed statement about an unknown (unicode) name; then garbage.
    assert _types(fb) == ["Irrelevant", "Unverifiable", "Incoherent"]
    assert _span(resp, fb, 0) == "Dören Välk was born in Meribel."
    assert fb["errors"][0]["start"] == 1  # leading space is not part of the span
    assert _span(resp, fb, 2) == "☃ snow ünïcödé."
    assert fb["missing-info"] == []
    assert fb["corrected-prediction"] == GOLD


def test_corrected_prediction_is_perfect(rec, oracle):
    resp = ("Asha Penn works as a pilot, and Doren Valk was born in Tolbury. "
            "Doren Valk was born in Tolbury. blah blah")
    fb = oracle.annotate(rec, resp)
    again = oracle.annotate(rec, fb["corrected-prediction"])
    assert again["errors"] == [] and again["missing-info"] == []


def test_preference_and_ties(rec, oracle):
    worse = GOLD + " Doren Valk works as a baker."
    assert oracle.preference(rec, GOLD, worse) == 1
    assert oracle.preference(rec, worse, GOLD) == 2
    assert oracle.preference(rec, GOLD, "Doren Valk was born in Meribel, and Meribel is located in Ostravia.") == 0
    assert oracle.preferences(rec, [GOLD, worse, "", GOLD]) == [1, 1, 0, 1, 2, 2]


def test_oracle_metrics(rec, oracle):
    responses = [GOLD, "Doren Valk was born in Tolbury. Doren Valk works as a baker."]
    m = oracle_metrics([rec, rec], responses, oracle)
    assert m["n_responses"] == 2 and m["n_sentences"] == 4
    assert m["errors_per_sentence/Wrong-Grounding"] == pytest.approx(1 / 4)
    assert m["errors_per_sentence/Irrelevant"] == pytest.approx(1 / 4)
    assert m["frac_with_any_error"] == pytest.approx(0.5)
    assert m["missing_rate"] == pytest.approx(2 / 4)
    assert m["missing_rate/Missing-Answer"] == pytest.approx(1 / 2)
    assert m["perfect_rate"] == pytest.approx(0.5)
    assert m["mean_quality"] == pytest.approx((1.5 + (-0.75 - 0.25)) / 2)
    # Several samples per record are accepted.
    m2 = oracle_metrics([rec], [responses], oracle)
    assert m2["n_responses"] == 2 and m2["mean_quality"] == pytest.approx(m["mean_quality"])
    with pytest.raises(ValueError, match="responses"):
        oracle_metrics([rec], responses, oracle)


def test_non_synthetic_record_is_rejected(oracle):
    rec = {"question": "Who led the british in the battle of princeton?",
           "passages": [["Battle of Princeton", "Battle of Princeton\n\nThe Battle of Princeton was a battle."]]}
    with pytest.raises(DataError, match="outside the synthetic answer grammar"):
        oracle.annotate(rec, "Cornwallis.")


def test_question_id_needs_world(oracle):
    with pytest.raises(ValueError, match="needs Oracle\\(world\\)"):
        oracle.annotate("synth-00001", GOLD)
