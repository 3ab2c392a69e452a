"""CriticModel: shapes, padding invariance, value alignment, save/load (tiny in-memory Llama, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from fgrlhf_ray.workers.critic import CRITIC_META_FILE, VALUE_HEAD_FILE, CriticModel, gather_values

VOCAB = 64


def _config(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, **kw)


@pytest.fixture()
def critic() -> CriticModel:
    torch.manual_seed(0)
    c = CriticModel(backbone=LlamaModel(_config()))
    with torch.no_grad():  # a non-zero head, so the checks below see real values
        c.value_head.weight.normal_(0, 1.0)
        c.value_head.bias.fill_(0.3)
    return c.eval()


def test_forward_shape_and_dtype(critic):
    seq = torch.randint(0, VOCAB, (3, 7))
    values = critic(seq, torch.ones_like(seq))
    assert values.shape == (3, 7)
    assert values.dtype == torch.float32
    assert torch.isfinite(values).all()


def test_new_critic_has_zero_head():
    c = CriticModel(backbone=LlamaModel(_config())).eval()
    seq = torch.randint(0, VOCAB, (2, 5))
    assert torch.equal(c(seq, torch.ones_like(seq)), torch.zeros(2, 5))


def test_left_padding_gives_the_unpadded_values(critic):
    """A left-padded row must give the same values at its real tokens as the row alone
    (position ids are counted over real tokens, padding is masked)."""
    real = torch.randint(0, VOCAB, (1, 5))
    alone = critic(real, torch.ones_like(real))
    padded = torch.cat([torch.full((1, 3), 7), real], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], dim=1)
    got = critic(padded, mask)[:, 3:]
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_junk_in_right_padding_changes_nothing(critic):
    seq = torch.randint(0, VOCAB, (2, 8))
    mask = torch.ones_like(seq)
    mask[:, 6:] = 0
    junk = seq.clone()
    junk[:, 6:] = torch.randint(0, VOCAB, (2, 2))
    a, b = critic(seq, mask), critic(junk, mask)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)


def test_gather_values_alignment():
    values = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7)  # P=3, T=4
    out = gather_values(values, prompt_len=3, num_actions=4)
    # response token t sits at column 3+t; its state is the column before it.
    assert torch.equal(out, values[:, 2:6])
    with pytest.raises(ValueError, match="P=3 \\+ T=5"):
        gather_values(values, prompt_len=3, num_actions=5)


def test_save_and_load_roundtrip(critic, tmp_path):
    seq = torch.randint(0, VOCAB, (2, 6))
    before = critic(seq, torch.ones_like(seq))
    critic.save_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / VALUE_HEAD_FILE).is_file() and (tmp_path / "c" / CRITIC_META_FILE).is_file()
    loaded = CriticModel.from_pretrained(tmp_path / "c").eval()
    torch.testing.assert_close(loaded(seq, torch.ones_like(seq)), before, atol=0, rtol=0)


def test_save_with_explicit_state_dict(critic, tmp_path):
    """The learner saves gathered ZeRO-3 weights through `state_dict=`; they must win."""
    sd = {k: v.clone() for k, v in critic.state_dict().items()}
    sd["value_head.bias"] = torch.tensor([5.0])
    critic.save_pretrained(tmp_path / "c", state_dict=sd)
    loaded = CriticModel.from_pretrained(tmp_path / "c")
    assert float(loaded.value_head.bias.detach()) == 5.0


def test_new_critic_from_a_causal_lm_folder_takes_its_backbone(tmp_path):
    torch.manual_seed(1)
    lm = LlamaForCausalLM(_config())
    lm.save_pretrained(tmp_path / "policy")
    c = CriticModel.from_pretrained(tmp_path / "policy")
    for name, p in c.backbone.named_parameters():
        assert torch.equal(p, lm.model.get_parameter(name)), name
    assert torch.count_nonzero(c.value_head.weight) == 0


def test_missing_folder_error_is_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        CriticModel.from_pretrained(tmp_path)
