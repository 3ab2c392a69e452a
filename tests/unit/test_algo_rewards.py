"""Reward placement: offsets with a real byte-level BPE, segment → token placement,
the hand-computed paper A example from DESIGN.md, holistic / token-level / detox modes."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fgrlhf_ray.algo.kl import kl_penalty
from fgrlhf_ray.algo.rewards import (
    ScorerOutput,
    char_ends_to_token_index,
    detox_holistic_reward,
    detox_sentence_rewards,
    place_segment_rewards,
    segment_rewards_from_labels,
    token_char_offsets,
    total_token_rewards,
)
from fgrlhf_ray.data.segments import split_sentences, split_sub_sentences
from fgrlhf_ray.types import Segment, SegmentRewards

CORPUS = [
    "The Eiffel Tower, which is in Paris, was built in 1889 for the World's Fair.",
    "It is 330 metres tall; it was the tallest structure in the world until 1930.",
    "Le café est très bon, naïve façade, crème brûlée à Zürich.",
    "日本語の文です。東京は日本の首都です。",
    "Emoji time 😀🎉 and ünïcödé mixed with ASCII text.",
    "the cat sat on the mat. the cat sat on the mat. the dog sat too.",
]


def _train(use_regex: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    return tok


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    """GPT-2-style byte-level BPE (regex pre-split: tokens never cross words)."""
    return _train(use_regex=True)


@pytest.fixture(scope="module")
def bpe_no_regex() -> Tokenizer:
    """Byte-level BPE without the regex pre-split: merges cross spaces and punctuation,
    so tokens straddle segment boundaries (e.g. one token holding 'mat. the')."""
    return _train(use_regex=False)


def _byte_decoder() -> dict[str, int]:
    """The GPT-2 byte ↔ printable-unicode table, inverted (independent re-derivation)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


BYTE_DECODER = _byte_decoder()


def truth_token_of_char(tok: Tokenizer, ids: list[int], text: str, c: int) -> int:
    """Ground truth: the token holding the *last UTF-8 byte* of character c."""
    last_byte = len(text[: c + 1].encode("utf-8")) - 1
    pos = 0
    for t, i in enumerate(ids):
        n = len(tok.id_to_token(i))  # one printable char per byte
        if pos <= last_byte < pos + n:
            return t
        pos += n
    raise AssertionError("char beyond tokens")


def test_byte_decoder_matches_tokenizer(bpe):
    ids = bpe.encode("é😀").ids
    raw = b"".join(bytes(BYTE_DECODER[ch] for ch in bpe.id_to_token(i)) for i in ids)
    assert raw.decode("utf-8") == "é😀"


TEXTS = CORPUS + [
    "The cat sat on the mat, then it slept; 東京 is far 😀.",
    "crème brûlée😀😀 and 日本",
    "x",
    "  leading spaces and trailing  ",
]


@pytest.mark.parametrize("which", ["bpe", "bpe_no_regex"])
@pytest.mark.parametrize("text", TEXTS)
def test_token_char_offsets_match_byte_truth(request, which, text):
    tok: Tokenizer = request.getfixturevalue(which)
    ids = tok.encode(text).ids + [tok.token_to_id("<eos>")]

    calls = []

    def decode(x):
        calls.append(1)
        return tok.decode(x, skip_special_tokens=True)

    offsets = token_char_offsets(ids, decode)
    # Linear incremental path (≤ 2 decodes per token + 1), not the quadratic fallback.
    assert len(calls) <= 2 * len(ids) + 1
    assert len(offsets) == len(ids)
    assert "".join(text[a:b] for a, b in offsets) == text
    assert offsets[-1][0] == offsets[-1][1] == len(text)  # EOS decodes to nothing
    for k in range(1, len(offsets)):
        assert offsets[k][0] == offsets[k - 1][1]  # contiguous
    # Every character maps to the token holding its last byte — via our derived offsets
    # and via the tokenizer's own (overlapping, byte-level) offset mapping.
    hf_offsets = tok.encode(text).offsets
    for c in range(len(text)):
        want = truth_token_of_char(tok, ids, text, c)
        assert char_ends_to_token_index(offsets, [c + 1]) == [want], (text, c)
        assert char_ends_to_token_index(hf_offsets, [c + 1]) == [want], (text, c)


def test_multibyte_char_split_over_tokens(bpe):
    text = "Emoji time 🦀 done"  # 🦀 is not in the corpus: its 4 bytes are split
    ids = bpe.encode(text).ids
    assert [bpe.id_to_token(i) for i in ids][4:7] == ["ĠðŁ", "¦", "Ģ"]  # " "+2 bytes, 1 byte, 1 byte
    offsets = token_char_offsets(ids, bpe.decode)
    emoji = text.index("🦀")
    # The token holding the space and the first two bytes keeps only the space; the
    # byte-only token gets an empty span; the completing token holds the emoji.
    assert offsets[4:7] == [(emoji - 1, emoji), (emoji, emoji), (emoji, emoji + 1)]
    assert char_ends_to_token_index(offsets, [emoji + 1, emoji]) == [6, 4]


def test_response_cut_inside_a_character(bpe):
    text = "bon 😀🎉"
    ids = bpe.encode(text).ids
    for cut in range(1, len(ids) + 1):
        part = ids[:cut]
        decoded = bpe.decode(part)
        offsets = token_char_offsets(part, bpe.decode)
        assert "".join(decoded[a:b] for a, b in offsets) == decoded
        assert offsets[-1][1] == len(decoded)
        assert all(offsets[k][0] == offsets[k - 1][1] for k in range(1, len(offsets)))


def test_offsets_fall_back_when_decode_rewrites_earlier_text():
    # A decoder that cleans " ," into "," (like clean_up_tokenization_spaces) changes
    # text emitted earlier; the result must still tile the final text.
    vocab = ["Hello", " ", ",", " world", " ."]

    def decode(ids):
        return "".join(vocab[i] for i in ids).replace(" ,", ",").replace(" .", ".")

    ids = [0, 1, 2, 3, 4]
    text = decode(ids)
    offsets = token_char_offsets(ids, decode)
    assert text == "Hello, world."
    assert "".join(text[a:b] for a, b in offsets) == text
    assert char_ends_to_token_index(offsets, [len("Hello,")]) == [2]


def test_straddling_token_gets_the_segment_reward(bpe_no_regex):
    tok = bpe_no_regex
    text = "the cat sat on the mat. the dog sat too."
    ids = tok.encode(text).ids
    offsets = token_char_offsets(ids, tok.decode)
    (s1, e1), (s2, e2) = split_sentences(text)
    t1 = char_ends_to_token_index(offsets, [e1])[0]
    a, b = offsets[t1]
    assert a < e1 < b, f"expected a token straddling the sentence end, got {tok.id_to_token(ids[t1])!r}"
    assert b > s2  # it also holds the start of the next sentence
    assert t1 == truth_token_of_char(tok, ids, text, e1 - 1)


def test_char_ends_to_token_index_rules():
    offsets = [(0, 0), (0, 3), (3, 4), (4, 6), (4, 6), (6, 9), (9, 9), (0, 0)]
    # (0,0) special tokens and empty spans are never chosen; for a shared span the
    # last token (the one completing the character) wins; past the end clamps.
    assert char_ends_to_token_index(offsets, [1, 3, 4, 5, 6, 9, 50]) == [1, 1, 2, 4, 4, 5, 5]
    with pytest.raises(ValueError, match="char_end must be >= 1"):
        char_ends_to_token_index(offsets, [0])
    with pytest.raises(ValueError, match="no response token covers"):
        char_ends_to_token_index([(0, 0), (0, 0)], [1])
    assert char_ends_to_token_index([(2, 5)], [1]) == [0]  # before the first token


# ------------------------------------------------------------------ placement


def _random_offsets(rng: random.Random, L: int) -> list[tuple[int, int]]:
    offs, pos = [], 0
    for _ in range(L):
        n = rng.choice([0, 1, 1, 2, 3, 5])
        offs.append((pos, pos + n))
        pos += n
    return offs


def _reference_token(offsets, e):
    c = e - 1
    best = None
    for t, (a, b) in enumerate(offsets):
        if b > a and a <= c:
            best = t
    if best is None:
        best = next(t for t, (a, b) in enumerate(offsets) if b > a)
    return best


def _reference_place(scorers, offsets, lengths, T):
    B = len(offsets)
    total = [[0.0] * T for _ in range(B)]
    per = {}
    for s in scorers:
        vals = [v for sample in s.rewards for item in sample for v in ([item[1]] if isinstance(item, tuple) else [item])]
        if s.batch_normalize and vals:
            mu = sum(vals) / len(vals)
            sd = (sum((v - mu) ** 2 for v in vals) / len(vals)) ** 0.5
            sd = sd if sd > 1e-8 else 1.0
        else:
            mu, sd = s.mean, s.std
        grid = [[0.0] * T for _ in range(B)]
        for i in range(B):
            for item in s.rewards[i]:
                if not isinstance(item, tuple):
                    continue
                e, v = item
                if lengths[i] == 0:
                    continue
                t = lengths[i] - 1 if s.density == "sequence" else _reference_token(offsets[i], e)
                grid[i][t] += s.weight * (v - mu) / sd
            if s.rewards[i] and not isinstance(s.rewards[i][0], tuple):
                for t, v in enumerate(s.rewards[i]):
                    grid[i][t] += s.weight * (v - mu) / sd
        per[s.name] = grid
        for i in range(B):
            for t in range(T):
                total[i][t] += grid[i][t]
    return total, per


@pytest.mark.parametrize("seed", range(6))
def test_place_segment_rewards_matches_loop_reference(seed):
    rng = random.Random(seed)
    B = rng.randint(1, 5)
    T = rng.randint(1, 12)
    lengths = [rng.randint(1, T) for _ in range(B)]
    offsets = [_random_offsets(rng, L) for L in lengths]
    # Every sample needs at least one non-empty span for char-keyed segments.
    offsets = [o if any(b > a for a, b in o) else [(0, 1)] + [(1, 1)] * (len(o) - 1) for o in offsets]
    text_len = [max(b for _, b in o) for o in offsets]
    mask = torch.zeros(B, T)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1

    def char_keyed():
        return [
            sorted((rng.randint(1, text_len[i] + 3), rng.uniform(-2, 2)) for _ in range(rng.randint(0, 4)))
            for i in range(B)
        ]

    scorers = [
        ScorerOutput(name="rel", density="sub_sentence", rewards=char_keyed(), weight=0.3),
        ScorerOutput(name="fact", density="sentence", rewards=char_keyed(), weight=0.5, mean=0.1, std=2.0),
        ScorerOutput(
            name="comp",
            density="sequence",
            rewards=[[(text_len[i], rng.gauss(0, 1))] for i in range(B)],
            weight=0.3,
            batch_normalize=seed % 2 == 0,
        ),
        ScorerOutput(
            name="tok", density="token", rewards=[[rng.uniform(-1, 1) for _ in range(L)] for L in lengths], weight=0.7
        ),
    ]
    scores, per, stats = place_segment_rewards(scorers, token_offsets=offsets, action_mask=mask)
    ref_total, ref_per = _reference_place(scorers, offsets, lengths, T)
    assert scores.shape == (B, T)
    torch.testing.assert_close(scores, torch.tensor(ref_total, dtype=torch.float32), atol=1e-6, rtol=0)
    for name in ref_per:
        torch.testing.assert_close(per[name], torch.tensor(ref_per[name], dtype=torch.float32), atol=1e-6, rtol=0)
        assert stats[f"reward/{name}/mean"] == pytest.approx(sum(map(sum, ref_per[name])) / B, abs=1e-6)
    assert (scores[mask == 0] == 0).all()
    assert stats["reward/score_mean"] == pytest.approx(sum(map(sum, ref_total)) / B, abs=1e-6)


def test_placement_errors_are_actionable():
    mask = torch.ones(1, 3)
    with pytest.raises(ValueError, match="sample 0 has 2 token offsets but action_mask has 3"):
        place_segment_rewards([], token_offsets=[[(0, 1), (1, 2)]], action_mask=mask)
    bad = ScorerOutput(name="x", density="paragraph", rewards=[[(1, 1.0)]])
    with pytest.raises(ValueError, match="density 'paragraph'"):
        place_segment_rewards([bad], token_offsets=[[(0, 1), (1, 2), (2, 3)]], action_mask=mask)
    short = ScorerOutput(name="t", density="token", rewards=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="2 per-token values but 3 response tokens"):
        place_segment_rewards([short], token_offsets=[[(0, 1), (1, 2), (2, 3)]], action_mask=mask)


def test_empty_response_drops_and_counts_sequence_reward():
    mask = torch.zeros(1, 2)
    s = ScorerOutput(name="comp", density="sequence", rewards=[[(0, 5.0)]])
    scores, _, stats = place_segment_rewards([s], token_offsets=[[]], action_mask=mask)
    assert scores.abs().sum() == 0 and stats["reward/comp/dropped"] == 1.0


# ------------------------------------------------------------------ DESIGN.md hand example


WORD_TOKENS = [
    "The", " tower", " stands", " in", " Paris", ",", " near", " the", " lovely", " river", " Seine", ".",
    " It", " opened", " in", " 1889", ".",
]  # then EOS


def _word_offsets(tokens):
    offs, pos = [], 0
    for t in tokens:
        offs.append((pos, pos + len(t)))
        pos += len(t)
    return offs


def test_design_example_fine_grained_rewards_exact():
    """Two sentences / three sub-sentences, paper A weights, fixed KL β = 0.3.

    Sub-sentences: "The tower stands in Paris," (ends at token 5 ",")
                   "near the lovely river Seine." (token 11 ".")
                   "It opened in 1889." (token 16 ".")
    Sentences end at tokens 11 and 16; EOS is token 17 = L − 1.
    Relevance (w 0.3): no-error, error, no-error → +0.3 @5, −0.3 @11, +0.3 @16
    Factuality (w 0.5): error, no-error          → −0.5 @11, +0.5 @16
    Completeness (w 0.3, μ 1, σ 0.5): R = 2       → 0.3·(2−1)/0.5 = 0.6 @17
    """
    text = "".join(WORD_TOKENS)
    offsets = _word_offsets(WORD_TOKENS) + [(len(text), len(text))]  # EOS
    L = len(offsets)
    assert L == 18
    T = 20
    mask = torch.zeros(1, T)
    mask[0, :L] = 1

    subs = split_sub_sentences(text)
    sents = split_sentences(text)
    assert [text[a:b] for a, b in subs] == [
        "The tower stands in Paris,", "near the lovely river Seine.", "It opened in 1889."
    ]
    assert len(sents) == 2

    rel = ScorerOutput(
        name="relevance", density="sub_sentence", weight=0.3,
        rewards=[segment_rewards_from_labels(subs, [False, True, False])],
    )
    fact = ScorerOutput(
        name="factuality", density="sentence", weight=0.5,
        rewards=[segment_rewards_from_labels(sents, [True, False])],
    )
    comp = ScorerOutput.from_segment_rewards(
        "completeness",
        [SegmentRewards(segments=[Segment(0, len(text), 2.0)], density="sequence")],
        weight=0.3, mean=1.0, std=0.5,
    )
    scores, per, stats = place_segment_rewards([rel, fact, comp], token_offsets=[offsets], action_mask=mask)

    expected = torch.zeros(1, T)
    expected[0, 5] = 0.3
    expected[0, 11] = -0.3 - 0.5
    expected[0, 16] = 0.3 + 0.5
    expected[0, 17] = 0.6
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert stats["reward/relevance/mean"] == pytest.approx(0.3)
    assert stats["reward/factuality/mean"] == pytest.approx(0.0)
    assert stats["reward/completeness/mean"] == pytest.approx(0.6)
    assert stats["reward/relevance/segments"] == 3

    # KL term: r_t = score_t − β (log π − log π_ref), β = 0.3, k1.
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(1, T, generator=g)
    ref = -torch.rand(1, T, generator=g)
    rewards, kl_stats = total_token_rewards(scores, logprobs, ref, mask, kl_coef=0.3, estimator="k1")
    for t in range(T):
        want = (expected[0, t] - 0.3 * (logprobs[0, t] - ref[0, t])).item() if t < L else 0.0
        assert rewards[0, t].item() == pytest.approx(want, abs=1e-6)
    assert kl_stats["kl"] == pytest.approx((logprobs[0, :L] - ref[0, :L]).sum().item(), abs=1e-5)


def test_holistic_mode_single_reward_on_last_token():
    text = "".join(WORD_TOKENS)
    offsets = _word_offsets(WORD_TOKENS)
    L, T = len(offsets), 19
    mask = torch.zeros(1, T)
    mask[0, :L] = 1
    pref = ScorerOutput(name="preference", density="sequence", rewards=[[(len(text), 0.4)]], mean=0.1, std=0.6)
    scores, _, _ = place_segment_rewards([pref], token_offsets=[offsets], action_mask=mask)
    assert scores[0, L - 1].item() == pytest.approx(0.5)
    assert scores.abs().sum().item() == pytest.approx(0.5)


def test_token_level_mode_char_keyed_rm_tokens():
    # An RM with its own tokenizer scores characters ranges; each value lands on the
    # policy token holding the RM token's last character (several may add up).
    offsets = [(0, 3), (3, 9), (9, 10)]  # "The" " tower" "."
    mask = torch.ones(1, 3)
    rm = ScorerOutput(name="token_rm", density="token", rewards=[[(3, 0.5), (6, 0.25), (9, 0.25), (10, -1.0)]])
    scores, _, _ = place_segment_rewards([rm], token_offsets=[offsets], action_mask=mask)
    torch.testing.assert_close(scores, torch.tensor([[0.5, 0.5, -1.0]]))


def test_detox_rewards():
    cumulative = [0.1, 0.7, 0.4]  # P(y_1..j) after each sentence
    vals = detox_sentence_rewards(cumulative)
    assert vals == pytest.approx([-0.1, -0.6, 0.3])
    assert sum(vals) == pytest.approx(-cumulative[-1])  # telescopes to P_0 − P(y)
    assert sum(detox_sentence_rewards(cumulative, initial_toxicity=1.0)) == pytest.approx(
        detox_holistic_reward(cumulative[-1])
    )
    assert detox_holistic_reward(0.25) == 0.75
    # Placed at sentence ends through the same machinery.
    text = "".join(WORD_TOKENS)
    sents = split_sentences(text)
    offsets = _word_offsets(WORD_TOKENS)
    mask = torch.ones(1, len(offsets))
    s = ScorerOutput(
        name="toxicity", density="sentence",
        rewards=[[(e, v) for (_, e), v in zip(sents, detox_sentence_rewards([0.2, 0.5]))]],
    )
    scores, _, _ = place_segment_rewards([s], token_offsets=[offsets], action_mask=mask)
    assert scores[0, 11].item() == pytest.approx(-0.2) and scores[0, 16].item() == pytest.approx(-0.3)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
def test_total_token_rewards_ignores_junk_at_padding(estimator):
    g = torch.Generator().manual_seed(1)
    B, T = 3, 7
    mask = torch.zeros(B, T)
    for i, L in enumerate([7, 3, 1]):
        mask[i, :L] = 1
    scores = torch.randn(B, T, generator=g) * mask
    lp, ref = -torch.rand(B, T, generator=g), -torch.rand(B, T, generator=g)
    r1, s1 = total_token_rewards(scores, lp, ref, mask, kl_coef=0.2, estimator=estimator)
    junk = mask == 0
    scores2, lp2, ref2 = scores.clone(), lp.clone(), ref.clone()
    scores2[junk], lp2[junk], ref2[junk] = float("nan"), float("inf"), -1e9
    r2, s2 = total_token_rewards(scores2, lp2, ref2, mask, kl_coef=0.2, estimator=estimator)
    assert torch.equal(r1, r2) and s1 == s2
    torch.testing.assert_close(r1, (scores - 0.2 * kl_penalty(lp, ref, mask, estimator)) * mask)


def test_offsets_with_sentencepiece_style_byte_fallback_tokenizer():
    """Llama-style: '▁' word marks, <0xXX> byte-fallback tokens, and a decoder that strips
    the first leading space — the incremental window must see the same context."""
    from tokenizers import normalizers

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", *byte_tokens], show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat. the dog sat too. café"] * 20, trainer)

    def decode(ids):  # the trainer registers byte tokens as "special": keep them
        return tok.decode(ids, skip_special_tokens=False)

    for text in ["the cat sat on the mat.", "the 🦀 crab and 日本 café", " lead space"]:
        ids = tok.encode(text).ids
        decoded = decode(ids)
        assert decoded == text.lstrip(" ") or decoded == text
        offsets = token_char_offsets(ids, decode)
        assert "".join(decoded[a:b] for a, b in offsets) == decoded
        assert all(offsets[k][0] == offsets[k - 1][1] for k in range(1, len(offsets)))

    text = "the 🦀 crab and 日本 café"
    enc = tok.encode(text)
    crab_bytes = [t for t, s in enumerate(enc.tokens) if s in ("<0xF0>", "<0x9F>", "<0xA6>", "<0x80>")]
    assert len(crab_bytes) == 4
    offsets = token_char_offsets(enc.ids, decode)
    decoded = decode(enc.ids)
    crab = decoded.index("🦀")
    assert char_ends_to_token_index(offsets, [crab + 1]) == [crab_bytes[-1]]
    assert [offsets[t][1] - offsets[t][0] for t in crab_bytes] == [0, 0, 0, 1]
