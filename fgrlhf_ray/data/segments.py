"""Sentence and sub-sentence splitting with character offsets.

Both splitters return character spans ``[start, end)`` into the *response* string:
ordered, non-overlapping, trimmed of surrounding whitespace, and together covering
every non-whitespace character of the text (whitespace between spans belongs to no
span). An empty or all-whitespace text gives ``[]``.

Sentences come from pysbd (rule-based, well maintained, no model download; paper A
used spaCy's ``en_core_web_sm``, which cannot be downloaded here). Sub-sentences
follow paper A's released code (``split_text_to_subsentences`` in
allenai/FineGrainedRLHF): inside each sentence, split after a whitespace-delimited
word whose last character is one of ``, ; ! ?``, never leaving a piece shorter than
``min_words`` words, and never crossing a sentence boundary.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

__all__ = ["split_sentences", "split_sub_sentences", "SUB_SENTENCE_END_CHARS"]

#: A word ending in one of these characters may end a sub-sentence (paper A: ``[,;!?]``).
SUB_SENTENCE_END_CHARS = frozenset(",;!?")

_WORD_RE = re.compile(r"\S+")


@functools.lru_cache(maxsize=4)
def _segmenter(language: str):
    import pysbd  # local import: only the splitters need it

    # clean=False keeps the text verbatim, so sentence pieces can be aligned back to it.
    return pysbd.Segmenter(language=language, clean=False, char_span=False)


def _non_space_positions(text: str) -> list[int]:
    return [i for i, ch in enumerate(text) if not ch.isspace()]


def split_sentences(text: str, *, language: str = "en") -> list[tuple[int, int]]:
    """Split ``text`` into sentences; return their character spans ``[(start, end), ...]``.

    pysbd (``clean=False``) segments the text; each sentence is then mapped back to
    ``text`` by counting its non-whitespace characters, rather than by searching for the
    segment string. That makes the spans exact even when sentences repeat, and
    guarantees coverage: whatever pysbd does with whitespace, every non-whitespace
    character of ``text`` lands in exactly one span. Each span is trimmed: it starts
    and ends on a non-whitespace character.

    Args:
        text: the response text.
        language: pysbd language code (default English).

    Returns:
        Ordered, non-overlapping spans; ``[]`` for empty / all-whitespace text.
    """
    positions = _non_space_positions(text)
    if not positions:
        return []
    # `Segmenter.processor(text).process()` is pysbd's segmentation proper. We skip
    # `Segmenter.segment`, whose extra step re-finds every sentence in the text by regex
    # (quadratic), keeps state on the shared segmenter (unsafe across threads), and
    # silently drops sentences it cannot re-find (e.g. "\xa0A . .\xa0.\xa0" gives []).
    pieces = _segmenter(language).processor(text).process()
    spans: list[tuple[int, int]] = []
    consumed = 0  # non-whitespace characters of `text` already assigned to a span
    n = len(positions)
    for piece in pieces:
        k = sum(1 for ch in piece if not ch.isspace())
        if k == 0 or consumed >= n:
            continue
        last = min(consumed + k, n) - 1
        spans.append((positions[consumed], positions[last] + 1))
        consumed = last + 1
    if consumed < n:
        # pysbd dropped characters (not seen in fuzzing the processor): keep the
        # coverage guarantee by attaching the rest to the last sentence (or a new one).
        if spans:
            spans[-1] = (spans[-1][0], positions[-1] + 1)
        else:
            spans.append((positions[0], positions[-1] + 1))
    return spans


def _sub_sentence_starts(words: list[str], min_words: int, *, paper_a_exact: bool) -> list[bool]:
    """Which words start a sub-sentence (paper A's greedy rule, one sentence at a time).

    A split is considered before word ``i`` when word ``i-1`` ends in ``, ; ! ?`` and
    the rest of the sentence (words ``i..``) has at least ``min_words`` words (paper A's
    code demands *more* than ``min_words``; ``paper_a_exact=True`` reproduces that).
    If the piece that the split would close is shorter than ``min_words``:
    the first piece of the sentence just keeps growing (no split); a later piece is
    merged into the piece before it (its start flag is moved to word ``i``).
    """
    n = len(words)
    starts = [False] * n
    if n == 0:
        return starts
    starts[0] = True
    prev_start = 0
    for i in range(1, n):
        rest = n - i
        tail_ok = rest > min_words if paper_a_exact else rest >= min_words
        if words[i - 1][-1] in SUB_SENTENCE_END_CHARS and tail_ok:
            if i - prev_start < min_words:
                if prev_start > 0:
                    # Merge the short piece [prev_start, i) into the previous piece.
                    starts[prev_start] = False
                    starts[i] = True
                    prev_start = i
                # else: first piece too short: no split yet.
            else:
                starts[i] = True
                prev_start = i
    return starts


def split_sub_sentences(
    text: str,
    min_words: int = 5,
    *,
    language: str = "en",
    paper_a_exact: bool = False,
) -> list[tuple[int, int]]:
    """Split ``text`` into sub-sentences; return their character spans.

    Sentences come from :func:`split_sentences`; each sentence is cut into
    whitespace-delimited words and split after a word whose last character is one of
    ``, ; ! ?``. Every piece has at least ``min_words`` words, except a sentence that
    is itself shorter (it stays one piece): a too-short first piece is not split off,
    a too-short later piece is merged into the piece before it, and no split is made
    that would leave fewer than ``min_words`` words at the end of the sentence.
    Sentence ends are always sub-sentence ends (a sub-sentence never crosses a
    sentence boundary).

    Args:
        text: the response text.
        min_words: minimum words per sub-sentence (paper A: 5). Must be >= 1.
        language: pysbd language code.
        paper_a_exact: reproduce paper A's off-by-one, which only splits when *more
            than* ``min_words`` words follow (so the last piece has >= min_words + 1).

    Returns:
        Ordered, non-overlapping, trimmed spans covering all non-whitespace characters.
    """
    if min_words < 1:
        raise ValueError(f"split_sub_sentences: min_words must be >= 1, got {min_words}")
    spans: list[tuple[int, int]] = []
    for s_start, s_end in split_sentences(text, language=language):
        matches = list(_WORD_RE.finditer(text, s_start, s_end))
        words = [m.group() for m in matches]
        starts = _sub_sentence_starts(words, min_words, paper_a_exact=paper_a_exact)
        piece_start = None
        for i, m in enumerate(matches):
            if starts[i]:
                if piece_start is not None:
                    spans.append((piece_start, matches[i - 1].end()))
                piece_start = m.start()
        if piece_start is not None:
            spans.append((piece_start, matches[-1].end()))
    return spans


def answer_shape(texts: Sequence[str], *, min_words: int = 5) -> dict[str, float]:
    """Mean words, sentences and sub-sentences per text: the quantities a policy can game
    against per-segment rewards (fewer, longer sentences under a per-sentence penalty).

    Logged per PPO step (`shape/*` in metrics.jsonl) and per evaluated checkpoint in the demo.
    """
    n = max(len(texts), 1)
    return {
        "shape/words_per_answer": sum(len(_WORD_RE.findall(t)) for t in texts) / n,
        "shape/sentences_per_answer": sum(len(split_sentences(t)) for t in texts) / n,
        "shape/sub_sentences_per_answer": sum(len(split_sub_sentences(t, min_words)) for t in texts) / n,
    }
