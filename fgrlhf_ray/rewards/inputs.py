"""Reward-model inputs: prompt splitting, passage selection, and token layouts.

Every neural RM reads ``question: Q [context: C] answer: <response>``, tokenised with
its own tokenizer. The prompt the policy saw (paper A: ``question: Q context:
wikipage: T text: ...``) is split at ``context_marker`` into the question and the
passages. Long inputs are cut in a fixed order — **passages first, then the question,
never the response**:

1. the response always gets its tokens (segment RMs split a response that does not fit
   into several windows, each with the question; sequence / token RMs, which need one
   window, cut the response's tail only as a last resort and count it);
2. the question keeps its first tokens;
3. the passages get the remaining budget: when they do not fit, their sentences are
   ranked by BM25 against the response (and question) and the best ones kept, in
   their original order (DESIGN.md: plain truncation barely beat the all-error
   baseline for factuality). ``context_selection="head"`` keeps the first tokens.

Every cut is counted in an `InputStats`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

QUESTION_PREFIX = "question:"
DEFAULT_CONTEXT_MARKER = "context:"
_MIN_QUESTION_TOKENS = 32  # question tokens a window keeps before the response is split
_WORD = re.compile(r"\w+")
# Very frequent words carry no relevance signal for BM25 passage selection.
_STOP = frozenset(
    "a an and are as at be by for from has he her his in is it its of on or she that the their "
    "they this to was were which who with".split()
)


def split_prompt(prompt: str, context_marker: str = DEFAULT_CONTEXT_MARKER) -> tuple[str, str | None]:
    """`"question: Q context: C"` → ``("Q", "C")``; a prompt without the marker is all question.

    A leading ``question:`` is dropped (the RM writes its own). The marker counts at its
    first occurrence at the start of the text or after whitespace.
    """
    text = prompt.strip()
    if text.lower().startswith(QUESTION_PREFIX):
        text = text[len(QUESTION_PREFIX):].strip()
    marker = context_marker.strip()
    if marker:
        m = re.search(r"(?:^|\s)" + re.escape(marker), text)
        if m:
            return text[: m.start()].strip(), text[m.end():].strip() or None
    return text, None


def _terms(text: str) -> list[str]:
    return [w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP]


def bm25_scores(query: str, docs: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each doc for `query`; IDF over `docs` themselves.

    score(d) = Σ_{t ∈ q} idf(t) · f(t,d)(k1+1) / (f(t,d) + k1(1 − b + b|d|/avgdl)),
    idf(t) = ln(1 + (N − n_t + 0.5)/(n_t + 0.5)). Query terms count once each.
    """
    toks = [Counter(_terms(d)) for d in docs]
    n = len(docs)
    if n == 0:
        return []
    lens = [sum(t.values()) for t in toks]
    avgdl = (sum(lens) / n) or 1.0
    df = Counter(t for tk in toks for t in tk)
    q = set(_terms(query))
    out = []
    for tk, dl in zip(toks, lens):
        s = 0.0
        for t in q:
            f = tk.get(t, 0)
            if f:
                idf = math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * dl / avgdl))
        out.append(s)
    return out


@dataclass
class InputStats:
    """Token counts cut from one RM input (summed over windows)."""

    context_tokens: int = 0  # passage tokens before selection
    context_tokens_cut: int = 0
    question_tokens_cut: int = 0
    response_tokens_cut: int = 0  # only sequence / token RMs, as a last resort
    windows: int = 1

    def add(self, other: "InputStats") -> None:
        self.context_tokens += other.context_tokens
        self.context_tokens_cut += other.context_tokens_cut
        self.question_tokens_cut += other.question_tokens_cut
        self.response_tokens_cut += other.response_tokens_cut

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SegmentWindow:
    """One encoder window of a segment RM: `input_ids` (T,) with a separator before each
    segment; `sep_positions[k]` is the position of the separator of segment
    `segment_indices[k]` (index into the response's segment list)."""

    input_ids: list[int]
    sep_positions: list[int]
    segment_indices: list[int]
    stats: InputStats = field(default_factory=InputStats)


@dataclass
class TokenLayout:
    """A sequence / token RM input: `input_ids` (T,); `response_positions[i]` is the
    input position of response token i, `response_offsets[i]` its `[start, end)`
    characters in the response. Tokens cut from the response's tail are absent."""

    input_ids: list[int]
    response_positions: list[int]
    response_offsets: list[tuple[int, int]]
    response_token_ids: list[int]
    stats: InputStats = field(default_factory=InputStats)


class InputBuilder:
    """Builds token ids for an RM from (prompt, response) within `max_length`.

    Args:
        tokenizer: the RM's Hugging Face tokenizer (fast tokenizer needed for token RMs).
        max_length: window size in tokens, special tokens included.
        use_context: include the passages (after `context_marker`) in the input.
        context_marker: where the prompt's passages start.
        context_selection: "bm25" (keep the most response-relevant passage sentences)
            or "head" (keep the first tokens).
        is_decoder: causal-LM backbone (BOS first, EOS last) vs encoder (CLS … SEP).
    """

    def __init__(
        self,
        *,
        tokenizer,
        max_length: int,
        use_context: bool,
        context_marker: str = DEFAULT_CONTEXT_MARKER,
        context_selection: str = "bm25",
        is_decoder: bool = False,
    ) -> None:
        if context_selection not in ("bm25", "head"):
            raise ValueError(f"context_selection must be 'bm25' or 'head', got {context_selection!r}")
        self.tok = tokenizer
        self.max_length = int(max_length)
        self.use_context = use_context
        self.context_marker = context_marker
        self.context_selection = context_selection
        self.is_decoder = is_decoder
        cls_id, bos_id = tokenizer.cls_token_id, tokenizer.bos_token_id
        sep_id, eos_id = tokenizer.sep_token_id, tokenizer.eos_token_id
        if is_decoder:
            self.start_ids = [bos_id] if bos_id is not None else []
            self.end_ids = [eos_id] if eos_id is not None else []
        else:
            first = cls_id if cls_id is not None else bos_id
            last = sep_id if sep_id is not None else eos_id
            self.start_ids = [first] if first is not None else []
            self.end_ids = [last] if last is not None else []
        sep = sep_id if sep_id is not None else eos_id
        if sep is None:
            sep = tokenizer.unk_token_id
        self.sep_id = sep
        self.answer_ids = self._ids(" answer:")
        self.context_header_ids = self._ids(" context:")
        fixed = len(self.start_ids) + len(self.end_ids) + len(self.answer_ids)
        if self.max_length < fixed + 8:
            raise ValueError(f"max_length={max_length} is too small: the fixed part of the input takes {fixed} tokens")

    # ------------------------------------------------------------------ pieces
    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    @property
    def _fixed(self) -> int:
        return len(self.start_ids) + len(self.end_ids) + len(self.answer_ids)

    def _context_ids(self, context: str | None, query: str, budget: int, stats: InputStats) -> list[int]:
        """Passage tokens fitting in `budget` (header included), selected as configured."""
        if not self.use_context or not context:
            return []
        from fgrlhf_ray.data.segments import split_sentences

        spans = split_sentences(context) or [(0, len(context))]
        sents = [context[a:b] for a, b in spans]
        sent_ids = [self._ids(" " + s) for s in sents]
        total = sum(len(x) for x in sent_ids)
        stats.context_tokens += total
        room = budget - len(self.context_header_ids)
        if room <= 0:
            stats.context_tokens_cut += total
            return []
        if total <= room:
            return self.context_header_ids + [t for ids in sent_ids for t in ids]
        if self.context_selection == "head":
            flat = [t for ids in sent_ids for t in ids][:room]
            stats.context_tokens_cut += total - len(flat)
            return self.context_header_ids + flat
        scores = bm25_scores(query, sents)
        order = sorted(range(len(sents)), key=lambda i: (-scores[i], i))
        chosen, used = set(), 0
        for i in order:
            if used + len(sent_ids[i]) <= room:
                chosen.add(i)
                used += len(sent_ids[i])
        kept = [t for i in sorted(chosen) for t in sent_ids[i]]
        stats.context_tokens_cut += total - len(kept)
        return self.context_header_ids + kept

    def _prefix(self, prompt: str, response: str, budget: int, stats: InputStats) -> list[int]:
        """Question (+ passages) tokens fitting in `budget`: question head first, then passages."""
        question, context = split_prompt(prompt, self.context_marker)
        q_ids = self._ids(f"{QUESTION_PREFIX} {question}")
        if len(q_ids) > budget:
            stats.question_tokens_cut += len(q_ids) - max(budget, 0)
            q_ids = q_ids[: max(budget, 0)]
        ctx = self._context_ids(context, f"{question} {response}", budget - len(q_ids), stats)
        return q_ids + ctx

    # --------------------------------------------------------------- segment RMs
    def segment_windows(self, prompt: str, response: str, spans: Sequence[tuple[int, int]]) -> list[SegmentWindow]:
        """Windows ``[CLS] question: Q [context: C] answer: <sep> seg1 <sep> seg2 … [SEP]``.

        The response is never cut: segments that do not fit one window go to further
        windows (each repeating the question and its own passage selection). A single
        segment longer than a whole window keeps its first tokens (its label still sits
        on its separator); those cut tokens count as `response_tokens_cut`.
        """
        seg_ids = [self._ids(response[a:b]) for a, b in spans]
        capacity = self.max_length - self._fixed - _MIN_QUESTION_TOKENS
        groups: list[list[int]] = []
        cut = 0
        cur: list[int] = []
        used = 0
        for k, ids in enumerate(seg_ids):
            need = 1 + len(ids)
            if need > capacity:
                cut += need - capacity
                seg_ids[k] = ids[: capacity - 1]
                need = capacity
            if cur and used + need > capacity:
                groups.append(cur)
                cur, used = [], 0
            cur.append(k)
            used += need
        if cur or not groups:
            groups.append(cur)
        windows = []
        for g in groups:
            stats = InputStats()
            resp: list[int] = []
            seps: list[int] = []
            for k in g:
                seps.append(len(resp))
                resp += [self.sep_id] + seg_ids[k]
            budget = self.max_length - self._fixed - len(resp)
            sub_response = " ".join(response[spans[k][0]:spans[k][1]] for k in g)
            head = self.start_ids + self._prefix(prompt, sub_response, budget, stats) + self.answer_ids
            ids = head + resp + self.end_ids
            windows.append(SegmentWindow(ids, [len(head) + s for s in seps], list(g), stats))
        if windows:
            windows[0].stats.response_tokens_cut += cut
            windows[0].stats.windows = len(windows)
        return windows

    # ------------------------------------------------------- sequence / token RMs
    def token_layout(self, prompt: str, response: str) -> TokenLayout:
        """``[CLS] question: Q [context: C] answer: <response tokens> [SEP]`` in one window.

        Response token offsets come from the tokenizer's offset mapping (fast tokenizer
        required). If the response alone exceeds the window minus a short question, its
        tail is cut (counted in `response_tokens_cut`).
        """
        stats = InputStats()
        enc = self.tok(response, add_special_tokens=False, return_offsets_mapping=True)
        r_ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        capacity = self.max_length - self._fixed - _MIN_QUESTION_TOKENS
        if len(r_ids) > capacity:
            stats.response_tokens_cut = len(r_ids) - capacity
            r_ids, offsets = r_ids[:capacity], offsets[:capacity]
        budget = self.max_length - self._fixed - len(r_ids)
        head = self.start_ids + self._prefix(prompt, response, budget, stats) + self.answer_ids
        ids = head + r_ids + self.end_ids
        return TokenLayout(ids, list(range(len(head), len(head) + len(r_ids))), offsets, r_ids, stats)
