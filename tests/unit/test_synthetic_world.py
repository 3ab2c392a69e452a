"""The synthetic world generator: determinism, grammar round trips, the files it writes
(QA-FEEDBACK schema) and agreement between its perturbations and the oracle."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from fgrlhf_ray.data.cli import register
from fgrlhf_ray.data.synthetic import (
    RELATIONS,
    Fact,
    Oracle,
    SyntheticWorld,
    parse_clause,
    render_fact,
    spec_from_record,
    write_synthetic_dataset,
)

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "qa_feedback"


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(7, 120)


def test_deterministic_given_seed():
    a = [q.prompt_record() for q in SyntheticWorld.generate(3, 30).questions]
    b = [q.prompt_record() for q in SyntheticWorld.generate(3, 30).questions]
    c = [q.prompt_record() for q in SyntheticWorld.generate(4, 30).questions]
    assert a == b
    assert a != c


def test_grammar_round_trip_for_every_relation(world):
    for rel in RELATIONS.values():
        e = next(x for x in world.entities.values() if x.type in rel.subject_types)
        f = e.fact(rel.name)
        assert parse_clause(render_fact(f)[:-1]) == f
    # "the year" must not be read as a city name, nor a city as a year.
    assert parse_clause("Doren Valk was born in the year 1950") == Fact("Doren Valk", "birth_year", "1950")
    assert parse_clause("Doren Valk was born in 1950") is None
    assert parse_clause("and the mayor of Meribel is Asha Penn") == Fact("Meribel", "mayor", "Asha Penn")
    assert parse_clause("Meribel has a population of 12,000") == Fact("Meribel", "population", "12,000")


def test_questions_are_distinct_and_prompts_short(world):
    assert len({q.question for q in world.questions}) == len(world.questions)
    words = [len(q.text.split()) for q in world.questions]
    assert 50 <= min(words) and max(words) <= 150


def test_gold_is_perfect_and_spec_parses_back(world):
    oracle = Oracle(world)
    for item in world.questions:
        for rec in (item.prompt_record(), {"question": item.question, "passages": item.feedback_passages()}):
            assert spec_from_record(rec).required == item.required
        fb = oracle.annotate(item.prompt_record(), item.gold)
        assert fb["errors"] == [] and fb["missing-info"] == [], (item.question, item.gold)
        assert oracle.annotate(item.qid, item.gold) == fb


def test_passage_ids_point_at_the_required_sentences(world):
    for item in world.questions[:30]:
        passages = item.feedback_passages()
        for r in item.required:
            sentence = passages[r.passage_id - 1][r.sentence_id]
            assert sentence.endswith(render_fact(r.fact))


@pytest.mark.parametrize(
    "op, expected",
    [
        ("wrong", {"Wrong-Grounding", "Unverifiable"}),
        ("irrelevant", {"Irrelevant"}),
        ("redundant", {"Redundant"}),
        ("unverifiable", {"Unverifiable"}),
        ("incoherent", {"Incoherent"}),
    ],
)
def test_each_perturbation_is_caught_by_the_oracle(world, op, expected):
    oracle = Oracle(world)
    rng = random.Random(0)
    for item in world.questions[:40]:
        resp = world.perturb_answer(item, rng, ops=[op])
        types = {e["error type"] for e in oracle.annotate(item, resp)["errors"]}
        assert types & expected, (op, resp, types)


def test_drop_perturbation_leaves_a_fact_missing(world):
    oracle = Oracle(world)
    rng = random.Random(0)
    for item in world.questions[:40]:
        fb = oracle.annotate(item, world.perturb_answer(item, rng, ops=["drop"]))
        assert fb["errors"] == [] and len(fb["missing-info"]) == 1


def test_corrections_of_random_predictions_are_perfect(world):
    oracle = Oracle(world)
    rng = random.Random(1)
    for item in world.questions:
        resp = world.perturb_answer(item, rng)
        fb = oracle.annotate(item, resp)
        for e in fb["errors"]:
            assert 0 <= e["start"] < e["end"] <= len(resp)
            assert resp[e["start"]:e["end"]].strip() == resp[e["start"]:e["end"]]
        again = oracle.annotate(item, fb["corrected-prediction"])
        assert again["errors"] == [] and again["missing-info"] == [], (resp, fb)


def test_write_dataset_schema_and_cli(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "synth", "--out", str(tmp_path), "--n", "40", "--seed", "5",
                              "--train-frac", "0.5", "--dev-frac", "0.25"])
    assert args.handler(args) == 0
    counts = {}
    for split in ("train", "dev", "test"):
        prompts = json.loads((tmp_path / f"{split}.json").read_text())
        feedback = json.loads((tmp_path / f"{split}_feedback.json").read_text())
        counts[split] = len(prompts)
        assert len(feedback) == len(prompts)
        for p, f in zip(prompts, feedback):
            assert set(p) == {"text", "answer", "passages", "question"}
            assert set(f) == {"question", "passages", "gold", "prediction 1", "prediction 2",
                              "prediction 3", "prediction 4", "feedback", "preference"}
            assert set(f["feedback"]) == {"errors", "missing-info", "corrected-prediction"}
            assert p["text"].startswith(f"question: {p['question']} context: wikipage: ")
            assert p["text"].endswith(" answer:")
            assert len(f["preference"]) == 6 and set(f["preference"]) <= {0, 1, 2}
            oracle = Oracle()
            assert f["feedback"] == oracle.annotate(p, f["prediction 1"])
            preds = [f[f"prediction {i}"] for i in range(1, 5)]
            assert f["preference"] == oracle.preferences(f, preds)
    assert counts == {"train": 20, "dev": 10, "test": 10}
    first = (tmp_path / "train_feedback.json").read_text()
    write_synthetic_dataset(tmp_path / "again", n=40, seed=5, train_frac=0.5, dev_frac=0.25)
    assert (tmp_path / "again" / "train_feedback.json").read_text() == first


@pytest.mark.skipif(not (REAL / "dev400.json").exists(), reason="shared QA-FEEDBACK sample absent")
def test_keys_match_real_qa_feedback(tmp_path):
    write_synthetic_dataset(tmp_path, n=10, seed=0)
    real_p = json.loads((REAL / "dev400.json").read_text())[0]
    real_f = json.loads((REAL / "dev400_feedback.json").read_text())[0]
    syn_p = json.loads((tmp_path / "train.json").read_text())[0]
    syn_f = json.loads((tmp_path / "train_feedback.json").read_text())[0]
    assert set(syn_p) == set(real_p)
    assert set(syn_p["passages"][0]) == set(real_p["passages"][0])
    assert set(syn_f) == set(real_f)
    assert set(syn_f["feedback"]) == set(real_f["feedback"])
    for e in syn_f["feedback"]["errors"]:
        assert set(e) == set(real_f["feedback"]["errors"][0])


def test_bad_split_fractions(tmp_path):
    with pytest.raises(ValueError, match="train_frac"):
        write_synthetic_dataset(tmp_path, n=10, train_frac=0.9, dev_frac=0.2)
