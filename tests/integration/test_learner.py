"""DeepSpeed PPO learner on CPU (gloo) as Ray actors, on a tiny local Llama.

Needs: real DeepSpeed (DS_ACCELERATOR=cpu, set by tests/conftest.py and by LearnerGroup
for its actors), a local Ray cluster (`ray_local`), transformers. Every learner runs
inside Ray actors so the pytest process never joins a torch.distributed group.

Covers: (a) ZeRO-0 logprobs = plain transformers and a train step moves the weights;
(b) two ZeRO-2 ranks stay identical after two steps; (c) ZeRO-3 gathers full HF
shapes and the gathered weights are the trained ones; (d) checkpoint → fresh learner
gives identical logprobs/values and the next step is identical (optimizer state
restored); the saved folders load with AutoModelForCausalLM / CriticModel; LoRA merge.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from transformers import AutoModelForCausalLM  # noqa: E402

from fgrlhf_ray.actors.learner import LearnerGroup  # noqa: E402
from fgrlhf_ray.actors.reference import ReferenceActor  # noqa: E402
from fgrlhf_ray.algo.experience import pad_rollout  # noqa: E402
from fgrlhf_ray.workers.critic import CriticModel, gather_values  # noqa: E402
from fgrlhf_ray.workers.learner import LearnerSettings, LoRASettings, causal_lm_response_logprobs  # noqa: E402
from fgrlhf_ray.types import Experience, RolloutBatch  # noqa: E402

B = 8  # rollout batch
PAD = 0  # build_tiny_llama's pad id


def make_rollout(vocab: int, *, seed: int = 0) -> RolloutBatch:
    """Ragged prompts (2–6 tokens) and responses (4–12 tokens) of random ids."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(4, vocab, (n,), generator=g).tolist()

    prompts = [ids(2, 6) for _ in range(B)]
    responses = [ids(4, 12) for _ in range(B)]
    return RolloutBatch(prompts=[""] * B, prompt_ids=prompts, responses=[""] * B, response_ids=responses,
                        logprobs=[[0.0] * len(r) for r in responses], prompt_index=list(range(B)))


def make_experience(rollout: RolloutBatch, old_logprobs, old_values, *, seed: int = 0) -> Experience:
    """An Experience with the learner's own old logprobs/values and random advantages."""
    pr = pad_rollout(rollout, pad_token_id=PAD)
    mask = pr.action_mask
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(mask.shape, generator=g) * mask
    returns = (old_values + torch.randn(mask.shape, generator=g)) * mask
    return Experience(sequences=pr.sequences, attention_mask=pr.attention_mask, action_mask=mask,
                      old_logprobs=old_logprobs, ref_logprobs=old_logprobs.clone(), old_values=old_values,
                      rewards=adv.clone(), advantages=adv, returns=returns)


def learner_settings(policy_path, **overrides) -> LearnerSettings:
    kw = dict(policy_path=str(policy_path), zero_stage=0, micro_batch_size=2, minibatch_size=4, ppo_epochs=2,
              lr=1e-3, critic_lr=1e-3, seed=0)
    kw.update(overrides)
    return LearnerSettings(**kw)


def vocab_of(path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path)).vocab_size


def hf_logprobs(model, rollout: RolloutBatch) -> torch.Tensor:
    pr = pad_rollout(rollout, pad_token_id=PAD)
    with torch.no_grad():
        lp, _ = causal_lm_response_logprobs(model, pr.sequences, pr.attention_mask, pr.response_len)
    return lp * pr.action_mask


def assert_finite_stats(stats: dict) -> None:
    for key in ("policy_loss", "value_loss", "approx_kl", "clip_frac", "entropy", "grad_norm", "critic_grad_norm"):
        assert key in stats, key
        assert math.isfinite(stats[key]), (key, stats[key])


@pytest.fixture()
def group_factory(ray_local):
    groups: list[LearnerGroup] = []

    def make(**kwargs) -> LearnerGroup:
        g = LearnerGroup(num_cpus_per_actor=1, **kwargs)
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.shutdown()


# --------------------------------------------------------------------------- (a)


def test_zero0_logprobs_match_transformers_and_train_step_moves_weights(tiny_llama_dir, group_factory):
    rollout = make_rollout(vocab_of(tiny_llama_dir))
    rollout_ref = ray.put(rollout)
    reference = ReferenceActor.options(num_cpus=1).remote(model_path=str(tiny_llama_dir), num_threads=1)
    ref_lp_ref = reference.logprobs.remote(rollout_ref)  # starts alongside the learner
    group = group_factory(world_size=1, settings=learner_settings(tiny_llama_dir, zero_stage=0))

    old_lp, old_v = ray.get(group.logprobs_and_values(rollout_ref))
    pr = pad_rollout(rollout, pad_token_id=PAD)
    assert old_lp.shape == old_v.shape == pr.action_mask.shape

    # Plain transformers on the same padded batch, and unpadded one sample at a time.
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    torch.testing.assert_close(old_lp, hf_logprobs(hf, rollout), atol=1e-5, rtol=0)
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(rollout.prompt_ids, rollout.response_ids)):
            logits = hf(torch.tensor([p + r])).logits[0]
            want = torch.log_softmax(logits[len(p) - 1 : -1], -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(old_lp[i, : len(r)], want, atol=1e-4, rtol=0)
    assert torch.count_nonzero(old_lp * (1 - pr.action_mask)) == 0
    assert torch.count_nonzero(old_v) == 0  # a new critic's value head is zero

    # The reference policy (same weights) agrees with the learner before any update, to float32
    # noise: its micro-batches (16 rows) are trimmed of padding to other lengths than the learner's (4).
    torch.testing.assert_close(ray.get(ref_lp_ref), old_lp, atol=1e-5, rtol=0)
    ray.kill(reference)

    before = ray.get(group.state_dict_for_sync())
    stats = ray.get(group.train(ray.put(make_experience(rollout, old_lp, old_v))))
    assert_finite_stats(stats)
    assert stats["optimizer_steps"] == 2 * (B // 4)  # ppo_epochs × B / minibatch_size
    after = ray.get(group.state_dict_for_sync())
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) - 2, f"only {changed} changed"  # norms may barely move
    new_lp, new_v = ray.get(group.logprobs_and_values(rollout_ref))
    assert not torch.allclose(new_lp, old_lp)
    assert torch.count_nonzero(new_v) > 0
    # The learner's probe equals its batched logprobs for the same sequence.
    probe = ray.get(group.probe_logprobs(rollout.prompt_ids[0], rollout.response_ids[0]))
    torch.testing.assert_close(torch.tensor(probe), new_lp[0, : len(rollout.response_ids[0])], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- (b)


def test_two_zero2_ranks_hold_identical_parameters_after_two_steps(tiny_llama_dir, group_factory):
    rollout = make_rollout(vocab_of(tiny_llama_dir), seed=1)
    group = group_factory(world_size=2, settings=learner_settings(tiny_llama_dir, zero_stage=2))
    initial = ray.get(group.param_fingerprints())
    assert initial[0] == initial[1]
    for step in range(2):
        old_lp, old_v = ray.get(group.logprobs_and_values(ray.put(rollout)))
        stats = ray.get(group.train(ray.put(make_experience(rollout, old_lp, old_v, seed=step))))
        assert_finite_stats(stats)
        assert stats["optimizer_steps"] == 2 * (B // 4)  # each step all-reduces over both ranks
    final = ray.get(group.param_fingerprints())
    assert final[0] == final[1], "ranks diverged: gradients were not averaged identically"
    assert final[0] != initial[0]


# --------------------------------------------------------------------------- (c)


def test_zero3_gathers_full_hf_weights(tiny_llama_dir, group_factory):
    rollout = make_rollout(vocab_of(tiny_llama_dir), seed=2)
    group = group_factory(world_size=2, settings=learner_settings(tiny_llama_dir, zero_stage=3))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    hf_sd = hf.state_dict()

    synced = ray.get(group.state_dict_for_sync())
    assert {k: tuple(v.shape) for k, v in synced.items()} == {k: tuple(v.shape) for k, v in hf_sd.items()}
    for k in hf_sd:
        assert torch.equal(synced[k], hf_sd[k]), k

    old_lp, old_v = ray.get(group.logprobs_and_values(ray.put(rollout)))
    torch.testing.assert_close(old_lp, hf_logprobs(hf, rollout), atol=1e-5, rtol=0)
    stats = ray.get(group.train(ray.put(make_experience(rollout, old_lp, old_v))))
    assert_finite_stats(stats)

    # The gathered weights are the trained ones: a plain HF model loading them
    # reproduces the sharded learner's logprobs.
    from fgrlhf_ray.weight_sync import deserialize_state_dict

    trained = deserialize_state_dict(ray.get(group.weights()))
    assert any(not torch.equal(trained[k], hf_sd[k]) for k in hf_sd)
    hf.load_state_dict(trained)
    new_lp, _ = ray.get(group.logprobs_and_values(ray.put(rollout)))
    torch.testing.assert_close(hf_logprobs(hf, rollout), new_lp, atol=1e-5, rtol=0)

    # The bucketed broadcast path ("nccl" weight sync, here over gloo) delivers the same
    # gathered weights to a receiver standing in for a vLLM worker.
    host, port = ray.get(group.weight_broadcast_address())
    receiver = BroadcastReceiver.remote()
    joined = receiver.join.remote(host=host, port=port, world_size=2)
    ray.get([group.init_weight_broadcast(host=host, port=port, world_size=2, backend="gloo",
                                               bucket_bytes=64 * 1024, timeout_s=60), joined])
    plan = ray.get(group.prepare_weight_broadcast())
    assert len(plan) > 1  # several buckets
    received_ref = receiver.receive.remote(plan)
    stats = ray.get(group.broadcast_weights(plan))
    received = ray.get(received_ref)
    ray.get(group.close_weight_broadcast())
    assert stats["sync/buckets"] == len(plan)
    assert set(received) == set(trained)
    for k in trained:
        assert torch.equal(received[k], trained[k]), k


@ray.remote(num_cpus=0)
class BroadcastReceiver:
    """Rank 1 of a gloo weight-broadcast group (what a vLLM worker does on the other side)."""

    def join(self, *, host: str, port: int, world_size: int) -> None:
        from fgrlhf_ray.weight_sync import stateless_process_group

        self.group = stateless_process_group(host=host, port=port, rank=1, world_size=world_size,
                                             backend="gloo", timeout_s=60)

    def receive(self, plan) -> dict:
        from fgrlhf_ray.weight_sync import receive_buckets

        return {k: v.clone() for k, v in receive_buckets(self.group, plan, device="cpu", timeout_s=60)}


# --------------------------------------------------------------------------- (d)


def test_checkpoint_roundtrip_restores_weights_and_optimizer(tiny_llama_dir, group_factory, tmp_path):
    rollout = make_rollout(vocab_of(tiny_llama_dir), seed=3)
    rollout_ref = ray.put(rollout)
    settings = learner_settings(tiny_llama_dir, zero_stage=2)
    first = group_factory(world_size=1, settings=settings)
    old_lp, old_v = ray.get(first.logprobs_and_values(rollout_ref))
    ray.get(first.train(ray.put(make_experience(rollout, old_lp, old_v))))
    saved_lp, saved_v = ray.get(first.logprobs_and_values(rollout_ref))
    ray.get(first.save_checkpoint(str(tmp_path / "ckpt")))

    second = group_factory(world_size=1, settings=settings)  # fresh: starts from the SFT weights
    ray.get(second.load_checkpoint(str(tmp_path / "ckpt")))
    loaded_lp, loaded_v = ray.get(second.logprobs_and_values(rollout_ref))
    assert torch.equal(loaded_lp, saved_lp)
    assert torch.equal(loaded_v, saved_v)

    # Same next step on both: the optimizer moments and the shuffling state were restored.
    exp_ref = ray.put(make_experience(rollout, saved_lp, saved_v, seed=9))
    s1, s2 = ray.get(first.train(exp_ref)), ray.get(second.train(exp_ref))
    for key in ("policy_loss", "value_loss", "grad_norm", "critic_grad_norm"):
        assert s1[key] == pytest.approx(s2[key], rel=1e-6, abs=1e-7), key
    p1, p2 = ray.get(first.state_dict_for_sync()), ray.get(second.state_dict_for_sync())
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], atol=1e-6, rtol=0, msg=k)

    # The HF folders load without fgrlhf / DeepSpeed.
    policy = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt" / "policy")).eval()
    torch.testing.assert_close(hf_logprobs(policy, rollout), saved_lp, atol=1e-5, rtol=0)
    critic = CriticModel.from_pretrained(tmp_path / "ckpt" / "critic").eval()
    pr = pad_rollout(rollout, pad_token_id=PAD)
    with torch.no_grad():
        values = gather_values(critic(pr.sequences, pr.attention_mask), pr.prompt_len, pr.response_len)
    torch.testing.assert_close(values * pr.action_mask, saved_v, atol=1e-5, rtol=0)


def test_lora_zero3_syncs_merged_weights(tiny_llama_dir, group_factory):
    """LoRA adapters train, and the synced state dict is the merged plain HF model."""
    rollout = make_rollout(vocab_of(tiny_llama_dir), seed=4)
    lora = LoRASettings(r=4, alpha=8.0, target_modules=("q_proj", "v_proj"))
    group = group_factory(world_size=1, settings=learner_settings(tiny_llama_dir, zero_stage=3, lora=lora))
    before = ray.get(group.state_dict_for_sync())
    old_lp, old_v = ray.get(group.logprobs_and_values(ray.put(rollout)))
    ray.get(group.train(ray.put(make_experience(rollout, old_lp, old_v))))
    after = ray.get(group.state_dict_for_sync())
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    assert set(after) == set(hf.state_dict())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
    hf.load_state_dict(after)
    new_lp, _ = ray.get(group.logprobs_and_values(ray.put(rollout)))
    torch.testing.assert_close(hf_logprobs(hf, rollout), new_lp, atol=1e-4, rtol=0)
