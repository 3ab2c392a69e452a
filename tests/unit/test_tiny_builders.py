"""One byte-level BPE builder: the test helper builds with the demo policy's `train_tokenizer`."""

from __future__ import annotations

import pytest

from fgrlhf_ray.pipelines.tiny_policy import train_tokenizer
from fgrlhf_ray.testing import build_tiny_llama, build_tiny_tokenizer


def test_test_tokenizer_is_the_demo_builder_on_the_test_corpus(tmp_path):
    texts = ["the cat sat on the mat.", "café 🙂 — done!"] * 3
    helper = build_tiny_tokenizer(tmp_path, vocab_size=300, corpus=texts)
    direct = train_tokenizer(texts, vocab_size=300)
    assert helper.get_vocab() == direct.get_vocab()
    assert [helper.convert_ids_to_tokens(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert direct.model_max_length == 512 and helper.model_max_length > 10**20  # the helper sets no limit
    text = "Any text, even ünïcödé 🙂, round-trips."
    assert helper.decode(helper(text)["input_ids"]) == text
    assert (tmp_path / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="too small"):
        build_tiny_tokenizer(tmp_path, vocab_size=100)


def test_tiny_llama_checks_the_head_dim(tmp_path):
    with pytest.raises(ValueError, match="below 64"):
        build_tiny_llama(tmp_path, hidden_size=128, num_heads=4)
