"""The trainer's pure helpers: config → learner settings, cluster sizing, checkpoint compatibility."""

from __future__ import annotations

import pytest
import yaml

from fgrlhf_ray.config import RunConfig
from fgrlhf_ray.config import load_config
from fgrlhf_ray.errors import ConfigError, FgrlhfError
from fgrlhf_ray.launch.placement import required_cpus
from fgrlhf_ray.launch.trainer import Trainer, _incompatible, learner_settings

RMS = [
    {"name": "grounded", "kind": "function", "density": "sentence",
     "target": "fgrlhf_ray.rewards.builtin:prompt_grounded_sentences", "num_replicas": 2, "num_cpus": 0.5},
    {"name": "brevity", "kind": "function", "density": "sequence", "target": "fgrlhf_ray.rewards.builtin:brevity"},
]


def make_config(**overrides) -> RunConfig:
    return RunConfig.model_validate({"reward_models": RMS, **overrides})


def test_learner_settings_follow_the_config():
    config = make_config(ppo={"lr": 3e-5, "minibatch_size": 8, "ppo_epochs": 2, "dual_clip": 3.0},
                         learner={"zero_stage": 2, "micro_batch_size": 2, "lora": {"enabled": True, "r": 4}})
    kw = learner_settings(config, pad_token_id=7)
    assert kw.lr == 3e-5 and kw.zero_stage == 2 and kw.micro_batch_size == 2
    assert kw.minibatch_size == 8 and kw.ppo_epochs == 2 and kw.dual_clip == 3.0
    assert kw.grad_accum_steps is None  # derived by the learner from minibatch / (world × micro)
    assert kw.lora.r == 4 and kw.pad_token_id == 7 and kw.seed == config.seed
    assert learner_settings(make_config(), pad_token_id=0).lora is None


def test_shared_critic_backbone_is_refused_with_the_field_name(tmp_path):
    # The field is gone: the config loader names it as unknown, with why, before anything starts.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_config().model_dump(mode="json")))
    with pytest.raises(ConfigError, match="learner.critic.shared_backbone"):
        load_config(path, ["learner.critic.shared_backbone=true"])


def test_required_cpus_counts_every_group():
    config = make_config(rollout={"num_engines": 2, "num_cpus_per_engine": 1.5},
                         learner={"world_size": 2, "num_cpus_per_rank": 1})
    # engines 2×1.5 + scorers (2×0.5 + 1×1) + learner 2×1 + reference 1
    assert required_cpus(config) == pytest.approx(3 + 2 + 2 + 1)


def test_incompatible_names_policy_and_rm_set():
    current = make_config().model_dump(mode="json")
    assert _incompatible(current, current) is None
    other_policy = {**current, "policy": {**current["policy"], "model_path": "elsewhere"}}
    assert "policy.model_path" in _incompatible(other_policy, current)
    fewer_rms = {**current, "reward_models": current["reward_models"][:1]}
    assert _incompatible(fewer_rms, current) == "a different reward-model set"
    # Weights and PPO hyper-parameters may change between runs.
    reweighted = make_config(ppo={"kl_coef": 0.1}).model_dump(mode="json")
    assert _incompatible(reweighted, current) is None


def test_resume_checks_happen_before_any_actor_starts(tmp_path):
    config = make_config(logging={"dir": str(tmp_path / "run"), "tensorboard": False})
    trainer = Trainer(config, resume="auto")
    assert trainer.find_resume_checkpoint() is None  # nothing saved yet: start from scratch
    with pytest.raises(FgrlhfError, match="not a complete checkpoint"):
        Trainer(config, resume=str(tmp_path / "missing")).find_resume_checkpoint()


def test_broadcast_weight_sync_backend_follows_the_learner_devices():
    assert make_config(learner={"weight_sync": "broadcast"}).learner.weight_broadcast_backend() == "gloo"
    gpu = make_config(learner={"weight_sync": "broadcast", "num_gpus_per_rank": 1})
    assert gpu.learner.weight_broadcast_backend() == "nccl"
    forced = make_config(learner={"weight_sync": "broadcast", "broadcast_backend": "gloo", "num_gpus_per_rank": 1})
    assert forced.learner.weight_broadcast_backend() == "gloo"


def test_nccl_broadcast_without_gpus_is_a_config_error_naming_the_field(tmp_path):
    from fgrlhf_ray.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("learner:\n  weight_sync: broadcast\n  broadcast_backend: nccl\n"
                    "reward_models:\n  - {name: b, kind: function, density: sequence, "
                    "target: 'fgrlhf_ray.rewards.builtin:brevity'}\n")
    with pytest.raises(ConfigError, match=r"learner.*broadcast_backend 'nccl' needs GPU"):
        load_config(path)
    path.write_text(path.read_text().replace("weight_sync: broadcast", "weight_sync: nccl"))
    with pytest.raises(ConfigError, match=r"learner\.weight_sync.*object_store.*broadcast"):
        load_config(path)


def test_nccl_broadcast_refuses_colocated_placement():
    with pytest.raises(ValueError, match="needs ray.placement 'separate'"):
        make_config(learner={"weight_sync": "broadcast", "num_gpus_per_rank": 1}, ray={"placement": "colocate"})
    make_config(learner={"weight_sync": "broadcast"}, ray={"placement": "colocate"})  # gloo on CPU is fine
