"""Issue 20: edit pairs from the oracle's minimal corrections (alignment, unchanged answers,
Unicode) and the synthetic editor behind a real loopback OpenAI-compatible server, through
`fgrlhf make-edits` (`fgrlhf_ray.pipelines.demo_token_level`). No Ray, no model."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import httpx
import pytest

from fgrlhf_ray.cli import main
from fgrlhf_ray.data.qa_feedback import load_qa_feedback
from fgrlhf_ray.data.rm_data import read_edit_jsonl
from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.infra.ports import free_port
from fgrlhf_ray.pipelines.demo_token_level import (
    EDITOR_MODEL,
    SyntheticEditor,
    SyntheticEditorServer,
    collect_with_make_edits,
    compare_with_direct,
    edit_pairs_from_feedback,
    normalize_text,
    template_pattern,
    word_alignment,
    word_spans,
    write_edit_tasks,
)
from fgrlhf_ray.pipelines.edits import fill_template, load_template

# ------------------------------------------------------------------ alignment


def test_word_alignment_replace_insert_delete():
    a = word_alignment("Ann was born in 1926. Ann likes tea.", "Ann was born in 1941. Ann likes tea. Ann is a baker.")
    orig, new = "Ann was born in 1926. Ann likes tea.", "Ann was born in 1941. Ann likes tea. Ann is a baker."
    assert [orig[s:e] for s, e in a["original_changed"]] == ["1926"]
    assert [new[s:e] for s, e in a["edited_changed"]] == ["1941", "Ann is a baker."]
    assert [op[0] for op in a["opcodes"]] == ["replace", "insert"]
    text = "Ann likes tea, and Bob likes rum."
    d = word_alignment(text, "Ann likes tea.")
    assert [op[0] for op in d["opcodes"]] == ["delete"] and d["edited_changed"] == []
    assert [text[s:e] for s, e in d["original_changed"]] == [", and Bob likes rum"]
    assert d["edited_words"] == 4 and d["original_words"] == 9


def test_word_alignment_unicode_offsets_and_normalisation():
    # Offsets are code points of the unnormalised text; NFD and NFC spellings align as equal.
    nfc = "Zoë Łukasz lives in 東京, near the café."
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc and len(nfd) > len(nfc)
    same = word_alignment(nfc, nfd)
    assert same["opcodes"] == [] and same["original_changed"] == [] and same["edited_changed"] == []
    edited = nfd.replace("東京", "大阪")
    a = word_alignment(nfc, edited)
    (s, e), = a["original_changed"]
    (s2, e2), = a["edited_changed"]
    assert nfc[s:e] == "東京" and edited[s2:e2] == "大阪"
    # a decomposed accent or a Devanagari vowel sign stays inside its word
    assert [nfd[s:e] for s, e in word_spans(nfd)][:2] == [unicodedata.normalize("NFD", "Zoë"),
                                                          unicodedata.normalize("NFD", "Łukasz")]
    hindi = "हिन्दी भाषा"
    assert [hindi[s:e] for s, e in word_spans(hindi)] == ["हिन्दी", "भाषा"]
    # emoji (outside the BMP) count as one code point, not two UTF-16 units
    b = word_alignment("ok 🙂 fine", "ok 🙂 great")
    assert b["original_changed"] == [[5, 9]]


def test_normalize_text():
    assert normalize_text("  a\u00a0 b\n") == "a b"
    assert normalize_text(unicodedata.normalize("NFD", "é")) == "é"


# ------------------------------------------------------------------ edit pairs from feedback


def _row(question: str, pred: str, corrected: str, *others: str) -> dict:
    row = {"question": question, "passages": [["T", "T\n\nT is a place."]], "prediction 1": pred}
    row.update({f"prediction {i}": o for i, o in enumerate(others, start=2)})
    row["feedback"] = {"errors": [], "missing-info": [], "corrected-prediction": corrected}
    return row


def _feedback_file(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_edit_pairs_rules(tmp_path):
    decomposed = unicodedata.normalize("NFD", "Zoë is a café owner.")
    rows = [
        _row("Q1?", "Zoë is a baker. Zoë likes tea.", "Zoë is a baker."),  # a real edit
        _row("Q1?", "Zoë is a baker. Zoë likes tea.", "Zoë is a baker."),  # same answer again: duplicate
        _row("Q2?", "Zoë is a café owner.", decomposed),  # only the Unicode form differs: unchanged
        _row("Q3?", "Bob  is a baker. ", "Bob is a baker."),  # whitespace only: unchanged
        _row("Q4?", "   ", "Bob is a baker."),  # empty answer: nothing to learn from
        _row("Q5?", "Bob is a baker.", ""),  # everything wrong: the empty correction is an edit
    ]
    path = _feedback_file(tmp_path / "fb.json", rows)
    stats: dict = {}
    pairs = edit_pairs_from_feedback(path, stats=stats)
    assert stats == {"rows": 6, "pairs": 2, "skipped_duplicate": 1, "skipped_unchanged": 2,
                     "skipped_empty_prediction": 1}
    assert [(p.original, p.edited) for p in pairs] == [("Zoë is a baker. Zoë likes tea.", "Zoë is a baker."),
                                                        ("Bob is a baker.", "")]
    first = pairs[0]
    assert first.group == "Q1?" and first.prompt.startswith("question: Q1? context: wikipage: T")
    assert [first.original[s:e] for s, e in first.meta["alignment"]["original_changed"]] == ["Zoë likes tea."]
    assert first.meta["row"] == 1
    # kept as "no edit" evidence instead of skipped
    kept_stats: dict = {}
    kept = edit_pairs_from_feedback(path, unchanged="keep", stats=kept_stats)
    assert kept_stats["unchanged_kept"] == 2 and "skipped_unchanged" not in kept_stats
    no_edit = [p for p in kept if p.meta.get("no_edit")]
    assert len(no_edit) == 2 and all(p.original == p.edited for p in no_edit)
    # without de-duplication the repeated answer is a second pair
    assert len(edit_pairs_from_feedback(path, dedupe=False)) == 3
    with pytest.raises(ValueError):
        edit_pairs_from_feedback(path, unchanged="maybe")


# ------------------------------------------------------------------ the synthetic editor


def test_template_pattern_round_trip():
    template = load_template(None)
    pattern = template_pattern(template)
    prompt = "question: Who? context: wikipage: {x} text: a {response} b"
    response = "An answer.\n\nResponse:\nwith the template's own words"
    m = pattern.fullmatch(fill_template(template, prompt=prompt, response=response))
    assert m is not None and m.group("prompt") == prompt and m.group("response") == response
    assert template_pattern("R: {response}\nP: {prompt}").fullmatch("R: x\nP: y").groupdict() == \
        {"response": "x", "prompt": "y"}
    with pytest.raises(ValueError):
        template_pattern("no placeholders")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic world's test feedback rows (the oracle's corrections of perturbed answers)."""
    from fgrlhf_ray.data.synthetic import write_synthetic_dataset

    d = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(d, n=60, seed=3)
    return d / "train_feedback.json"


def test_synthetic_editor_is_the_oracle(synthetic):
    records = load_qa_feedback(synthetic)
    editor = SyntheticEditor(records)
    for rec in records:
        assert editor.edit(rec.prompt, rec.predictions[0]) == rec.corrected
    with pytest.raises(KeyError):
        editor.edit("question: not in the files", "x")


def test_make_edits_through_the_synthetic_editor_equals_the_direct_pairs(synthetic, tmp_path, capsys):
    """The round trip a user runs: `fgrlhf make-edits` against the editor's HTTP endpoint."""
    direct = edit_pairs_from_feedback(synthetic)
    tasks = tmp_path / "tasks.jsonl"
    n_tasks = write_edit_tasks(tasks, synthetic)
    stats: dict = {}
    edit_pairs_from_feedback(synthetic, stats=stats)
    assert n_tasks == stats["rows"] - stats.get("skipped_duplicate", 0) - stats.get("skipped_empty_prediction", 0)
    editor = SyntheticEditor.from_feedback_files([synthetic])
    with SyntheticEditorServer(editor, port=free_port()) as server:
        out = tmp_path / "edits.jsonl"
        rc = main(["make-edits", "--pairs", str(tasks), "--editor-url", server.url + "/v1", "--model", EDITOR_MODEL,
                   "--out", str(out), "--max-rewrite-fraction", "1.0", "--no-progress"])
        assert rc == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        collected = read_edit_jsonl(out)
        cmp = compare_with_direct(direct, collected)
        assert cmp["equal"], cmp
        assert summary["accepted"] == len(direct) and summary["failed"] == 0
        assert summary["rejected_by_reason"] == {"unchanged": stats.get("skipped_unchanged", 0)}
        # the default minimality filter (0.5) rejects exactly the pairs `compare_with_direct` counts
        out2 = tmp_path / "edits_default.jsonl"
        res = collect_with_make_edits(synthetic, out2, url=server.url, max_rewrite_fraction=0.5)
        assert res["rejected_by_reason"].get("rewrites_too_much", 0) == cmp["rejected_as_rewrites_too_much"]
        assert res["accepted"] == len(direct) - cmp["rejected_as_rewrites_too_much"]
        # the completions API answers the same edit; replies say they are synthetic
        rec = load_qa_feedback(synthetic)[0]
        text = fill_template(load_template(None), prompt=rec.prompt, response=rec.predictions[0])
        r = httpx.post(server.url + "/v1/completions", json={"model": EDITOR_MODEL, "prompt": text})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == rec.corrected
        assert r.json()["system_fingerprint"] == "fgrlhf-synthetic-oracle-editor"
        assert "synthetic" in r.headers["X-Fgrlhf-Editor"]
        # an unknown question or a foreign message is a row failure (400), another model a 404
        bad = fill_template(load_template(None), prompt="question: unknown?", response="x")
        assert httpx.post(server.url + "/v1/completions", json={"model": EDITOR_MODEL, "prompt": bad}).status_code == 400
        assert httpx.post(server.url + "/v1/chat/completions", json={
            "model": EDITOR_MODEL, "messages": [{"role": "user", "content": "hello"}]}).status_code == 400
        assert httpx.post(server.url + "/v1/chat/completions", json={
            "model": "gpt-x", "messages": [{"role": "user", "content": text}]}).status_code == 404
        with pytest.raises(ConfigError):
            collect_with_make_edits(synthetic, tmp_path / "x.jsonl", url=server.url, model="gpt-x")


@pytest.mark.slow
def test_stage_runs_end_to_end_on_a_tiny_encoder(synthetic, tmp_path):
    """The demo stage: pairs, make-edits through the endpoint, both RMs (2 steps of a tiny random
    encoder: numbers meaningless), their quality beside the baselines, a JSON-able result."""
    from fgrlhf_ray.pipelines.demo_token_level import stage_token_level_rm
    from fgrlhf_ray.rewards.tiny import build_tiny_bert

    backbone = str(build_tiny_bert(tmp_path / "backbone", hidden_size=32, num_layers=1, seed=0))
    res = stage_token_level_rm(tmp_path / "stage", train_feedback=str(synthetic), dev_feedback=str(synthetic),
                               test_feedback=str(synthetic), backbone=backbone, steps=2, train_examples=32, seed=0,
                               token_settings={"lr": 1e-3})
    json.dumps(res)
    assert res["make_edits"]["train"]["vs_direct"]["equal"]
    assert res["rms"]["token_level"]["train_pairs"] == 32 and res["rms"]["token_level"]["steps"] == 2
    assert res["rms"]["token_level"]["normalization"]["std"] > 0
    q = res["quality"]
    assert q["n_pairs"] == res["pairs"]["test"]["pairs"] > 0
    assert 0 <= q["token_level"]["sum_accuracy"] <= 1 and 0 <= q["sequence"]["accuracy"] <= 1
    assert set(q["token_level"]["baselines"]) == {"prefer_shorter", "prefer_longer"}
    assert res["target"]["target"] == 0.9 and isinstance(res["target"]["reached"], bool)
