"""Batch arithmetic: one pure rule (`batch_geometry`) checked by the config before Ray starts and
by the learner as a guard; `fgrlhf config validate` reports it with exit 2."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fgrlhf_ray.config import DEFAULT_MAX_MICRO_BATCH, RunConfig, batch_geometry
from fgrlhf_ray.types import Experience
from fgrlhf_ray.workers.learner import LearnerSettings, PPOLearner

REPO = Path(__file__).resolve().parents[2]
ONE_RM = {"reward_models": [{"name": "h", "kind": "sequence_preference", "path": "x", "density": "sequence"}]}


def config(prompts: int, n: int, minibatch: int, **learner) -> RunConfig:
    return RunConfig.model_validate({**ONE_RM, "ppo": {"prompts_per_step": prompts, "minibatch_size": minibatch},
                                     "rollout": {"sampling": {"n_samples_per_prompt": n}}, "learner": learner})


def workable_by_loop(R: int, M: int, W: int, micro: int) -> bool:
    """Plain-loop reference: deal R samples to W ranks, cut each shard into minibatches of M / W and
    those into micro-batches; workable iff every piece is whole and the same size on every rank."""
    if M % W:
        return False
    shards = [list(range(r, R, W)) for r in range(W)]
    per_rank = M // W
    if any(len(s) != len(shards[0]) for s in shards) or per_rank == 0:
        return False
    for shard in shards:
        minibatches = [shard[i:i + per_rank] for i in range(0, len(shard), per_rank)]
        if not minibatches or any(len(mb) != per_rank for mb in minibatches):
            return False
        for mb in minibatches:
            if any(len(mb[j:j + micro]) != micro for j in range(0, len(mb), micro)):
                return False
    return True


def test_batch_geometry_agrees_with_a_plain_loop():
    for R, M, W, micro in itertools.product(range(1, 13), range(1, 13), (1, 2, 3), (1, 2, 3, 4)):
        try:
            g = batch_geometry(rollout_batch=R, minibatch_size=M, world_size=W, micro_batch_size=micro)
        except ValueError:
            ok = False
        else:
            ok = True
            assert g.grad_accum_steps * micro * W == M and g.optimizer_steps_per_epoch * M == R
        assert ok == workable_by_loop(R, M, W, micro), (R, M, W, micro)


def test_issue_example_fails_in_the_config_with_fields_and_allowed_values():
    with pytest.raises(ValueError) as info:
        config(6, 1, 4)
    text = str(info.value)
    for piece in ("ppo.minibatch_size (4)", "ppo.prompts_per_step × rollout.sampling.n_samples_per_prompt = 6",
                  "Allowed ppo.minibatch_size: 1, 2, 3, 6"):
        assert piece in text, text


def test_allowed_values_account_for_ranks_and_micro_batch():
    with pytest.raises(ValueError, match=r"Allowed ppo.minibatch_size: 4, 8 \(the divisors of 8 that are multiples "
                                         r"of learner.world_size × learner.micro_batch_size = 4\)"):
        config(8, 1, 6, world_size=2, micro_batch_size=2)
    with pytest.raises(ValueError, match=r"learner.micro_batch_size \(3\) does not divide .* allowed "
                                         r"learner.micro_batch_size: 1, 2, 4, 8"):
        config(16, 1, 8, micro_batch_size=3)
    with pytest.raises(ValueError, match=r"learner.grad_accum_steps \(3\) contradicts .* set it to 2"):
        config(16, 1, 8, grad_accum_steps=3)


def test_micro_batch_is_derived_when_unset():
    assert config(16, 1, 8).batch_geometry().micro_batch_size == DEFAULT_MAX_MICRO_BATCH == 4  # the old default
    assert config(2, 1, 2).batch_geometry().micro_batch_size == 2
    assert config(6, 1, 6).batch_geometry().micro_batch_size == 3
    assert config(16, 1, 8, micro_batch_size=8).batch_geometry().grad_accum_steps == 1


def test_learner_guard_is_the_config_rule():
    """PPOLearner.train_step refuses a batch with the same message the config validator gives."""
    learner = PPOLearner.__new__(PPOLearner)  # no engines: the guard runs before any of them
    learner.settings = LearnerSettings(policy_path="unused", minibatch_size=4, micro_batch_size=None)
    learner.world_size = 1
    learner.geometry = batch_geometry(rollout_batch=None, minibatch_size=4, world_size=1, micro_batch_size=None)
    zeros = torch.zeros(6, 3)
    exp = Experience(sequences=torch.zeros(6, 5, dtype=torch.long), attention_mask=torch.ones(6, 5, dtype=torch.long),
                     action_mask=torch.ones(6, 3), old_logprobs=zeros, ref_logprobs=zeros, old_values=zeros,
                     rewards=zeros, advantages=zeros, returns=zeros)
    with pytest.raises(ValueError) as from_config:
        config(6, 1, 4)
    with pytest.raises(ValueError) as from_learner:
        learner.train_step(exp)
    rule = str(from_learner.value).split("; ", 1)[1]
    assert rule in str(from_config.value)


def test_validate_cli_exits_2_before_ray_with_the_batch_message(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo: {prompts_per_step: 6, minibatch_size: 4}\n"
                    "rollout: {sampling: {n_samples_per_prompt: 1}}\n"
                    "reward_models: [{name: r, kind: token_level, path: p, density: token}]\n")
    result = subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "config", "validate", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ppo.minibatch_size (4) does not divide the rollout batch" in result.stderr
    assert "Allowed ppo.minibatch_size: 1, 2, 3, 6" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_removed_shared_backbone_is_an_unknown_field_with_the_reason(tmp_path):
    from fgrlhf_ray.config import load_config
    from fgrlhf_ray.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("learner: {critic: {shared_backbone: true}}\n"
                    "reward_models: [{name: r, kind: token_level, path: p, density: token}]\n")
    with pytest.raises(ConfigError, match=r"line 1: learner.critic.shared_backbone: unknown field \(removed: "):
        load_config(path)


def test_config_files_saved_with_the_removed_fields_default_still_load(tmp_path):
    """Runs saved before the removal wrote `shared_backbone: false` (today's behaviour) into config.yaml."""
    from fgrlhf_ray.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("learner: {critic: {shared_backbone: false, model_path: null}}\n"
                    "reward_models: [{name: r, kind: token_level, path: p, density: token}]\n")
    assert load_config(path).learner.critic.model_path is None
