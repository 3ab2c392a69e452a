"""Sentence / sub-sentence splitting: examples from paper A's rule and property tests."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgrlhf_ray.data.segments import split_sentences, split_sub_sentences

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def texts(text: str, spans):
    return [text[a:b] for a, b in spans]


def assert_valid_spans(text: str, spans) -> None:
    """Ordered, in bounds, non-empty, non-overlapping, trimmed, covering every non-space char."""
    prev_end = 0
    covered = set()
    for a, b in spans:
        assert isinstance(a, int) and isinstance(b, int)
        assert 0 <= prev_end <= a < b <= len(text), (spans, text)
        assert not text[a].isspace() and not text[b - 1].isspace(), (text[a:b],)
        covered.update(range(a, b))
        prev_end = b
    non_space = {i for i, ch in enumerate(text) if not ch.isspace()}
    assert non_space <= covered, sorted(non_space - covered)[:10]


def n_words(s: str) -> int:
    return len(s.split())


# ------------------------------------------------------------------ examples


def test_sentences_basic():
    t = "The Eiffel Tower is in Paris. It was built in 1889!  Is it tall? Yes"
    assert texts(t, split_sentences(t)) == [
        "The Eiffel Tower is in Paris.",
        "It was built in 1889!",
        "Is it tall?",
        "Yes",
    ]


def test_sentences_keep_abbreviations_and_locate_repeats_exactly():
    t = "Dr. Smith went home. Dr. Smith went home. Dr. Smith went home."
    spans = split_sentences(t)
    assert texts(t, spans) == ["Dr. Smith went home."] * 3
    assert spans == [(0, 20), (21, 41), (42, 62)]


def test_sentences_empty_and_whitespace():
    assert split_sentences("") == []
    assert split_sentences(" \n\t ") == []
    assert split_sub_sentences("") == []
    assert split_sub_sentences("   ") == []


def test_sentences_trim_leading_and_trailing_whitespace():
    t = "  First one.   Second one.  \n"
    spans = split_sentences(t)
    assert texts(t, spans) == ["First one.", "Second one."]


def test_sub_sentences_split_after_comma_semicolon():
    t = (
        "The Eiffel Tower, which is in Paris, was built in 1889 for the World's Fair. "
        "It is 330 metres tall; it was the tallest structure in the world until 1930, "
        "when the Chrysler Building was finished."
    )
    assert texts(t, split_sub_sentences(t)) == [
        # "The Eiffel Tower," (3 words) is too short to stand alone: no split there.
        "The Eiffel Tower, which is in Paris,",
        "was built in 1889 for the World's Fair.",
        "It is 330 metres tall;",
        "it was the tallest structure in the world until 1930,",
        "when the Chrysler Building was finished.",
    ]


def test_sub_sentence_min_words_boundary_and_paper_a_exact():
    t = "one two three four five, six seven eight nine ten."
    # Both pieces have exactly 5 words: allowed.
    assert texts(t, split_sub_sentences(t)) == ["one two three four five,", "six seven eight nine ten."]
    # Paper A's code only splits when *more* than min_words words follow.
    assert texts(t, split_sub_sentences(t, paper_a_exact=True)) == [t]
    t6 = "one two three four five, six seven eight nine ten eleven."
    assert len(split_sub_sentences(t6, paper_a_exact=True)) == 2
    assert texts(t, split_sub_sentences(t, min_words=6)) == [t]


def test_short_middle_piece_merges_into_previous():
    # Candidates after "e," (5 words: split) and after "g," (2-word piece "f g,": merged
    # into the piece before it, as paper A's code does).
    t = "a b c d e, f g, h i j k l m."
    assert texts(t, split_sub_sentences(t)) == ["a b c d e, f g,", "h i j k l m."]


def test_short_first_piece_is_not_split_off():
    t = "Yes, the answer is clearly four hundred."
    assert texts(t, split_sub_sentences(t)) == [t]


def test_sub_sentences_never_cross_sentences():
    t = "Short one. Another short one, and then a much longer clause follows here."
    sents = split_sentences(t)
    subs = split_sub_sentences(t)
    assert texts(t, sents) == ["Short one.", "Another short one, and then a much longer clause follows here."]
    # "Short one." has 2 words (< 5) but is a sentence, so it is its own sub-sentence.
    assert texts(t, subs)[0] == "Short one."
    for a, b in subs:
        assert any(sa <= a and b <= sb for sa, sb in sents)


def test_no_final_punctuation_and_unicode():
    t = "Émile a dit «bonjour», puis il est parti vers la gare de Lyon. 日本語の文。 ends without a stop"
    spans = split_sentences(t)
    assert_valid_spans(t, spans)
    assert t[spans[-1][0] : spans[-1][1]].endswith("ends without a stop")
    assert_valid_spans(t, split_sub_sentences(t))


@pytest.mark.parametrize("t", ["\xa0A . .\xa0.\xa0", "\xa0. . .\xa0.\xa0", "... !!! ???", "a\u2003b.\u2003c"])
def test_odd_punctuation_and_unicode_spaces_are_covered(t):
    # pysbd's `Segmenter.segment` returns [] for the first two; we must not drop text.
    assert_valid_spans(t, split_sentences(t))
    assert split_sentences(t)
    assert_valid_spans(t, split_sub_sentences(t))


def test_min_words_must_be_positive():
    with pytest.raises(ValueError, match="min_words"):
        split_sub_sentences("a b c", min_words=0)


def test_very_long_text_is_fast_and_valid():
    sentence = "The cat, which was grey, sat on the mat; then it slept for a long while. "
    t = sentence * 300  # ~22k characters
    start = time.perf_counter()
    sents = split_sentences(t)
    subs = split_sub_sentences(t)
    elapsed = time.perf_counter() - start
    assert len(sents) == 300
    assert len(subs) == 600  # "The cat, which was grey," | "sat on the mat; then it slept ..."
    assert_valid_spans(t, subs)
    assert elapsed < 5.0, elapsed


def test_long_text_without_spaces_or_punctuation():
    t = "x" * 20000
    assert split_sentences(t) == [(0, 20000)]
    assert split_sub_sentences(t) == [(0, 20000)]


# ------------------------------------------------------------------ properties

WORDS = st.sampled_from(
    ["the", "cat", "Mr.", "Dr.", "U.S.", "e.g.", "1.5", "café", "naïve", "日本語", "😀", "word,", "clause;",
     "why?", "yes!", "end.", "...", "—", "«quote»", "(paren)", "'tis", "x", "A", "3", ",", ";", "!", "?", "."]
)
SEPARATORS = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\t", "\u00a0", "\u2003", ""])


@st.composite
def wordy_text(draw):
    parts = draw(st.lists(st.tuples(WORDS, SEPARATORS), max_size=60))
    lead = draw(SEPARATORS)
    return lead + "".join(w + s for w, s in parts)


@PROPERTY_SETTINGS
@given(st.one_of(wordy_text(), st.text(max_size=300)))
def test_sentence_spans_are_valid(text):
    assert_valid_spans(text, split_sentences(text))


@PROPERTY_SETTINGS
@given(st.one_of(wordy_text(), st.text(max_size=300)), st.integers(min_value=1, max_value=8))
def test_sub_sentence_spans_are_valid_and_follow_the_rule(text, min_words):
    subs = split_sub_sentences(text, min_words=min_words)
    assert_valid_spans(text, subs)
    sents = split_sentences(text)
    for sa, sb in sents:
        inside = [(a, b) for a, b in subs if sa <= a and b <= sb]
        # The sentence is exactly partitioned by its sub-sentences (none crosses it).
        assert inside and inside[0][0] == sa and inside[-1][1] == sb
        sentence_words = len(re.findall(r"\S+", text[sa:sb]))
        for k, (a, b) in enumerate(inside):
            piece = text[a:b]
            if k < len(inside) - 1:
                assert piece[-1] in ",;!?", piece  # split only after , ; ! ?
            if sentence_words >= min_words:
                assert len(re.findall(r"\S+", piece)) >= min_words, (piece, min_words)
            else:
                assert len(inside) == 1
    assert sum(1 for a, b in subs if any(sa <= a and b <= sb for sa, sb in sents)) == len(subs)


@PROPERTY_SETTINGS
@given(wordy_text())
def test_splitting_is_deterministic(text):
    assert split_sentences(text) == split_sentences(text)
    assert split_sub_sentences(text) == split_sub_sentences(text)
