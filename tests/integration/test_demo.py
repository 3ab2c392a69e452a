"""`fgrlhf demo --quick`: the main job end to end at smoke-test sizes.

Synthetic world → SFT → policy samples annotated by the oracle (a vLLM engine in
`fgrlhf data sample-feedback`) → four reward models trained on them and judged on held-out
policy samples → fine-grained and holistic PPO in both arms (learned RMs; the oracle as
function scorers) through the real trainer (Ray, vLLM-CPU rollouts, scorer actors,
DeepSpeed learner) → oracle evaluation → report.md / results.json / curves.png. A second invocation reuses every
finished stage. The numbers of a quick run mean nothing; that they exist, are finite and
are consistent does.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fgrlhf_ray.inspector.render import read_page_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

ARMS = ("learned", "oracle")
METHODS = {"learned": ("fine_grained", "holistic", "token_level"),  # token-level PPO (paper B): learned arm only
           "oracle": ("fine_grained", "holistic")}
STAGES = ("data", "sft", "samples", "rm", "rm_quality", "rm_token_level",
          *(f"ppo/{arm}/{m}/seed0" for arm in ARMS for m in METHODS[arm]), "evaluate", "inspect")


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "demo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1500)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_demo_quick_end_to_end_then_reuses_stages(tmp_path):
    out = tmp_path / "demo"
    first = demo("--quick", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-6000:]
    for name in ("report.md", "results.json", "curves.png", "inspect.html"):
        assert (out / name).is_file(), name
        assert str(out / name) in first.stdout  # the CLI says where its outputs are

    width, height = png_size(out / "curves.png")
    assert width >= 300 and height >= 200

    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == set(ARMS)
    for arm in ARMS:
        summary = results["arms"][arm]["summary"]
        assert set(summary) == {"sft", *METHODS[arm]}
        for method, metrics in summary.items():
            for name in ("mean_quality_ratio", "win_rate_vs_sft", "missing_rate", "frac_with_any_error",
                         "shape/words_per_answer", "shape/sub_sentences_per_answer"):
                mean, std = metrics[name]
                assert math.isfinite(mean) and math.isfinite(std), (arm, method, name, metrics[name])
            assert 0.0 <= metrics["win_rate_vs_sft"][0] <= 1.0
        # The SFT policy against itself: every comparison is a tie.
        assert summary["sft"]["win_rate_vs_sft"][0] == pytest.approx(0.5)
        # One oracle evaluation per saved checkpoint (step 0 = SFT, then every eval_every steps).
        for method in METHODS[arm]:
            steps = [point["step"] for point in results["curves"][arm][method]["0"]]
            assert steps[0] == 0 and steps[-1] == 2, (arm, method, steps)
        comp = results["arms"][arm]["comparison"]
        assert math.isfinite(comp["diff"]) and comp["se"] >= 0 and "test questions" in comp["basis"]
    report = (out / "report.md").read_text()
    assert "| metric | SFT | holistic PPO | fine-grained PPO |" in report
    assert "## Arm: learned reward models" in report and "## Arm: oracle rewards" in report
    assert "![oracle metrics vs PPO steps](curves.png)" in report
    for verdict in results["verdict"].values():
        assert verdict in report

    # inspect.html: every policy's answers, the learned fine-grained RMs' marks and the oracle's labels.
    page = read_page_data(out / "inspect.html")
    assert page["policies"] == ["sft", *(f"{arm}/{m}" for arm in ARMS for m in METHODS[arm])]
    assert [m["name"] for m in page["models"]] == ["relevance", "factuality", "completeness"]
    assert page["label_sources"] == ["oracle"]
    assert len(page["responses"]) == len(page["policies"]) * len(page["groups"]) > 0

    # The RM data are the SFT policy's own samples, annotated; the RMs were judged on held-out ones.
    samples = results["policy_samples"]
    rows = json.loads(Path(samples["files"]["train"]).read_text())
    assert len(rows) == 16 * 4 and all("feedback" in r and "preference" in r for r in rows)
    for name in ("relevance", "factuality"):
        q = results["rm_quality"][name]
        assert 0.0 <= q["policy_samples"][q["metric"]] <= 1.0 and q["baselines"], name
    for name in ("completeness", "holistic"):  # the 40-step policy's samples may all tie: then it says so
        q = results["rm_quality"][name]["policy_samples"]
        assert 0.0 <= q.get("accuracy", 0.0) <= 1.0 and ("accuracy" in q or "examples" in q["error"]), name

    # Paper B: edit pairs of the policy's answers, the same through make-edits and the synthetic editor
    # endpoint, a token-level and a sequence-level RM judged on the held-out test questions' pairs.
    token = results["token_level_rm"]
    assert token["pairs"]["train"]["rows"] == 16 * 4 and token["make_edits"]["train"]["vs_direct"]["equal"]
    for key in ("sum_accuracy", "changed_token_sign_accuracy"):
        assert 0.0 <= token["quality"]["token_level"][key] <= 1.0, key
    assert 0.0 <= token["quality"]["sequence"]["accuracy"] <= 1.0
    assert results["rm_quality"]["token_level"]["metric"] == "sum_accuracy"
    assert "| metric | SFT | holistic PPO | fine-grained PPO | token-level PPO |" in report
    assert "## Paper B: token-level vs sequence-level RM" in report
    assert "token_level" in (out / "ppo" / "learned" / "token_level" / "seed0" / "config.yaml").read_text()

    # Every PPO run went through the real trainer and logged every step, answer shape included;
    # the oracle arm's rewards came from the function scorers.
    for arm in ARMS:
        for method in METHODS[arm]:
            run = out / "ppo" / arm / method / "seed0"
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in rows if "reward/total_mean" in r]
            assert [r["step"] for r in steps] == [1, 2]
            assert all(r["shape/sub_sentences_per_answer"] > 0 for r in steps)
            assert all(r["sync/probe_gap"] <= 1e-2 for r in rows if "sync/probe_gap" in r)
            config = (run / "config.yaml").read_text()
            assert ("fgrlhf_ray.data.oracle_scorers" in config) == (arm == "oracle"), (arm, method)

    # Re-running reuses every finished stage (no Ray, no training) and rewrites the same report.
    second = demo("--quick", "--out", str(out), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    for stage in STAGES:
        assert f"[demo] {stage}: done before" in second.stdout, (stage, second.stdout[-3000:])
    assert "running →" not in second.stdout
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]
