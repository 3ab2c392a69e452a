"""SFT of a tiny policy on a tiny synthetic world: the loss falls and the saved folder
loads with the `Auto*` classes (what vLLM, the learner and the reference model use)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sft_tiny_policy_learns_and_saves(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fgrlhf_ray.data.synthetic import write_synthetic_dataset
    from fgrlhf_ray.pipelines.tiny_policy import TinyPolicyConfig
    from fgrlhf_ray.pipelines.sft import SFTConfig, SFTEvalConfig, collate, encode_pairs, load_pairs, run_sft

    data = tmp_path / "data"
    write_synthetic_dataset(data, n=60, seed=1)
    cfg = SFTConfig(
        data_dir=str(data),
        output_dir=str(tmp_path / "sft"),
        policy=TinyPolicyConfig(vocab_size=600, hidden_size=64, num_heads=1, num_layers=2,
                                intermediate_size=128, max_position_embeddings=512),
        epochs=10,
        max_steps=40,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        progress_bar=False,
        eval=SFTEvalConfig(n_prompts=4, max_new_tokens=16, batch_size=4),
    )
    res = run_sft(cfg)
    assert res.steps == 40 and len(res.losses) == 40
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < first - 1.0, (first, last)

    out = res.output_dir
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tok) and model.config.tie_word_embeddings is False
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    records, pairs = load_pairs(data / "dev.json")
    text = records[0]["text"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # The reloaded model reproduces the trained model's loss on the training pairs.
    _, train_pairs = load_pairs(data / "train.json")
    ex, _ = encode_pairs(tok, train_pairs[:8], answer_prefix=" ", max_prompt_tokens=400, max_answer_tokens=96)
    ids, mask, labels = collate(ex, tok.pad_token_id)
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert loss < first - 1.0

    metrics = json.loads((out / "sft_metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["eval"]["sampled"]["n_responses"] == 4
    assert "errors_per_sentence/Irrelevant" in metrics["eval"]["sampled"]
