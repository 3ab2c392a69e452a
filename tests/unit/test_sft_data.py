"""Fast checks of the SFT data path: loss mask, LR schedule, config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgrlhf_ray.config import load_model_from_yaml
from fgrlhf_ray.errors import ConfigError, DataError
from fgrlhf_ray.pipelines.sft import SFTConfig, collate, load_pairs, lr_at

ROOT = Path(__file__).resolve().parents[2]


def test_collate_masks_prompt_and_padding():
    ids, mask, labels = collate([([5, 6, 7], [8, 2]), ([9], [10, 11, 2])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 2], [9, 10, 11, 2, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # Loss only on answer tokens (EOS included); prompt and padding are -100.
    assert labels.tolist() == [[-100, -100, -100, 8, 2], [-100, 10, 11, 2, -100]]


def test_lr_schedule_warmup_then_cosine():
    kw = dict(total=100, warmup=10, min_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx(0.55)
    assert lr_at(100, **kw) == pytest.approx(0.1)


def test_demo_config_loads_and_rejects_unknown_keys(tmp_path):
    cfg = load_model_from_yaml(SFTConfig, ROOT / "configs" / "sft_demo.yaml", ["max_steps=5"])
    assert cfg.max_steps == 5 and cfg.policy.hidden_size // cfg.policy.num_heads >= 64
    with pytest.raises(ConfigError, match="lr_rate"):
        load_model_from_yaml(SFTConfig, ROOT / "configs" / "sft_demo.yaml", ["lr_rate=1"])
    with pytest.raises(ConfigError, match="head dim"):
        load_model_from_yaml(SFTConfig, ROOT / "configs" / "sft_demo.yaml", ["policy.num_heads=4"])


def test_load_pairs_errors_name_the_row(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('[{"text": "q", "answer": ["a"]}, {"text": "q2"}]')
    with pytest.raises(DataError, match="row 1"):
        load_pairs(p)
    with pytest.raises(DataError, match="fgrlhf data synth"):
        load_pairs(tmp_path / "missing.json")


def test_sft_loss_matches_plain_loop_and_hf_convention():
    import torch

    from fgrlhf_ray.pipelines.sft import sft_loss

    torch.manual_seed(0)
    ids, mask, labels = collate([([5, 6, 7], [8, 2]), ([9], [10, 11, 2])], pad_id=0)
    logits = torch.randn(2, ids.shape[1], 12)
    for w in (0.0, 0.3):
        loss, ans = sft_loss(logits, ids, mask, labels, w)
        num = den = a_num = a_den = 0.0
        for b in range(2):
            for t in range(ids.shape[1] - 1):
                if not mask[b, t + 1]:
                    continue
                ce = -torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]].item()
                weight = 1.0 if labels[b, t + 1] != -100 else w
                num, den = num + weight * ce, den + weight
                if labels[b, t + 1] != -100:
                    a_num, a_den = a_num + ce, a_den + 1
        assert loss.item() == pytest.approx(num / den, rel=1e-5)
        assert ans.item() == pytest.approx(a_num / a_den, rel=1e-5)
    # Junk logits at padded positions change nothing.
    junk = logits.clone()
    junk[1, 3] = 1e3  # predicts the padding token of row 1
    assert sft_loss(junk, ids, mask, labels, 0.3)[0].item() == pytest.approx(sft_loss(logits, ids, mask, labels, 0.3)[0].item())
