"""Padding a RolloutBatch and reading response log-probs off a causal LM's logits."""

from __future__ import annotations

import pytest
import torch

from fgrlhf_ray.algo.experience import (
    gather_response_logprobs,
    pad_rollout,
    position_ids_from_attention_mask,
)
from fgrlhf_ray.types import RolloutBatch

PAD = 0


class ToyCausalLM(torch.nn.Module):
    """logits_j = E[token_j] @ W + U[position_j]: depends on the current token and on its
    position among *real* tokens, so wrong alignment or wrong position ids show up."""

    def __init__(self, vocab: int = 17, max_pos: int = 64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.tok = torch.randn(vocab, vocab, generator=g, dtype=torch.float64)
        self.pos = torch.randn(max_pos, vocab, generator=g, dtype=torch.float64)

    def forward(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.tok[ids] + self.pos[position_ids]  # (B, S, V)


def sample_rollout(model: ToyCausalLM, prompts: list[list[int]], max_new: list[int], seed: int) -> RolloutBatch:
    """Unpadded autoregressive sampling, one sample at a time, recording log π(a_t)."""
    g = torch.Generator().manual_seed(seed)
    resp_ids, resp_lps = [], []
    for prompt, n in zip(prompts, max_new):
        seq = list(prompt)
        lps = []
        for _ in range(n):
            ids = torch.tensor([seq])
            logits = model(ids, torch.arange(len(seq))[None])[0, -1]
            logp = torch.log_softmax(logits, -1)
            a = int(torch.multinomial(logp.exp(), 1, generator=g))
            seq.append(a)
            lps.append(float(logp[a]))
        resp_ids.append(seq[len(prompt) :])
        resp_lps.append(lps)
    B = len(prompts)
    return RolloutBatch(
        prompts=[""] * B,
        prompt_ids=prompts,
        responses=[""] * B,
        response_ids=resp_ids,
        logprobs=resp_lps,
        prompt_index=list(range(B)),
    )


def test_pad_rollout_layout():
    batch = RolloutBatch(
        prompts=["a", "b"],
        prompt_ids=[[5, 6, 7], [8]],
        responses=["x", "y"],
        response_ids=[[1], [2, 3, 4]],
        logprobs=[[-0.5], [-0.1, -0.2, -0.3]],
        prompt_index=[0, 1],
    )
    p = pad_rollout(batch, pad_token_id=PAD)
    assert p.prompt_len == 3 and p.response_len == 3
    assert p.sequences.tolist() == [[5, 6, 7, 1, 0, 0], [0, 0, 8, 2, 3, 4]]
    assert p.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert p.action_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0, 0], [0, 0, 0, 1, 2, 3]]
    torch.testing.assert_close(p.logprobs, torch.tensor([[-0.5, 0, 0], [-0.1, -0.2, -0.3]]))
    assert p.prompt_lengths.tolist() == [3, 1] and p.response_lengths.tolist() == [1, 3]
    assert p.action_mask.dtype == torch.float32 and p.sequences.dtype == torch.long

    wide = pad_rollout(batch, pad_token_id=PAD, prompt_len=4, response_len=5)
    assert wide.sequences.shape == (2, 9) and wide.prompt_len == 4 and wide.response_len == 5
    with pytest.raises(ValueError, match="a prompt has 3 tokens > prompt_len=2"):
        pad_rollout(batch, pad_token_id=PAD, prompt_len=2)
    bad = RolloutBatch(
        prompts=["a"], prompt_ids=[[1]], responses=["x"], response_ids=[[1, 2]], logprobs=[[-1.0]], prompt_index=[0]
    )
    with pytest.raises(ValueError, match="sample 0 has 2 response tokens but 1 logprobs"):
        pad_rollout(bad, pad_token_id=PAD)


def test_position_ids_from_attention_mask():
    m = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert position_ids_from_attention_mask(m).tolist() == [[0, 0, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("seed", range(4))
def test_gather_response_logprobs_recovers_sampler_logprobs(seed):
    model = ToyCausalLM(seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    B = 4
    prompts = [torch.randint(1, 17, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist() for _ in range(B)]
    max_new = [int(torch.randint(0, 7, (1,), generator=g)) for _ in range(B)]
    max_new[0] = max(max_new[0], 1)
    batch = sample_rollout(model, prompts, max_new, seed)
    p = pad_rollout(batch, pad_token_id=PAD)
    logits = model(p.sequences, p.position_ids)  # (B, P+T, V)
    got = gather_response_logprobs(logits, p.sequences, p.prompt_len)
    assert got.shape == (B, p.response_len)
    torch.testing.assert_close(got * p.action_mask, p.logprobs.double(), atol=1e-6, rtol=0)
    # Loop reference: logits at P+t−1 score token P+t.
    P = p.prompt_len
    for b in range(B):
        for t in range(p.response_len):
            want = torch.log_softmax(logits[b, P + t - 1], -1)[p.sequences[b, P + t]]
            assert got[b, t].item() == pytest.approx(want.item(), abs=1e-6)
    # The last position's logits predict nothing: (B, P+T−1, V) gives the same answer.
    torch.testing.assert_close(gather_response_logprobs(logits[:, :-1], p.sequences, P), got)


def test_gather_response_logprobs_temperature_and_errors():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    seq = torch.randint(0, 7, (2, 5), generator=g)
    got = gather_response_logprobs(logits, seq, 2, temperature=0.7)
    want = torch.log_softmax(logits[:, 1:4] / 0.7, -1).gather(-1, seq[:, 2:, None]).squeeze(-1)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="prompt_len must be in"):
        gather_response_logprobs(logits, seq, 0)
    with pytest.raises(ValueError, match="do not match sequences"):
        gather_response_logprobs(logits[:, :3], seq, 2)
