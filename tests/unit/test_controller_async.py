"""One-step-off rollouts (`rollout.async_steps: 1`) and critic-free estimators in the controller.

In-process fakes (tests/unit/test_controller.py): the phase order shows the overlap, the
prompt log shows that no prompt is lost or repeated — across a step that fails and across
a checkpoint/resume with a batch in flight.
"""

from __future__ import annotations

import pytest
import torch
from test_controller import Calls, FakeLearner, FakeReference, FakeRollout, FakeSentenceScorer, FakeSequenceScorer

from fgrlhf_ray.algo.estimators import compute_advantages
from fgrlhf_ray.algo.experience import assemble_experience
from fgrlhf_ray.algo.rewards import ScorerOutput
from fgrlhf_ray.config import RunConfig
from fgrlhf_ray.control.controller import PPOController, ScorerSpec
from fgrlhf_ray.infra.metrics import read_metrics
from fgrlhf_ray.infra.reliability import ActorDied

PROMPTS = [f"p{i}" for i in range(7)]


class RecordingRollout(FakeRollout):
    """Logs each generation's prompts and seed; `fail_on`: generation calls (1-based) that raise ActorDied."""

    def __init__(self, calls, fail_on=()):
        super().__init__(calls)
        self.log, self.fail_on, self.count = [], set(fail_on), 0

    def generate(self, prompts, *, n, sampling, seed):
        self.count += 1
        if self.count in self.fail_on:
            self.calls.append("generate:died")
            return ActorDied("engine died")  # a failed handle (InProcessRuntime raises it on resolve)
        self.log.append((list(prompts), seed))
        return super().generate(prompts, n=n, sampling=sampling, seed=seed)

    def recover(self, kind):
        return "engines restarted"


def config(**overrides):
    ppo = {"prompts_per_step": 2, "minibatch_size": 2, "total_steps": 3, "kl_coef": 0.0,
           "scale_rewards_by_std": False, "whiten_advantages": False, **overrides.pop("ppo", {})}
    return RunConfig.model_validate({
        "reward_models": [
            {"name": "fact", "kind": "function", "target": "m:f", "density": "sentence", "weight": 0.5},
            {"name": "comp", "kind": "function", "target": "m:g", "density": "sequence", "weight": 2.0},
        ],
        "ppo": ppo, "rollout": overrides.pop("rollout", {}), "data": {"shuffle": False},
        "ray": {"retry_backoff_s": 0.0}, "logging": {"tensorboard": False}, **overrides,
    })


def build(tmp_path, cfg, calls, rollout=None):
    learner = FakeLearner(calls)
    rollout = rollout or RecordingRollout(calls)
    controller = PPOController(
        config=cfg, prompts=PROMPTS, rollout=rollout,
        scorers=[FakeSentenceScorer(calls), FakeSequenceScorer(calls)],
        scorer_specs=[ScorerSpec("fact", weight=0.5), ScorerSpec("comp", weight=2.0, mean=4.0, std=2.0)],
        reference=FakeReference(calls), learner=learner, decode=lambda ids: "".join(map(chr, ids)),
        pad_token_id=0, probe=([1, 2], [3, 4, 5]),
    )
    return controller, rollout, learner


def trained_prompts(learner) -> list[str]:
    """The prompts each learn call saw, decoded from the experience (one char per token)."""
    out = []
    for exp in learner.experiences:
        P = exp.sequences.shape[1] - exp.action_mask.shape[1]
        out.append(["".join(chr(int(c)) for c in row[:P] if c) for row in exp.sequences])
    return out


def test_async_launches_the_next_batch_before_learning(tmp_path):
    calls = Calls()
    controller, rollout, learner = build(tmp_path, config(rollout={"async_steps": 1}), calls)
    controller.run(2)
    step = ["score:fact", "score:comp", "reference", "values", "learn"]
    # Step 1 samples its own batch, then step 2's (before scoring/learning step 1), syncs after.
    assert calls == ["generate", "generate", *step, "sync:v1", "generate", *step, "sync:v2"]
    # Batches in sampler order, each once; seeds are per step as in synchronous mode.
    assert [p for p, _ in rollout.log] == [["p0", "p1"], ["p2", "p3"], ["p4", "p5"]]
    assert [s for _, s in rollout.log] == [42 * 100_003 + k for k in range(3)]


def test_async_staleness_is_logged(tmp_path):
    calls = Calls()
    cfg = config(rollout={"async_steps": 1}, logging={"tensorboard": False, "dir": str(tmp_path)})
    controller, _, _ = build(tmp_path, cfg, calls)
    controller.metrics = None
    results = controller.run(3)
    assert [r.metrics["rollout/staleness"] for r in results] == [0.0, 1.0, 1.0]
    assert "time/generate_next" in results[0].metrics


def test_sync_mode_keeps_staleness_zero(tmp_path):
    controller, _, _ = build(tmp_path, config(), Calls())
    assert [r.metrics["rollout/staleness"] for r in controller.run(2)] == [0.0, 0.0]


@pytest.mark.parametrize("async_steps", [0, 1])
def test_resume_with_a_batch_in_flight_loses_and_repeats_nothing(tmp_path, async_steps):
    cfg = config(rollout={"async_steps": async_steps}, ppo={"total_steps": 3})
    whole, _, whole_learner = build(tmp_path, cfg, Calls())
    whole.run(3)

    first, _, first_learner = build(tmp_path, cfg, Calls())
    first.run(1)
    state = first.state_dict()  # written to controller.json by a checkpoint
    assert (state["pending"] is not None) == bool(async_steps)
    resumed, rollout, resumed_learner = build(tmp_path, cfg, Calls())
    resumed.load_state_dict(state)
    resumed.run(2)
    assert trained_prompts(first_learner) + trained_prompts(resumed_learner) == trained_prompts(whole_learner)
    if async_steps:  # the in-flight batch is sampled again from its saved prompts and seed
        assert rollout.log[0] == (state["pending"]["prompts"], state["pending"]["seed"])


def test_async_engine_death_relaunches_the_same_batch(tmp_path):
    calls = Calls()
    rollout = RecordingRollout(calls, fail_on={2})  # step 2's batch, launched during step 1, dies
    controller, _, learner = build(tmp_path, config(rollout={"async_steps": 1}), calls, rollout)
    controller.run(3)
    assert trained_prompts(learner) == [["p0", "p1"] * 1, ["p2", "p3"], ["p4", "p5"]]
    assert [f["phase"] for f in controller.fault_events] == ["generate"]
    assert rollout.log[1] == (["p2", "p3"], 42 * 100_003 + 1)  # relaunched with the same prompts and seed


def test_async_learner_failure_keeps_the_batches(tmp_path):
    """A failed step is retried (as after a resume): the batch in flight and this step's are kept."""
    calls = Calls()
    controller, _, learner = build(tmp_path, config(rollout={"async_steps": 1}), calls)
    controller.run(1)
    original = learner.train
    learner.train = lambda exp: (_ for _ in ()).throw(RuntimeError("bug in the learner"))
    with pytest.raises(RuntimeError):
        controller.train_step()
    learner.train = original
    controller.run(2)
    assert trained_prompts(learner) == [["p0", "p1"], ["p2", "p3"], ["p4", "p5"]]


def test_critic_free_estimator_reaches_the_learner(tmp_path):
    cfg = config(ppo={"advantage_estimator": "grpo"}, rollout={"sampling": {"n_samples_per_prompt": 2}})
    controller, _, learner = build(tmp_path, cfg, Calls())
    controller.run(1)
    exp = learner.experiences[0]
    assert exp.returns is None and exp.old_values is None
    # Both samples of each prompt: "Ab. Cd." and "Xyz!" (FakeRollout alternates); group-normalised.
    assert exp.advantages.abs().sum() > 0 and torch.isfinite(exp.advantages).all()


def _assemble_inputs(B=4, T=3):
    torch.manual_seed(0)
    return dict(
        sequences=torch.ones(B, 1 + T, dtype=torch.long), attention_mask=torch.ones(B, 1 + T, dtype=torch.long),
        action_mask=torch.ones(B, T), token_offsets=[[(0, 1), (1, 2), (2, 3)]] * B,
        scorer_outputs=[ScorerOutput(name="rm", density="sentence", weight=1.0,
                                     rewards=[[(1, 1.0), (3, v)] for v in (1.0, -1.0, 0.5, -0.5)])],
        old_logprobs=torch.randn(B, T), ref_logprobs=torch.randn(B, T), old_values=torch.zeros(B, T),
        kl_coef=0.1, kl_estimator="k1", gamma=1.0, lam=0.95, scale_rewards=False, whiten_advantages=False,
    )


def test_assemble_critic_free_uses_the_estimator_on_scores_and_kl():
    args = _assemble_inputs()
    group_ids = torch.tensor([0, 0, 1, 1])
    exp, stats = assemble_experience(**args, estimator="grpo", group_ids=group_ids)
    from fgrlhf_ray.algo.kl import kl_penalty

    scores = torch.tensor([[1.0, 0, 1.0], [1.0, 0, -1.0], [1.0, 0, 0.5], [1.0, 0, -0.5]])
    kl = kl_penalty(args["old_logprobs"], args["ref_logprobs"], args["action_mask"])
    expected, _, _ = compute_advantages("grpo", scores=scores, mask=args["action_mask"], group_ids=group_ids,
                                        kl=kl, kl_coef=0.1)
    assert torch.allclose(exp.advantages, expected)
    assert exp.returns is None and exp.old_values is None
    assert "kl" in stats and stats["reward/total_mean"] == pytest.approx(float(scores.sum(1).mean()))


def test_assemble_kl_in_loss_keeps_kl_out_of_the_reward():
    args = _assemble_inputs()
    in_reward, stats_r = assemble_experience(**args)
    in_loss, stats_l = assemble_experience(**args, kl_in="loss")
    assert not torch.allclose(in_reward.rewards, in_loss.rewards)
    scores = torch.tensor([[1.0, 0, 1.0], [1.0, 0, -1.0], [1.0, 0, 0.5], [1.0, 0, -0.5]])
    assert torch.allclose(in_loss.rewards, scores)  # the learner adds β·KL to its loss instead
    assert stats_l["kl"] == pytest.approx(stats_r["kl"])  # still measured, for the KL controller and logs


def test_group_estimator_needs_two_samples_in_config():
    with pytest.raises(ValueError, match="n_samples_per_prompt >= 2"):
        config(ppo={"advantage_estimator": "rloo"}, rollout={"sampling": {"n_samples_per_prompt": 1}})
    with pytest.raises(ValueError, match="kl_controller 'fixed'"):
        config(ppo={"kl_in": "loss", "kl_controller": "adaptive"})


def test_config_and_algo_agree_on_group_estimators():
    from fgrlhf_ray import config as config_module
    from fgrlhf_ray.algo import estimators

    assert config_module.GROUP_ESTIMATORS == estimators.GROUP_ESTIMATORS
    field = config_module.PPOConfig.model_fields["advantage_estimator"]
    assert set(field.annotation.__args__) == set(estimators.ADVANTAGE_ESTIMATORS)
