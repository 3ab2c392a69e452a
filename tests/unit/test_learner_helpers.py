"""Learner helpers that need no DeepSpeed / Ray cluster: LoRA merging, batch sharding, inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fgrlhf_ray.actors.learner import mean_stats, split_batch
from fgrlhf_ray.algo.experience import pad_rollout
from fgrlhf_ray.workers.learner import as_forward_batch, causal_lm_response_logprobs, lora_scalings, merge_lora_state_dict
from fgrlhf_ray.types import Experience, RolloutBatch


def _tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _rollout(B: int = 4, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 50, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
               for _ in range(B)]
    responses = [torch.randint(4, 50, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(B)]
    return RolloutBatch(prompts=[""] * B, prompt_ids=prompts, responses=[""] * B, response_ids=responses,
                        logprobs=[[-1.0] * len(r) for r in responses], prompt_index=list(range(B)))


def test_merge_lora_matches_peft_merge_and_unload():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero; make the adapters do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    merged = merge_lora_state_dict(model.state_dict(), lora_scalings(model))
    reference = model.merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for k in reference:
        torch.testing.assert_close(merged[k], reference[k], atol=1e-6, rtol=1e-6, msg=k)


def test_causal_lm_response_logprobs_equals_a_per_sample_loop():
    """Vectorised padded batch vs one unpadded forward per sample."""
    model = _tiny_lm()
    rb = _rollout(B=4)
    pr = pad_rollout(rb, pad_token_id=0)
    with torch.no_grad():
        got, _ = causal_lm_response_logprobs(model, pr.sequences, pr.attention_mask, pr.response_len)
        for i, (p, r) in enumerate(zip(rb.prompt_ids, rb.response_ids)):
            logits = model(torch.tensor([p + r])).logits[0]
            want = torch.log_softmax(logits[len(p) - 1 : -1], -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(got[i, : len(r)], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("full_logits", [False, True])
def test_response_logprobs_are_those_of_the_sampling_temperature(full_logits):
    """log softmax(logits / τ): the distribution the engines sample from, on both logits paths."""
    model = _tiny_lm()
    lm = _NoLogitsToKeep(model) if full_logits else model
    rb = _rollout(B=3)
    pr = pad_rollout(rb, pad_token_id=0)
    with torch.no_grad():
        got, scaled = causal_lm_response_logprobs(lm, pr.sequences, pr.attention_mask, pr.response_len,
                                                  return_logits=True, temperature=0.7)
        raw, logits = causal_lm_response_logprobs(lm, pr.sequences, pr.attention_mask, pr.response_len,
                                                  return_logits=True)
        for i, (p, r) in enumerate(zip(rb.prompt_ids, rb.response_ids)):
            one = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1] / 0.7
            want = torch.log_softmax(one, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(got[i, : len(r)], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scaled, logits / 0.7)  # the entropy statistic is of the same distribution
    assert not torch.allclose(got, raw)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        causal_lm_response_logprobs(lm, pr.sequences, pr.attention_mask, pr.response_len, temperature=0.0)


def test_the_run_config_gives_learner_and_reference_the_sampling_temperature():
    from fgrlhf_ray.config import SamplingConfig

    assert SamplingConfig(temperature=0.7).logprob_temperature == 0.7
    assert SamplingConfig(temperature=0.0).logprob_temperature == 1.0  # greedy: raw logits


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep` (the full-logits path)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)


def test_response_logprobs_and_logits_are_the_same_with_and_without_logits_to_keep():
    """HF LMs compute only the response positions' logits; other models all of them: same numbers."""
    from peft import LoraConfig, get_peft_model

    from fgrlhf_ray.workers.learner import accepts_logits_to_keep

    model = _tiny_lm()
    pr = pad_rollout(_rollout(B=4), pad_token_id=0)
    full = _NoLogitsToKeep(model)
    peft_model = get_peft_model(_tiny_lm(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert accepts_logits_to_keep(model) and accepts_logits_to_keep(peft_model) and not accepts_logits_to_keep(full)
    with torch.no_grad():
        lp, logits = causal_lm_response_logprobs(model, pr.sequences, pr.attention_mask, pr.response_len,
                                                 return_logits=True)
        lp_full, logits_full = causal_lm_response_logprobs(full, pr.sequences, pr.attention_mask, pr.response_len,
                                                           return_logits=True)
    assert logits.shape == (4, pr.response_len, 50)
    torch.testing.assert_close(lp, lp_full)
    torch.testing.assert_close(logits, logits_full)


def _experience(B: int = 4) -> Experience:
    pr = pad_rollout(_rollout(B), pad_token_id=0)
    T = pr.response_len
    per_token = {f.name: torch.arange(B * T, dtype=torch.float32).reshape(B, T) + i
                 for i, f in enumerate(dataclasses.fields(Experience)) if f.name not in
                 ("sequences", "attention_mask", "action_mask")}
    return Experience(sequences=pr.sequences, attention_mask=pr.attention_mask, action_mask=pr.action_mask,
                      **per_token)


def test_split_experience_into_equal_contiguous_shards():
    exp = _experience(B=4)
    shards = split_batch(exp, 2, pad_token_id=0)
    assert len(shards) == 2
    for f in dataclasses.fields(Experience):
        joined = torch.cat([getattr(s, f.name) for s in shards])
        assert torch.equal(joined, getattr(exp, f.name)), f.name


def test_split_rollout_pads_once_so_shards_share_the_layout():
    rb = _rollout(B=4)
    full = pad_rollout(rb, pad_token_id=0)
    shards = split_batch(rb, 2, pad_token_id=0)
    assert torch.equal(torch.cat([s.sequences for s in shards]), full.sequences)
    assert torch.equal(torch.cat([s.action_mask for s in shards]), full.action_mask)


def test_split_rejects_uneven_batches_with_a_fix():
    with pytest.raises(ValueError, match="multiple of learner.world_size"):
        split_batch(_experience(B=3), 2, pad_token_id=0)


def test_as_forward_batch_errors_are_actionable():
    with pytest.raises(ValueError, match="needs pad_token_id"):
        as_forward_batch(_rollout())
    with pytest.raises(TypeError, match="sequences / attention_mask / action_mask"):
        as_forward_batch({"sequences": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="no prompt column"):
        as_forward_batch({"sequences": torch.zeros(1, 3), "attention_mask": torch.ones(1, 3),
                          "action_mask": torch.ones(1, 3)})


def test_mean_stats_averages_keys_present():
    assert mean_stats([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 2.0, "b": 2.0}


def test_trim_padding_drops_only_columns_that_are_padding_in_every_row():
    from fgrlhf_ray.workers.learner import trim_padding

    # P = 4, T = 5: prompts left-padded (the first column is padding everywhere), responses of
    # length 2 and 3 right-padded (the last two columns are padding everywhere).
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0],
                         [0, 1, 1, 1, 1, 1, 1, 0, 0]])
    assert trim_padding(attn, 5) == (slice(1, 7), 3)
    # Nothing to trim, and a batch whose responses are all empty keeps one response column.
    assert trim_padding(torch.ones(2, 6, dtype=torch.long), 3) == (slice(0, 6), 3)
    assert trim_padding(torch.tensor([[0, 1, 1, 0, 0]]), 2) == (slice(1, 4), 1)


def test_trimmed_micro_batch_gives_the_same_logprobs():
    """What the learner computes on the trimmed columns equals the full padded batch's values."""
    from fgrlhf_ray.workers.learner import pad_right, trim_padding

    model = _tiny_lm()
    rb = _rollout(B=3, seed=2)
    # Pad wider than needed on both sides, as a micro-batch of a larger batch would be.
    pr = pad_rollout(rb, pad_token_id=0, prompt_len=8, response_len=9)
    T = pr.response_len
    with torch.no_grad():
        full, _ = causal_lm_response_logprobs(model, pr.sequences, pr.attention_mask, T)
        cols, t = trim_padding(pr.attention_mask, T)
        assert cols.start > 0 and t < T
        trimmed, _ = causal_lm_response_logprobs(model, pr.sequences[:, cols], pr.attention_mask[:, cols], t)
    torch.testing.assert_close(pad_right(trimmed, T) * pr.action_mask, full * pr.action_mask, atol=1e-5, rtol=1e-5)
