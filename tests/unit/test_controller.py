"""The PPO controller with in-process fakes: phase order and reward placement."""

from __future__ import annotations

import pytest
import torch

from fgrlhf_ray.config import RunConfig
from fgrlhf_ray.algo.experience import assemble_experience
from fgrlhf_ray.control.controller import PPOController, ScorerSpec, WeightSyncError
from fgrlhf_ray.infra.metrics import MetricsLogger, read_metrics
from fgrlhf_ray.types import RolloutBatch, Segment, SegmentRewards

# A character-level "tokenizer": token id = code point, so token t holds character t.
decode = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731
encode = lambda text: [ord(c) for c in text]  # noqa: E731

RESPONSES = ["Ab. Cd.", "Xyz!"]


def make_config(**ppo) -> RunConfig:
    return RunConfig.model_validate({
        "reward_models": [
            {"name": "fact", "kind": "function", "target": "m:f", "density": "sentence", "weight": 0.5},
            {"name": "comp", "kind": "function", "target": "m:g", "density": "sequence", "weight": 2.0},
        ],
        "ppo": {"prompts_per_step": 2, "minibatch_size": 2, "total_steps": 3, "kl_coef": 0.0,
                "scale_rewards_by_std": False, "whiten_advantages": False, "gamma": 1.0, "lam": 1.0, **ppo},
        "logging": {"tensorboard": False},
    })


class Calls(list):
    pass


class FakeRollout:
    def __init__(self, calls, probe_shift=0.0):
        self.calls, self.probe_shift = calls, probe_shift

    def generate(self, prompts, *, n, sampling, seed):
        self.calls.append("generate")
        responses = [RESPONSES[i % 2] for i in range(len(prompts) * n)]
        return RolloutBatch(
            prompts=[p for p in prompts for _ in range(n)],
            prompt_ids=[encode(p) for p in prompts for _ in range(n)],
            responses=responses,
            response_ids=[encode(r) for r in responses],
            logprobs=[[-1.0] * len(r) for r in responses],
            prompt_index=[i for i in range(len(prompts)) for _ in range(n)],
            finish_reasons=["stop"] * len(responses),
        )

    def sync_weights(self, weights):
        self.calls.append(f"sync:{weights}")
        return "ok"

    def probe_logprobs(self, prompt_ids, response_ids):
        return [[-1.0] * len(response_ids), [-1.0 + self.probe_shift] * len(response_ids)]  # two engines


class FakeSentenceScorer:
    """+1 on the first sentence, -1 on the second (char ends 3 and 7 of 'Ab. Cd.')."""

    name = "fact"

    def __init__(self, calls):
        self.calls = calls

    def score(self, rollout, num_samples):
        assert num_samples == len(rollout)
        self.calls.append("score:fact")
        out = []
        for text in rollout.responses:
            ends = [i + 1 for i, c in enumerate(text) if c in ".!"]
            starts = [0] + ends[:-1]
            segs = [Segment(s, e, 1.0 if k == 0 else -1.0) for k, (s, e) in enumerate(zip(starts, ends))]
            out.append(SegmentRewards(segments=segs, density="sentence", model_name="fact"))
        return out


class FakeSequenceScorer:
    name = "comp"

    def __init__(self, calls):
        self.calls = calls

    def score(self, rollout, num_samples):
        assert num_samples == len(rollout)
        self.calls.append("score:comp")
        return [SegmentRewards([Segment(0, len(t), float(len(t)))], density="sequence") for t in rollout.responses]


class FakeReference:
    def __init__(self, calls):
        self.calls = calls

    def logprobs(self, rollout):
        self.calls.append("reference")
        T = max(len(r) for r in rollout.response_ids)
        return torch.full((len(rollout), T), -1.5)


class FakeLearner:
    def __init__(self, calls):
        self.calls, self.version, self.experiences = calls, 0, []

    def logprobs_and_values(self, rollout):
        self.calls.append("values")
        T = max(len(r) for r in rollout.response_ids)
        return torch.full((len(rollout), T), -1.0), torch.zeros(len(rollout), T)

    def train(self, experience):
        self.calls.append("learn")
        self.experiences.append(experience)
        self.version += 1
        return {"loss/policy": 0.1, "policy/entropy": 1.0}

    def weights(self):
        return f"v{self.version}"

    def probe_logprobs(self, prompt_ids, response_ids):
        return [-1.0] * len(response_ids)

    def save_checkpoint(self, directory):
        return directory


def build(tmp_path, calls, *, probe_shift=0.0, **ppo):
    config = make_config(**ppo)
    learner = FakeLearner(calls)
    controller = PPOController(
        config=config,
        prompts=["p0", "p1", "p2"],
        rollout=FakeRollout(calls, probe_shift),
        scorers=[FakeSentenceScorer(calls), FakeSequenceScorer(calls)],
        scorer_specs=[ScorerSpec("fact", weight=0.5), ScorerSpec("comp", weight=2.0, mean=4.0, std=2.0)],
        reference=FakeReference(calls),
        learner=learner,
        decode=decode,
        pad_token_id=0,
        metrics=MetricsLogger(tmp_path, tensorboard=False),
        probe=([1, 2], [3, 4, 5]),
    )
    return controller, learner


def test_phase_order_and_weight_versions(tmp_path):
    calls = Calls()
    controller, learner = build(tmp_path, calls)
    controller.run()
    per_step = ["generate", "score:fact", "score:comp", "reference", "values", "learn"]
    assert calls == per_step + ["sync:v1"] + per_step + ["sync:v2"] + per_step + ["sync:v3"]
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ["reward/total_mean", "reward/fact/mean", "reward/comp/mean", "kl", "loss/policy",
                "response_length/mean", "time/generate", "time/score", "time/reference", "time/values",
                "time/learn", "time/sync", "sync/probe_gap"]:
        assert key in records[0], key


def test_scorer_outputs_land_on_the_right_tokens(tmp_path):
    calls = Calls()
    controller, learner = build(tmp_path, calls)
    controller.run(1)
    exp = learner.experiences[0]
    # Sample 0 "Ab. Cd." (7 tokens): sentence ends at chars 3 and 7 → tokens 2 and 6;
    # completeness (7 - 4)/2 * 2.0 = 3.0 on the last token; KL coef 0.
    expected0 = torch.zeros(7)
    expected0[2] += 0.5 * 1.0
    expected0[6] += 0.5 * -1.0 + 3.0
    assert torch.allclose(exp.rewards[0], expected0)
    # Sample 1 "Xyz!" (4 tokens, right-padded to 7): one sentence ending at token 3.
    expected1 = torch.zeros(7)
    expected1[3] = 0.5 * 1.0 + 2.0 * (4 - 4) / 2.0
    assert torch.allclose(exp.rewards[1], expected1)
    assert exp.action_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    # γ = λ = 1 and V = 0: advantages are rewards-to-go.
    assert torch.allclose(exp.advantages[0], expected0.flip(0).cumsum(0).flip(0))


def test_kl_term_enters_rewards(tmp_path):
    calls = Calls()
    controller, learner = build(tmp_path, calls, kl_coef=0.1)
    controller.run(1)
    exp = learner.experiences[0]
    # log π_old − log π_ref = −1 − (−1.5) = 0.5 per token → −0.1·0.5 on each real token.
    kl_only = exp.rewards[1].clone()
    kl_only[3] -= 0.5
    assert torch.allclose(kl_only[:4], torch.full((4,), -0.05))
    assert torch.all(exp.rewards[1, 4:] == 0)


def test_probe_gap_past_tolerance_fails_loudly(tmp_path):
    controller, _ = build(tmp_path, Calls(), probe_shift=0.5)
    with pytest.raises(WeightSyncError, match="differ from the learner's by 5.000e-01"):
        controller.run(1)


def test_state_round_trip_continues_prompt_order(tmp_path):
    a, _ = build(tmp_path / "a", Calls())
    a.run(2)
    b, _ = build(tmp_path / "b", Calls())
    b.load_state_dict(a.state_dict())
    assert b.step == 2
    assert b.sampler.next_batch(2) == a.sampler.next_batch(2)


def test_assemble_is_pure():
    B, P, T = 2, 1, 3
    args = dict(
        sequences=torch.ones(B, P + T, dtype=torch.long), attention_mask=torch.ones(B, P + T, dtype=torch.long),
        action_mask=torch.ones(B, T), token_offsets=[[(0, 1), (1, 2), (2, 3)]] * B,
        scorer_outputs=[], old_logprobs=torch.zeros(B, T), ref_logprobs=torch.zeros(B, T),
        old_values=torch.zeros(B, T), kl_coef=0.1, kl_estimator="k1", gamma=1.0, lam=0.95,
        scale_rewards=True, whiten_advantages=True,
    )
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    assemble_experience(**args)
    assert all(torch.equal(before[k], args[k]) for k in before)


def test_evaluate_reports_weighted_rm_means(tmp_path):
    controller, _ = build(tmp_path, Calls())
    metrics = controller.evaluate(["p0", "p1"])
    # fact: (+1 −1) for "Ab. Cd." and +1 for "Xyz!" → 0.5·(0 + 1)/2 = 0.25
    assert metrics["eval/reward/fact"] == pytest.approx(0.25)
    # comp: 2·((7−4)/2 + (4−4)/2)/2 = 1.5
    assert metrics["eval/reward/comp"] == pytest.approx(1.5)
    assert metrics["eval/reward/total"] == pytest.approx(1.75)


def test_injected_weight_push_replaces_the_object_store_path_and_its_stats_are_logged(tmp_path):
    """`learner.weight_sync: broadcast` hands the controller a push callable: it runs once per
    step instead of rollout.sync_weights(learner.weights()), and its sync/* stats reach the metrics."""
    calls = Calls()
    controller, learner = build(tmp_path, calls)
    controller.push_weights = lambda: calls.append(f"push:v{learner.version}") or {
        "sync/broadcast_s": 0.5, "sync/buckets": 3, "sync/group_formed": float(learner.version == 1),
        "note": "not a metric"}
    controller.run()
    assert [c for c in calls if c.startswith(("sync", "push"))] == ["push:v1", "push:v2", "push:v3"]
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["sync/group_formed"] for r in records] == [1.0, 0.0, 0.0]
    assert all(r["sync/buckets"] == 3.0 and "note" not in r and "sync/probe_gap" in r for r in records)
