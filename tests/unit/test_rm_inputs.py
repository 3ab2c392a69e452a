"""RM input layout: prompt splitting, passage selection and the truncation order
(passages first, then the question, never the response)."""

from __future__ import annotations

import unicodedata

import pytest

from fgrlhf_ray.rewards.inputs import InputBuilder, bm25_scores, split_prompt
from fgrlhf_ray.rewards.tiny import build_tiny_bert


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    path = build_tiny_bert(tmp_path_factory.mktemp("bert"))
    return AutoTokenizer.from_pretrained(str(path))


def builder(tok, max_length, use_context=True, selection="bm25"):
    return InputBuilder(tokenizer=tok, max_length=max_length, use_context=use_context, context_selection=selection)


FILLER = " ".join(f"The city number {i} has a large port near the sea." for i in range(30))
KEY = "Cornwallis left 1,400 troops under Mawhood."
PROMPT = f"question: who led the british troops? context: wikipage: Princeton text: {FILLER} {KEY} {FILLER}"
RESPONSE = "Cornwallis led the troops, and Mawhood was at Princeton. The battle was in 1777."


def test_split_prompt():
    assert split_prompt("question: Who? context: wikipage: X text: abc") == ("Who?", "wikipage: X text: abc")
    assert split_prompt("Who won?") == ("Who won?", None)
    assert split_prompt("question: Q context:") == ("Q", None)
    assert split_prompt("question: Q ctx: abc", context_marker="ctx:") == ("Q", "abc")
    # "context:" inside a word is not the marker
    assert split_prompt("question: noncontext: x") == ("noncontext: x", None)


def test_bm25_prefers_documents_with_rare_query_terms():
    docs = ["the port is near the sea", "cornwallis left troops under mawhood", "the sea is large"]
    s = bm25_scores("cornwallis and mawhood", docs)
    assert s[1] > 0 and s[0] == 0 and s[2] == 0
    assert bm25_scores("anything", []) == []


def _decode(tok, ids):
    return tok.decode(ids)


def test_passages_are_cut_first_and_bm25_keeps_the_relevant_sentence(tok):
    b = builder(tok, 96)
    spans = [(0, 55), (56, len(RESPONSE))]
    [win] = b.segment_windows(PROMPT, RESPONSE, spans)
    assert len(win.input_ids) <= 96
    st = win.stats
    assert st.context_tokens_cut > 0 and st.question_tokens_cut == 0 and st.response_tokens_cut == 0
    text = _decode(tok, win.input_ids)
    assert "mawhood" in text.split("answer")[0]  # the BM25-relevant passage sentence survived
    # every response token is there, after the separators
    for k, (a, z) in enumerate(spans):
        seg_ids = tok(RESPONSE[a:z], add_special_tokens=False)["input_ids"]
        pos = win.sep_positions[k]
        assert win.input_ids[pos] == tok.sep_token_id
        assert win.input_ids[pos + 1 : pos + 1 + len(seg_ids)] == seg_ids


def test_head_selection_keeps_the_first_passage_tokens(tok):
    b = builder(tok, 96, selection="head")
    layout = b.token_layout(PROMPT, RESPONSE)
    text = _decode(tok, layout.input_ids)
    assert "city number 0" in text and "mawhood" not in text.split("answer")[0]
    assert layout.stats.context_tokens_cut > 0


def test_question_is_cut_after_passages_but_response_is_kept(tok):
    long_q = "question: " + " ".join(["who led the british troops"] * 40) + " context: " + KEY
    b = builder(tok, 80)
    layout = b.token_layout(long_q, RESPONSE)
    assert len(layout.input_ids) <= 80
    assert layout.stats.question_tokens_cut > 0
    assert layout.stats.context_tokens_cut == layout.stats.context_tokens  # passages gone entirely
    assert layout.stats.response_tokens_cut == 0
    r_ids = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    assert [layout.input_ids[p] for p in layout.response_positions] == r_ids


def test_without_context_flag_passages_are_dropped(tok):
    b = builder(tok, 512, use_context=False)
    layout = b.token_layout(PROMPT, RESPONSE)
    assert "port" not in _decode(tok, layout.input_ids)
    assert layout.stats.context_tokens == 0


def test_long_response_is_split_into_windows_not_cut(tok):
    sentences = [f"Sentence {i} says the troops marched to the city near the sea." for i in range(12)]
    response = " ".join(sentences)
    spans, pos = [], 0
    for s in sentences:
        spans.append((pos, pos + len(s)))
        pos += len(s) + 1
    b = builder(tok, 96)
    wins = b.segment_windows(PROMPT, response, spans)
    assert len(wins) > 1
    assert sorted(k for w in wins for k in w.segment_indices) == list(range(12))
    for w in wins:
        assert len(w.input_ids) <= 96
        assert all(w.input_ids[p] == tok.sep_token_id for p in w.sep_positions)
    assert wins[0].stats.response_tokens_cut == 0 and wins[0].stats.windows == len(wins)


def test_token_layout_offsets_point_into_the_response(tok):
    response = "Café Mawhood led 1,400 troops!"
    layout = builder(tok, 64, use_context=False).token_layout("question: q", response)
    assert layout.response_offsets[0][0] == 0 and layout.response_offsets[-1][1] == len(response)
    for (a, z), tid in zip(layout.response_offsets, layout.response_token_ids):
        piece = tok.convert_ids_to_tokens(tid).removeprefix("##")
        if piece != tok.unk_token:  # the uncased normaliser lower-cases and strips accents
            plain = "".join(c for c in unicodedata.normalize("NFD", response[a:z]) if not unicodedata.combining(c))
            assert plain.lower() == piece


def test_sequence_response_is_cut_only_as_a_last_resort(tok):
    response = " ".join(["troops"] * 200)
    layout = builder(tok, 64, use_context=False).token_layout("question: q", response)
    assert len(layout.input_ids) <= 64
    n_tokens = len(tok(response, add_special_tokens=False)["input_ids"])
    assert layout.stats.response_tokens_cut == n_tokens - len(layout.response_positions)
    assert layout.stats.response_tokens_cut > 0
