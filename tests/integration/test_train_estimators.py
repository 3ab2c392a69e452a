"""`fgrlhf train` with the critic-free estimators and one-step-off rollouts, end to end.

Real CLI, local Ray cluster, vLLM-CPU engine, function scorers in scorer actors, DeepSpeed
learner. `grpo` runs with `rollout.async_steps: 1`; its driver is SIGKILLed after the
step-2 checkpoint (with step 3's batch in flight) and `--resume auto` finishes the run: the
steps' prompt batches, recorded by the scorer, are the sampler's batches in order — none
skipped, none repeated. `reinforce_pp` runs with one sample per prompt and the KL as a loss
term. Neither builds a critic: no critic engine, no value loss, no critic in checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import QUESTIONS, fgrlhf, read_metrics
from test_train import write_config as write_train_config

from fgrlhf_ray.data.prompts import PromptSampler

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]


def write_config(tmp_path: Path, policy: Path, *, total_steps: int, estimator: str, n: int, async_steps: int = 0,
                 **ppo) -> Path:
    """test_train's run with `estimator`, n samples per prompt, a scorer that records each step's prompts."""
    return write_train_config(tmp_path, policy, total_steps, overrides={
        "rollout": {"async_steps": async_steps, "sampling": {"n_samples_per_prompt": n}},
        "reward_models": [
            {"name": "grounded", "kind": "function", "density": "sentence", "weight": 0.5,
             "target": "fgrlhf_ray.rewards.builtin:prompt_grounded_sentences", "num_cpus": 0.5},
            {"name": "brevity", "kind": "function", "density": "sequence", "weight": 0.3,
             "target": "fgrlhf_ray.testing:recording_brevity", "num_cpus": 0.5},
        ],
        "ppo": {"minibatch_size": 2 * n, "advantage_estimator": estimator, **ppo},
        "checkpoint": {"keep_last": 3},
    })


def assert_no_critic(run_dir: Path, rows: list[dict]) -> None:
    for row in rows:
        assert "policy_loss" in row and "value_loss" not in row and "critic_grad_norm" not in row, sorted(row)
    for ckpt in (run_dir / "checkpoints").glob("step_*"):
        assert (ckpt / "policy").is_dir() and not (ckpt / "critic").exists(), ckpt
        assert not (ckpt / "deepspeed" / "critic").exists(), ckpt
        assert json.loads((ckpt / "learner_state.json").read_text())["critic"] is False


def test_grpo_async_killed_and_resumed_trains_every_batch_once(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir, total_steps=4, estimator="grpo", n=2, async_steps=1)
    record = tmp_path / "scored.jsonl"
    env = {**os.environ, "FGRLHF_RECORD_FILE": str(record)}
    env.pop("RAY_ADDRESS", None)
    ckpts = tmp_path / "run" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "fgrlhf_ray.cli", "train", "--config", str(config)],
                            cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while not ((ckpts / "latest").is_file() and (ckpts / "latest").read_text().strip() == "step_000002"):
        assert proc.poll() is None, f"run ended early: {proc.stderr.read()[-4000:]}"
        assert time.time() < deadline, "no step-2 checkpoint in 900 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, without warning
    proc.wait(timeout=60)
    state = json.loads((ckpts / "step_000002" / "controller.json").read_text())
    assert state["pending"] is not None, "step 3's batch was in flight: the checkpoint must hold it"
    scored_before = [json.loads(line)["prompts"] for line in record.read_text().splitlines()]
    record.unlink()

    os.environ["FGRLHF_RECORD_FILE"] = str(record)  # fgrlhf() passes os.environ on
    try:
        resumed = fgrlhf("train", "--config", str(config), "--resume", "auto", cwd=tmp_path)
    finally:
        del os.environ["FGRLHF_RECORD_FILE"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    scored_after = [json.loads(line)["prompts"] for line in record.read_text().splitlines()]

    sampler = PromptSampler(QUESTIONS, seed=3, shuffle=True)
    expected = [sampler.next_batch(2) for _ in range(4)]
    assert scored_before[:2] == expected[:2]  # (a third line: step 3's batch, scored before the kill)
    assert scored_after == expected[2:], "the resumed run trained steps 3-4 on the in-flight batch and the next"
    assert scored_after[0] == state["pending"]["prompts"]

    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 0.0, 1.0]  # the resumed batch: fresh weights
    assert all("time/generate_next" in r for r in rows)
    assert_no_critic(tmp_path / "run", rows)


def test_reinforce_pp_with_kl_loss_trains_without_a_critic(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir, total_steps=2, estimator="reinforce_pp", n=1, kl_in="loss",
                          kl_coef=0.05)
    run = fgrlhf("train", "--config", str(config), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["kl_loss"] >= 0.0 and row["sync/probe_gap"] <= 1e-2
        assert row["rollout/staleness"] == 0.0
    assert_no_critic(tmp_path / "run", rows)
