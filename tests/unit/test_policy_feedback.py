"""Paper A's RM-data protocol: QA-FEEDBACK rows from policy samples, and the oracle as scorers.

Hand-made "policy answers" of one synthetic question stand in for samples; the oracle's
labels of them are checked against what the grammar says each clause is.
"""

from __future__ import annotations

import json

import pytest

from fgrlhf_ray.data import oracle_scorers
from fgrlhf_ray.data.policy_feedback import feedback_passages, feedback_rows, load_annotator, write_feedback_file
from fgrlhf_ray.data.qa_feedback import (
    factuality_examples,
    format_qa_prompt,
    holistic_pairs,
    load_qa_feedback,
    relevance_examples,
)
from fgrlhf_ray.data.synthetic_oracle import Oracle
from fgrlhf_ray.data.synthetic_world import Fact, SyntheticWorld, render_core
from fgrlhf_ray.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def item():
    world = SyntheticWorld.generate(5, 40)
    # A question whose subject has a fact the question does not ask for (to write an irrelevant clause).
    return next(q for q in world.questions
                if len({r for (s, r) in q.passage_facts() if s == q.subject}) > len(q.required))


def answers(item):
    """(correct, wrong value, irrelevant + correct, truncated) answers of `item`."""
    pf = item.passage_facts()
    req = item.required[0].fact
    value, _, _ = pf[(req.subject, req.relation)]
    other_value = next(v for (s, r), (v, _, _) in pf.items() if v != value and r == req.relation) \
        if any(v != value and r == req.relation for (s, r), (v, _, _) in pf.items()) else value + "x"
    extra_rel = next(r for (s, r) in pf if s == item.subject and r not in {f.fact.relation for f in item.required})
    correct = render_core(req) + "."
    wrong = render_core(Fact(req.subject, req.relation, other_value)) + "."
    irrelevant = render_core(Fact(item.subject, extra_rel, pf[(item.subject, extra_rel)][0])) + ". " + correct
    return [correct, wrong, irrelevant, render_core(req)[:12]]


def test_rows_rotate_so_every_sample_is_prediction_1_with_its_oracle_feedback(item):
    record = item.prompt_record()
    samples = answers(item)
    rows = feedback_rows(record, samples, Oracle())
    assert len(rows) == 4
    oracle = Oracle()
    for j, row in enumerate(rows):
        assert row["prediction 1"] == samples[j]
        assert [row[f"prediction {i}"] for i in range(1, 5)] == samples[j:] + samples[:j]
        assert row["feedback"] == oracle.annotate(record, samples[j])
        assert row["preference"] == oracle.preferences(record, samples[j:] + samples[:j])
    # The labels themselves: correct → no error; wrong value → Wrong-Grounding; the extra
    # relation's clause → Irrelevant (and only that clause); the cut-off answer → Incoherent.
    types = [[e["error type"] for e in row["feedback"]["errors"]] for row in rows]
    assert types[0] == [] and types[1] == ["Wrong-Grounding"]
    assert types[2] == ["Irrelevant"] and rows[2]["feedback"]["errors"][0]["end"] <= samples[2].index(". ") + 1
    assert types[3] == ["Incoherent"]


def test_rows_are_valid_qa_feedback_and_rebuild_the_policy_prompt(item, tmp_path):
    record = item.prompt_record()
    path = tmp_path / "train_feedback.json"
    stats = write_feedback_file(path, [record], [answers(item)], Oracle())
    assert stats == {"questions": 1, "samples": 4, "rows": 4, "distinct_sample_share": 1.0}
    recs = load_qa_feedback(path)
    assert format_qa_prompt(recs[0].question, recs[0].passages) + " answer:" == record["text"]
    rel = relevance_examples(recs)
    fac = factuality_examples(recs)
    assert len(rel) == len(fac) == 4
    # The wrong-value answer (row 2) is one sentence with a factuality error.
    assert fac[1].labels == [1] and fac[0].labels == [0]
    # Rotations repeat each pair of samples 4 times; the pair reader keeps each once.
    stats = {}
    pairs = holistic_pairs(recs, stats=stats)
    assert len({(p.chosen, p.rejected) for p in pairs}) == len(pairs)
    assert len(pairs) == 6 and stats["skipped_duplicate_pairs"] == 18


def test_without_annotator_rows_hold_predictions_only(item):
    rows = feedback_rows(item.prompt_record(), ["a.", "b."], None, feedback_on="first")
    assert len(rows) == 1 and "feedback" not in rows[0] and "preference" not in rows[0]
    assert rows[0]["prediction 2"] == "b."


def test_bad_records_and_annotators_are_named():
    with pytest.raises(DataError, match="record 3: no 'passages'"):
        feedback_passages({"question": "q"}, where="record 3")
    with pytest.raises(DataError, match="passage 0"):
        feedback_passages({"passages": [{"content": 1}]}, where="r")
    with pytest.raises(ConfigError, match="module:function"):
        load_annotator("not-a-target")
    assert load_annotator("none") is None


def test_oracle_scorers_give_the_oracles_segment_rewards(item):
    prompt = item.prompt_record()["text"]
    correct, wrong, irrelevant, truncated = answers(item)
    rel = oracle_scorers.relevance([prompt] * 3, [correct, irrelevant, truncated])
    assert [s.value for s in rel[0]] == [1.0]
    assert [s.value for s in rel[1]] == [-1.0, 1.0]  # the irrelevant sentence, then the correct one
    assert rel[1][0].char_end == irrelevant.index(". ") + 1
    assert [s.value for s in rel[2]] == [-1.0]
    fac = oracle_scorers.factuality([prompt] * 2, [correct, wrong])
    assert [s.value for s in fac[0]] == [1.0] and [s.value for s in fac[1]] == [-1.0]
    oracle = Oracle()
    q_max = oracle.max_quality(item)
    assert oracle_scorers.holistic([prompt], [correct]) == [pytest.approx(oracle.quality(item, correct) / q_max)]
    covered = item.required[0].kind
    from fgrlhf_ray.data.synthetic_oracle import COVER_WEIGHT
    assert oracle_scorers.completeness([prompt], [correct]) == [pytest.approx(2 * COVER_WEIGHT[covered] / q_max - 1)]
    assert oracle_scorers.completeness([prompt], [""]) == [-1.0]


def test_record_from_prompt_round_trips_and_rejects_other_text(item):
    rec = item.prompt_record()
    parsed = oracle_scorers.record_from_prompt(rec["text"])
    assert parsed == {"question": rec["question"], "passages": rec["passages"]}
    with pytest.raises(DataError, match="not 'question:"):
        oracle_scorers.record_from_prompt("Tell me a story.")
    json.dumps(parsed)
