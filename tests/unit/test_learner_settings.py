"""`LearnerSettings` (config → learner, typed and picklable) and the critic loss's `value_loss_coef`."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from fgrlhf_ray.algo.losses import ppo_value_loss
from fgrlhf_ray.config import RunConfig
from fgrlhf_ray.launch.trainer import learner_settings
from fgrlhf_ray.workers.learner import LearnerSettings, LoRASettings, critic_loss

ONE_RM = {"reward_models": [{"name": "h", "kind": "sequence_preference", "path": "x", "density": "sequence"}]}


def test_settings_are_frozen_picklable_and_carry_every_learner_field():
    config = RunConfig.model_validate({**ONE_RM, "ppo": {"value_loss_coef": 1.5, "policy_clip": 0.1, "kl_in": "loss",
                                                         "kl_coef": 0.05, "advantage_estimator": "reinforce_pp"},
                                       "learner": {"lora": {"enabled": True, "target_modules": ["q_proj"]}}})
    s = learner_settings(config, pad_token_id=3)
    assert s.value_loss_coef == 1.5 and s.policy_clip == 0.1 and s.kl_loss_coef == 0.05 and not s.use_critic
    assert s.lora == LoRASettings(r=8, alpha=16.0, dropout=0.0, target_modules=("q_proj",))
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0  # type: ignore[misc]
    # Fields shared with the config keep the config's names (one name per quantity).
    ppo_names = set(RunConfig.model_fields["ppo"].annotation.model_fields)
    for name in ("policy_clip", "value_clip", "dual_clip", "value_loss_coef", "ppo_epochs", "minibatch_size",
                 "lr", "critic_lr", "adam_eps", "loss_aggregation", "max_grad_norm"):
        assert name in ppo_names and name in {f.name for f in dataclasses.fields(LearnerSettings)}, name


def test_learner_log_probs_use_the_rollout_sampling_temperature():
    config = RunConfig.model_validate({**ONE_RM, "rollout": {"sampling": {"temperature": 0.7}}})
    assert learner_settings(config, pad_token_id=0).logprob_temperature == 0.7


def test_kl_loss_coef_is_zero_when_the_kl_is_in_the_reward():
    config = RunConfig.model_validate({**ONE_RM, "ppo": {"kl_coef": 0.2}})
    assert learner_settings(config, pad_token_id=0).kl_loss_coef == 0.0


def _value_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(3, 5, generator=g, requires_grad=True)
    old, ret = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    return values, old, ret, mask


def test_default_value_loss_coef_is_todays_loss():
    values, old, ret, mask = _value_inputs()
    coef = RunConfig.model_validate(ONE_RM).ppo.value_loss_coef
    loss, stats = critic_loss(values, old, ret, mask, value_clip=0.2, value_loss_coef=coef, aggregation="token_mean")
    want, want_stats = ppo_value_loss(values, old, ret, mask, value_clip=0.2, aggregation="token_mean")
    assert torch.equal(loss, want) and stats == want_stats


@pytest.mark.parametrize("coef", [0.0, 0.25, 1.0, 2.0])
def test_value_loss_coef_scales_loss_and_gradient(coef):
    values, old, ret, mask = _value_inputs(1)
    base, _ = critic_loss(values, old, ret, mask, value_clip=0.2, value_loss_coef=0.5, aggregation="seq_mean")
    (base_grad,) = torch.autograd.grad(base, values)
    loss, stats = critic_loss(values, old, ret, mask, value_clip=0.2, value_loss_coef=coef, aggregation="seq_mean")
    (grad,) = torch.autograd.grad(loss, values)
    # c · max(err²): twice c times ppo_value_loss's ½ · max(err²)
    assert float(loss.detach()) == pytest.approx(2 * coef * float(base.detach()))
    assert stats["value_loss"] == pytest.approx(float(loss.detach()))
    torch.testing.assert_close(grad, 2 * coef * base_grad)
