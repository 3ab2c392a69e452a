"""`fgrlhf inspect` and the demo's `write_demo_inspection`: the three input formats, the reward
config kinds, `--url` scoring through a fake `/v1/score` server, and exit status 2 with a
message naming the file and line (or field) for bad input. Function scorers only: no Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from fgrlhf_ray.cli import main
from fgrlhf_ray.errors import ConfigError, DataError
from fgrlhf_ray.inspector import write_demo_inspection
from fgrlhf_ray.inspector.inputs import load_reward_setup, read_items
from fgrlhf_ray.inspector.page_data import Item
from fgrlhf_ray.inspector.scoring import score_items, served_scorers

WORDS = "fgrlhf_ray.serve.testing:word_count_reward"
BREVITY = "fgrlhf_ray.rewards.builtin:brevity"


def page_of(path: Path) -> dict:
    html = path.read_text()
    return json.loads(re.search(r'<script type="application/json" id="fgrlhf-data">(.*?)</script>', html, re.S).group(1))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def reward_yaml(tmp_path) -> Path:
    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump({"reward_models": [
        {"name": "words", "kind": "function", "target": WORDS, "density": "sequence", "weight": 0.5}]}))
    return path


def test_generations_of_two_policies_become_one_page_side_by_side(tmp_path, reward_yaml, capsys):
    rows = [{"prompt": "question: a? answer:", "prompt_index": 0, "sample": 0, "response": "one two three", "rewards": {}},
            {"prompt": "question: b? answer:", "prompt_index": 1, "sample": 0, "response": "four"}]
    sft = write_jsonl(tmp_path / "sft.generations.jsonl", rows)
    ppo = write_jsonl(tmp_path / "ppo.jsonl", [dict(r, response=r["response"] + " more") for r in rows])
    out = tmp_path / "page" / "inspect.html"
    assert main(["inspect", "--data", str(sft), "--data", f"fine={ppo}", "--reward-config", str(reward_yaml),
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    data = page_of(out)
    assert data["policies"] == ["sft", "fine"] and [g["responses"] for g in data["groups"]] == [[0, 2], [1, 3]]
    r = data["responses"][2]
    assert r["source"] == f"{ppo}:1" and r["marks"]["words"] == [[0, 18, None, None, 0.4, 0.2]]
    assert r["metrics"]["total"] == pytest.approx(0.2) and data["models"][0]["weight"] == 0.5
    assert data["token_source"].startswith("whitespace words")


def test_filter_keeps_matching_responses_and_limit_counts_prompts(tmp_path, reward_yaml):
    rows = [{"prompt": f"q{i}", "response": " ".join(["w"] * (i + 1))} for i in range(6)]
    data_file = write_jsonl(tmp_path / "x.jsonl", rows)
    out = tmp_path / "f.html"
    assert main(["inspect", "--data", str(data_file), "--reward-config", str(reward_yaml), "--out", str(out),
                 "--filter", "words >= 3 and words.weighted < 0.25", "--limit", "5"]) == 0
    assert [r["metrics"]["words"] for r in page_of(out)["responses"]] == [3, 4]


def test_qa_feedback_predictions_are_samples_with_human_labels(tmp_path):
    record = {"question": "Who?", "passages": [["T", "Ann won."]], "prediction 1": "Ann won. Bob lost.",
              "prediction 2": "Bob won.", "feedback": {"errors": [{"error type": "Unverifiable", "start": 9, "end": 18}],
                                                      "missing-info": [], "corrected-prediction": "Ann won."}}
    path = tmp_path / "fb.json"
    path.write_text(json.dumps([record]))
    items = read_items(str(path))
    assert [(i.sample, i.policy) for i in items] == [(0, "fb"), (1, "fb")]
    assert items[0].prompt == "question: Who? context: wikipage: T text: Ann won."
    assert items[0].labels["human"]["errors"] == [{"error type": "Unverifiable", "start": 9, "end": 18}]
    assert items[1].labels == {} and items[0].source == f"{path}: row 1, prediction 1"
    # Labels only (no reward models): still a page.
    out = tmp_path / "l.html"
    assert main(["inspect", "--data", str(path), "--out", str(out)]) == 0
    assert page_of(out)["responses"][0]["labels"]["human"] == [[9, 18, "Unverifiable", ""]]


@pytest.mark.parametrize("line, message", [
    ("not json", r"x.jsonl:2: not valid JSON"),
    ('{"prompt": "q"}', r"x.jsonl:2: 'response' must be a string, got missing"),
    ('{"prompt": "", "response": "r"}', r"x.jsonl:2: 'prompt' must be a non-empty string"),
    ('{"prompt": "q", "response": 3}', r"x.jsonl:2: 'response' must be a string, got a int"),
    ('{"prompt": "q", "response": "r", "sample": -1}', r"x.jsonl:2: 'sample' must be a non-negative integer"),
    ('{"prompt": "q", "response": "r", "feedback": {"errors": [{"start": 0, "end": 9}]}}',
     r"x.jsonl:2: feedback.errors\[0\]: span \[0, 9\) is not inside the response \(length 1\)"),
    ("[1, 2]", r"x.jsonl:2: expected an object"),
])
def test_bad_rows_exit_2_naming_file_and_line(tmp_path, reward_yaml, capsys, line, message):
    path = write_jsonl(tmp_path / "x.jsonl", ['{"prompt": "q", "response": "fine"}', line])
    assert main(["inspect", "--data", str(path), "--reward-config", str(reward_yaml),
                 "--out", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "o.html").exists()


def test_bad_qa_feedback_row_and_bad_arguments_exit_2(tmp_path, reward_yaml, capsys):
    path = tmp_path / "fb.json"
    path.write_text(json.dumps([{"question": "q", "prediction 1": "a"}, {"question": "", "prediction 1": "b"}]))
    assert main(["inspect", "--data", str(path), "--reward-config", str(reward_yaml)]) == 2
    assert "fb.json: row 2: 'question' must be a non-empty string" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "response": "r"}])
    cases = [
        (["--reward-config", str(reward_yaml), "--filter", "wrds.flagged > 1"], "--filter: filter: unknown reward model"),
        (["--reward-config", str(reward_yaml), "--models", "nope"], "--models: " + str(reward_yaml) + " has no reward model 'nope'"),
        ([], "nothing to show: give --reward-config FILE"),
        (["--reward-config", str(tmp_path / "missing.yaml")], "--reward-config: file not found"),
        (["--reward-config", str(reward_yaml), "--limit", "0"], "--limit must be >= 1"),
        (["--reward-config", str(reward_yaml), "--out", str(tmp_path)], "is a folder"),
    ]
    for extra, message in cases:
        assert main(["inspect", "--data", str(good), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def test_scorer_user_errors_name_the_model_and_items(tmp_path, capsys):
    config = tmp_path / "oracle.yaml"
    config.write_text(yaml.safe_dump({"reward_models": [
        {"name": "relevance", "kind": "function", "target": "fgrlhf_ray.data.oracle_scorers:relevance",
         "density": "sub_sentence"}]}))
    data = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "not a synthetic prompt", "response": "r"}])
    assert main(["inspect", "--data", str(data), "--reward-config", str(config), "--out", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err
    assert f"reward model 'relevance' on {data}:1: oracle scorer: prompt" in err and "Traceback" not in err


def test_reward_config_kinds(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"preset": "short", "policy": {"model_path": str(tmp_path)}, "reward_models": [
        {"name": "relevance", "kind": "function", "target": WORDS, "density": "sequence", "weight": 0.3}]}))
    setup = load_reward_setup(run)
    assert setup.kind == "training" and setup.weights == {"relevance": 0.4} and setup.tokenizer is None
    (tmp_path / "tokenizer.json").write_text("{}")
    assert load_reward_setup(run).tokenizer == str(tmp_path)  # the policy's own tokenizer for the strip
    serve = tmp_path / "serve.yaml"
    serve.write_text(yaml.safe_dump({"port": 8123, "tokenizer": "/tok", "reward_models": [
        {"name": "words", "kind": "function", "target": WORDS, "density": "sequence", "weight": 2.0,
         "serve": {"max_batch_size": 4}}]}))
    setup = load_reward_setup(serve)
    assert setup.kind == "serve" and setup.weights == {"words": 2.0} and setup.tokenizer == "/tok"
    evaluation = tmp_path / "eval.yaml"
    evaluation.write_text(yaml.safe_dump({"batch_prompts": 8, "reward_models": [
        {"name": "words", "kind": "function", "target": WORDS, "density": "sequence"}]}))
    assert load_reward_setup(evaluation).kind == "eval"
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward_models:\n  - name: words\n    kind: function\n    target: x:y\n    densty: sequence\n")
    with pytest.raises(ConfigError, match=r"line 5: reward_models.0.densty: unknown field — did you mean `density`"):
        load_reward_setup(bad)
    bad_serve = tmp_path / "bad_serve.yaml"
    bad_serve.write_text(yaml.safe_dump({"port": 1, "reward_models": [{"name": "w", "kind": "function", "target": WORDS,
                                                                        "density": "token_level"}]}))
    with pytest.raises(ConfigError, match=r"line 3: reward_models.0.density: Input should be"):
        load_reward_setup(bad_serve)


class FakeServe:
    """`/v1/models` + `/v1/score` of a server with one sentence model (error on sentences with 'bad')."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.scored: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"error": "unauthorized", "reason": "missing bearer token"})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"app": "a", "auth_required": bool(self.token), "tokenizer": None,
                                             "limits": {"max_items": 2, "max_body_bytes": 10**6, "max_chars": 10**4,
                                                        "max_token_offsets": 100},
                                             "models": [{"name": "fact", "kind": "function", "density": "sentence",
                                                         "weight": 0.5, "normalization": {"mean": 0.0, "std": 2.0},
                                                         "max_batch_size": 4, "replicas": {"num_replicas": 1}}]})
        body = json.loads(request.content)
        self.scored.append(body)
        results = []
        for k, item in enumerate(body["items"]):
            text, segs, at = item["response"], [], 0
            for part in text.split(". "):
                end = at + len(part) + (1 if at + len(part) < len(text) else 0)
                bad = "bad" in part
                segs.append({"char_start": at, "char_end": min(end, len(text)), "label": "error" if bad else "no_error",
                             "value": -1.0 if bad else 1.0, "probability": 0.9})
                at = end + 1
            results.append({"index": k, "scores": {"fact": {"density": "sentence", "segments": segs,
                                                            "raw_total": sum(s["value"] for s in segs)}}})
        return httpx.Response(200, json={"models": ["fact"], "results": results})


def test_url_scoring_uses_the_servers_models_weights_and_token(monkeypatch):
    server = FakeServe(token="s3cret")
    transport = httpx.MockTransport(server)
    monkeypatch.setenv("INSPECT_TOKEN", "s3cret")
    scorers = served_scorers("http://serve.test:8000", token_env="INSPECT_TOKEN", transport=transport)
    assert [(m.name, m.weight, m.std) for m in scorers.models] == [("fact", 0.5, 2.0)]
    items = [Item("q", f"Sentence {i} is fine. This one is bad.") for i in range(3)]
    verdicts = score_items(scorers, items)
    assert [[s.label for s in v.segments] for v in verdicts["fact"]] == [["no_error", "error"]] * 3
    assert [len(b["items"]) for b in server.scored] == [2, 1]  # the server's max_items per request
    monkeypatch.delenv("INSPECT_TOKEN")
    with pytest.raises(Exception, match="wants a bearer token .*INSPECT_TOKEN"):
        served_scorers("http://serve.test:8000", token_env="INSPECT_TOKEN", transport=transport)
    with pytest.raises(ConfigError, match="serves no model 'nope'; it serves fact"):
        served_scorers("http://serve.test:8000", models=["nope"], transport=httpx.MockTransport(FakeServe()))


def test_url_that_is_not_a_server_exits_2(tmp_path, capsys):
    good = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "response": "r"}])
    assert main(["inspect", "--data", str(good), "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err
    assert "--url http://127.0.0.1:9: cannot reach the server" in err and "Traceback" not in err
    assert main(["inspect", "--data", str(good), "--url", "ftp://x"]) == 2
    assert "is not an http(s):// URL" in capsys.readouterr().err


# -------------------------------------------------------------- the demo's page


def test_write_demo_inspection_scores_every_policy_and_adds_oracle_labels(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path / "syn"), "--n", "30", "--seed", "1"]) == 0
    records = json.loads((tmp_path / "syn" / "test.json").read_text())[:3]
    answers = {"sft": [r["answer"] if isinstance(r["answer"], str) else r["answer"][0] for r in records],
               "fine_grained": [["Nobody knows.", "It is a bad answer, and it rambles on and on."]] * 3}
    rms = [{"name": "relevance", "kind": "function", "target": "fgrlhf_ray.data.oracle_scorers:relevance",
            "density": "sub_sentence", "weight": 0.3},
           {"name": "brevity", "kind": "function", "target": BREVITY, "density": "sequence", "weight": 0.1}]
    out = write_demo_inspection(tmp_path / "demo" / "inspect.html", records, answers, rms, oracle_labels=True)
    data = page_of(out)
    assert data["policies"] == ["sft", "fine_grained"] and data["label_sources"] == ["oracle"]
    assert len(data["groups"]) == 3 and len(data["responses"]) == 3 + 6
    assert [r["sample"] for r in data["responses"][3:5]] == [0, 1]
    gold = data["responses"][0]
    assert gold["stats"]["oracle"]["flagged"] == 0 and gold["stats"]["relevance"]["flagged"] == 0
    bad = data["responses"][3]
    assert bad["stats"]["oracle"]["flagged"] >= 1 and bad["stats"]["relevance"]["flagged"] >= 1
    # Labels given as data instead of the oracle; reward_config as a mapping with a preset.
    fb = {"errors": [{"error type": "Irrelevant", "start": 0, "end": 6}], "missing-info": []}
    out2 = write_demo_inspection(tmp_path / "i2.html", ["question: q? answer:"], {"p": ["Hello there."]},
                                 {"reward_models": rms[1:]}, oracle_labels={"p": [fb]})
    assert page_of(out2)["responses"][0]["labels"]["oracle"] == [[0, 6, "Irrelevant", ""]]
    assert page_of(write_demo_inspection(tmp_path / "i3.html", ["q"], {"p": ["a b"]}))["models"] == []


def test_write_demo_inspection_refuses_inputs_that_do_not_fit(tmp_path):
    with pytest.raises(DataError, match="policy 'p' has 1 answers for 2 questions"):
        write_demo_inspection(tmp_path / "x.html", ["q1", "q2"], {"p": ["a"]})
    with pytest.raises(ConfigError, match="oracle_labels=True needs question records"):
        write_demo_inspection(tmp_path / "x.html", ["q1"], {"p": ["a"]}, oracle_labels=True)
    with pytest.raises(ConfigError, match=r"reward_config\[0\]: invalid configuration"):
        write_demo_inspection(tmp_path / "x.html", ["q1"], {"p": ["a"]}, [{"name": "x", "kind": "function"}])
    with pytest.raises(DataError, match=r"question 0: oracle labels: feedback.errors\[0\]"):
        write_demo_inspection(tmp_path / "x.html", ["q1"], {"p": ["a"]},
                              oracle_labels={"p": [{"errors": [{"start": 0, "end": 5}]}]})
