"""Tiny, locally built encoders for tests and smoke runs (nothing is downloaded).

`build_tiny_bert(out_dir)` trains a WordPiece tokenizer on a small corpus with
`tokenizers`, builds a randomly initialised `BertModel` from a tiny `BertConfig`, and
saves both as a Hugging Face folder usable as a reward-model `backbone`.
"""

from __future__ import annotations

import os
from pathlib import Path

_CORPUS = [
    "question: who led the british in the battle of princeton? answer: general cornwallis led them.",
    "The Battle of Princeton was fought near Princeton, New Jersey on January 3, 1777.",
    "context: wikipage: Battle of Princeton text: Washington advanced to Princeton by a back road.",
    "It was founded in the year 1820, and it is known for its old bridges; many tourists visit!",
    "The capital of the country is a large city near the sea, which has a port.",
    "Relevance, factuality and completeness are three kinds of feedback for an answer.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 1,400 1999 2008 2016.",
    "Paris is the capital of France? Berlin is the capital of Germany, and Rome of Italy.",
    "café naïve über — “quoted” text, emoji 🙂 and accents é à ü.",
]


def build_tiny_bert(
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 400,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny random BERT + WordPiece tokenizer (uncased) to `out_dir`; returns the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_CORPUS * 3, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_position_embeddings,
    )
    hf_tok.save_pretrained(str(out))
    config = BertConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(out), safe_serialization=True)
    return out
