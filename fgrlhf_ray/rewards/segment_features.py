"""Explicit per-segment features for segment RMs: position, relevance to the question,
redundancy with the other segments, and support by the passages (claim vs evidence).

Why: on QA-FEEDBACK a relevance error is mostly *where* a sub-sentence sits (later
ones drift: 35% errors in the first, 70% from the sixth on) and *what it is close to*
(the question, or an earlier sub-sentence it repeats). A small cross-encoder fine-tuned on
~300 answers learns little of this from the separator token alone (held-out macro-F1
0.61, no better than a logistic regression on position only), while a logistic
regression on the features below, with similarities from the pretrained sentence
encoder, reaches 0.65. `SegmentClassifierRM(segment_features=True)` therefore adds a
linear layer over these features to the logit at each separator.

A factuality error is a claim the passages do not support. A claim copied from a
passage matches one passage sentence word for word; a wrong value shows as a match that
*stops before its passage sentence does* ("X works as a | weaver" against the passage's
"X works as a | chemist"), an unsupported claim as words no passage sentence contains
in that order. The ``evidence_*`` features measure exactly that on any text (no grammar
is parsed): word n-gram matches against the passage sentences, and the frozen sentence
encoder's best cosine to one passage sentence.

Which columns a model uses is its `feature_names` (stored in its metadata; models saved
before the name list existed use `BASE_FEATURES`). `FEATURE_GROUPS` names useful sets
("base", "redundancy", "evidence", …); `resolve_feature_names` expands a list of
group and feature names.

`segment_feature_rows` is pure (arrays in, lists out) and testable on hand-made
embeddings; `SentenceEncoder` is the frozen encoder that embeds texts for it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Every feature, in a fixed order, with what it measures. A model's columns are a subset
#: (in this order unless given otherwise), named in its metadata.
FEATURES: dict[str, str] = {
    # --- base: the original ten (the column order of models saved without a name list)
    "index": "k, the segment's 0-based position",
    "relative_position": "k / (n − 1); 0 for a single segment",
    "n_segments": "n",
    "question_similarity": "cos(segment, question)",
    "max_similarity_previous": "max_j<k cos(segment, segment_j); 0 for the first",
    "max_similarity_next": "max_j>k cos(segment, segment_j); 0 for the last",
    "response_similarity": "cos(segment, whole response)",
    "question_word_overlap": "|words(seg) ∩ words(q)| / |words(seg)|",
    "question_word_coverage": "|words(seg) ∩ words(q)| / |words(q)|",
    "n_words": "words in the segment",
    # --- question, relative to the response's other segments
    "question_similarity_gap": "cos(segment, q) − max_j cos(segment_j, q): 0 for the segment closest to the question",
    # --- lexical redundancy with earlier segments
    "previous_word_containment": "max_j<k |words(seg) ∩ words(seg_j)| / |words(seg)|; 0 for the first",
    "previous_trigram_share": "share of the segment's word trigrams found in earlier segments (bigrams under 3 words)",
    # --- evidence: the passages (0 everywhere when the prompt has none)
    "evidence_similarity": "max cos(segment, passage sentence)",
    "evidence_containment": "max over passage sentences of |words(seg) ∩ words(sent)| / |words(seg)|",
    "evidence_word_share": "share of the segment's word tokens found anywhere in the passages",
    "evidence_longest_match": "longest run of consecutive segment words found consecutively in one passage sentence / words",
    "evidence_trigram_coverage": "share of segment words inside such a run of ≥ 3 words",
    "evidence_divergences": "runs of ≥ 2 words that stop while their passage sentence goes on (claim diverges from the evidence)",
    "evidence_longest_divergent": "longest such diverging run (words); 0 if none",
    "evidence_complete_matches": "runs of ≥ 2 words that end where their passage sentence ends",
    "has_evidence": "1 if the prompt has passages, else 0",
    # --- question ↔ passages ↔ segment: is the segment about what the question is about?
    "question_link_share": "share of the segment's words found in the question or in the passage sentences "
                           "closest to it (BM25 ≥ half the best): answers stay on the question's entities",
}

#: The column order of models saved before feature names were stored.
BASE_FEATURES: tuple[str, ...] = tuple(list(FEATURES)[:10])
#: Kept for callers of the original API: the base columns.
FEATURE_NAMES = BASE_FEATURES

#: Named feature sets; `resolve_feature_names` expands them.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "base": BASE_FEATURES,
    "position": ("index", "relative_position", "n_segments"),
    "question": ("question_similarity", "question_similarity_gap", "question_word_overlap", "question_word_coverage",
                 "question_link_share"),
    "redundancy": ("max_similarity_previous", "max_similarity_next", "previous_word_containment",
                   "previous_trigram_share"),
    "evidence": ("evidence_similarity", "evidence_containment", "evidence_word_share", "evidence_longest_match",
                 "evidence_trigram_coverage", "evidence_divergences", "evidence_longest_divergent",
                 "evidence_complete_matches", "has_evidence"),
    # the evidence features computed from words alone (no encoder pass)
    "evidence_words": ("evidence_containment", "evidence_word_share", "evidence_longest_match",
                       "evidence_trigram_coverage", "evidence_divergences", "evidence_longest_divergent",
                       "evidence_complete_matches", "has_evidence"),
    "lexical_redundancy": ("previous_word_containment", "previous_trigram_share"),
    "all": tuple(FEATURES),
}

#: Features that need the passages' sentence embeddings.
_EMBEDDED_EVIDENCE = frozenset({"evidence_similarity"})
#: Features that need any embedding (the others are computed from words alone).
_EMBEDDED = frozenset({"question_similarity", "max_similarity_previous", "max_similarity_next",
                       "response_similarity", "question_similarity_gap"}) | _EMBEDDED_EVIDENCE

_WORD = re.compile(r"\w+")


def resolve_feature_names(items: Sequence[str] | None) -> tuple[str, ...]:
    """Expand group names (`FEATURE_GROUPS`) and feature names into an ordered tuple of
    distinct feature names (first occurrence wins); None or empty → `BASE_FEATURES`.

    Raises ValueError naming the unknown entry and the valid choices.
    """
    if not items:
        return BASE_FEATURES
    out: list[str] = []
    for item in items:
        if item in FEATURE_GROUPS:
            names = FEATURE_GROUPS[item]
        elif item in FEATURES:
            names = (item,)
        else:
            raise ValueError(
                f"unknown segment feature {item!r}; use a group ({', '.join(FEATURE_GROUPS)}) "
                f"or a feature ({', '.join(FEATURES)})"
            )
        out += [n for n in names if n not in out]
    return tuple(out)


def needs_passage_embeddings(names: Sequence[str]) -> bool:
    """True when some feature in `names` needs the passage sentences embedded."""
    return any(n in _EMBEDDED_EVIDENCE for n in names)


def needs_embeddings(names: Sequence[str]) -> bool:
    """True when some feature in `names` needs the sentence encoder (else words suffice)."""
    return any(n in _EMBEDDED for n in names)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def word_list(text: str) -> list[str]:
    """Case-folded word tokens (`\\w+`) of `text`, in order."""
    return _WORD.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def match_runs(segment: Sequence[str], sentences: Sequence[Sequence[str]]) -> list[int]:
    """L[i]: length of the longest run of segment words ending at word i that occurs as
    consecutive words of one passage sentence (0 when word i is in no sentence).

    Args:
        segment: the m segment words.
        sentences: the passage sentences as word lists.

    Returns:
        m ints. Plain-loop reference: `match_runs_reference`.
    """
    index: dict[str, list[tuple[int, int]]] = {}
    for j, sent in enumerate(sentences):
        for p, w in enumerate(sent):
            index.setdefault(w, []).append((j, p))
    out: list[int] = []
    prev: dict[tuple[int, int], int] = {}  # (sentence, position) → run ending there at word i − 1
    for w in segment:
        cur = {(j, p): prev.get((j, p - 1), 0) + 1 for j, p in index.get(w, ())}
        out.append(max(cur.values(), default=0))
        prev = cur
    return out


def match_runs_reference(segment: Sequence[str], sentences: Sequence[Sequence[str]]) -> list[int]:
    """Plain-loop reference of `match_runs`: for each end i, try every start and every window."""
    out = []
    for i in range(len(segment)):
        best = 0
        for start in range(i + 1):
            piece = list(segment[start : i + 1])
            k = len(piece)
            if any(list(s[p : p + k]) == piece for s in sentences for p in range(len(s) - k + 1)):
                best = max(best, k)
        out.append(best)
    return out


def question_linked_words(question: str, sentences: Sequence[str]) -> set[str]:
    """Words of the question and of the passage sentences closest to it: those whose
    BM25 score for the question is at least half the best (none when no sentence
    shares a term with the question)."""
    from fgrlhf_ray.rewards.inputs import bm25_scores

    out = set(word_list(question))
    scores = bm25_scores(question, list(sentences)) if sentences else []
    best = max(scores, default=0.0)
    if best > 0:
        for sent, sc in zip(sentences, scores):
            if sc >= 0.5 * best:
                out.update(word_list(sent))
    return out


def evidence_match_stats(segment: Sequence[str], sentences: Sequence[Sequence[str]]) -> dict[str, float]:
    """The word-level ``evidence_*`` features of one segment (see `FEATURES`).

    With L = `match_runs(segment, sentences)`: a run of length L[i] ending at word i
    *breaks* when L[i+1] < L[i] + 1 (or at the segment's last word). A break of a run
    of ≥ 2 words is *complete* if some passage sentence holds that run as its last
    words, else *divergent* (the passage goes on with other words than the segment:
    for copied text, the claim departs from its evidence).

    Args:
        segment: the segment's words (`word_list`).
        sentences: the passage sentences' words.
    """
    m = len(segment)
    if m == 0 or not sentences:
        return {"evidence_containment": 0.0, "evidence_word_share": 0.0, "evidence_longest_match": 0.0,
                "evidence_trigram_coverage": 0.0, "evidence_divergences": 0.0, "evidence_longest_divergent": 0.0,
                "evidence_complete_matches": 0.0}
    seg_set = set(segment)
    all_words = set().union(*map(set, sentences))
    runs = match_runs(segment, sentences)
    covered = [False] * m
    for i, r in enumerate(runs):
        if r >= 3:
            for t in range(i - r + 1, i + 1):
                covered[t] = True
    ends = {tuple(s[-k:]) for s in sentences for k in range(2, len(s) + 1)}
    divergences = complete = 0
    longest_div = 0
    for i, r in enumerate(runs):
        broke = i == m - 1 or runs[i + 1] < r + 1
        if broke and r >= 2:
            if tuple(segment[i - r + 1 : i + 1]) in ends:
                complete += 1
            elif i < m - 1:  # a run cut by the segment's own end is not a divergence
                divergences += 1
                longest_div = max(longest_div, r)
    return {
        "evidence_containment": max(len(seg_set & set(s)) for s in sentences) / len(seg_set),
        "evidence_word_share": sum(w in all_words for w in segment) / m,
        "evidence_longest_match": max(runs) / m,
        "evidence_trigram_coverage": sum(covered) / m,
        "evidence_divergences": float(divergences),
        "evidence_longest_divergent": float(longest_div),
        "evidence_complete_matches": float(complete),
    }


def segment_feature_rows(
    question: str,
    segments: Sequence[str],
    question_embedding: torch.Tensor,
    segment_embeddings: torch.Tensor,
    response_embedding: torch.Tensor,
    *,
    names: Sequence[str] = BASE_FEATURES,
    passage_sentences: Sequence[str] = (),
    passage_embeddings: torch.Tensor | None = None,
) -> list[list[float]]:
    """Raw (unstandardised) features of each segment, columns as `names`.

    Args:
        question: the question text (no "question:" prefix needed; it only adds one word).
        segments: the n segment texts of one response, in order.
        question_embedding: (H,) unit-norm embedding of the question.
        segment_embeddings: (n, H) unit-norm embeddings of the segments.
        response_embedding: (H,) unit-norm embedding of the whole response.
        names: the feature columns (keys of `FEATURES`).
        passage_sentences: the S passage sentences (evidence features; empty: no passages).
        passage_embeddings: (S, H) their unit-norm embeddings; needed for
            ``evidence_similarity`` when there are passages.

    Returns:
        n rows of len(names) floats.
    """
    n = len(segments)
    if n == 0:
        return []
    unknown = [x for x in names if x not in FEATURES]
    if unknown:
        raise ValueError(f"unknown segment feature(s) {unknown}; known: {', '.join(FEATURES)}")
    want = set(names)
    sim = _similarities(segment_embeddings, question_embedding, response_embedding, passage_embeddings,
                        n_passage_sentences=len(passage_sentences),
                        need_passages=bool(passage_sentences) and "evidence_similarity" in want)
    q_words = _words(question)
    seg_words = [word_list(t) for t in segments]
    sent_words = [word_list(s) for s in passage_sentences]
    sent_words = [s for s in sent_words if s]
    best_q = float(sim.question.max())
    linked = question_linked_words(question, passage_sentences) if "question_link_share" in want else set()
    rows = []
    for k, text in enumerate(segments):
        f = _position_and_question_features(k, n, text, set(seg_words[k]), q_words, sim, best_q=best_q,
                                            has_evidence=bool(sent_words))
        if want & {"previous_word_containment", "previous_trigram_share"}:
            f.update(_previous_segment_features(seg_words, k))
        if any(x.startswith("evidence_") and x != "evidence_similarity" for x in want):
            f.update(evidence_match_stats(seg_words[k], sent_words))
        if "question_link_share" in want:
            f["question_link_share"] = (sum(w in linked for w in seg_words[k]) / len(seg_words[k])
                                        if seg_words[k] else 0.0)
        rows.append([f[x] for x in names])
    return rows


@dataclass(frozen=True)
class _Similarities:
    """The cosine similarities of one response's n segments (embeddings are unit-norm, so
    these are dot products); computed once per response by `_similarities`."""

    segments: torch.Tensor  # (n, n) segment × segment
    question: torch.Tensor  # (n,) segment · question
    response: torch.Tensor  # (n,) segment · whole response
    passages: torch.Tensor | None  # (n, S) segment × passage sentence; None when not needed


def _similarities(segment_embeddings: torch.Tensor, question_embedding: torch.Tensor,
                  response_embedding: torch.Tensor, passage_embeddings: torch.Tensor | None, *,
                  n_passage_sentences: int, need_passages: bool) -> _Similarities:
    """Similarities from (n, H) segment, (H,) question and (H,) response embeddings and, with
    `need_passages` (passages present and ``evidence_similarity`` wanted), the (S, H)
    passage-sentence embeddings; `ValueError` unless S == `n_passage_sentences` then."""
    segments = segment_embeddings @ segment_embeddings.T  # (n, n)
    question = segment_embeddings @ question_embedding  # (n,)
    response = segment_embeddings @ response_embedding  # (n,)
    passages = None
    if need_passages:
        if passage_embeddings is None or passage_embeddings.shape[0] != n_passage_sentences:
            raise ValueError("evidence_similarity needs one passage embedding per passage sentence")
        passages = segment_embeddings @ passage_embeddings.T  # (n, S)
    return _Similarities(segments=segments, question=question, response=response, passages=passages)


def _position_and_question_features(k: int, n: int, text: str, s_words: set[str], q_words: set[str],
                                    sim: _Similarities, *, best_q: float, has_evidence: bool) -> dict[str, float]:
    """The features every row computes (cheap): position among the `n` segments, the
    similarities and the word overlap with the question, ``has_evidence`` and
    ``evidence_similarity`` of segment `k` (`s_words`: its word set; `best_q`: the largest
    segment-question similarity)."""
    shared = len(s_words & q_words)
    return {
        "index": float(k),
        "relative_position": k / (n - 1) if n > 1 else 0.0,
        "n_segments": float(n),
        "question_similarity": float(sim.question[k]),
        "max_similarity_previous": float(sim.segments[k, :k].max()) if k > 0 else 0.0,
        "max_similarity_next": float(sim.segments[k, k + 1 :].max()) if k < n - 1 else 0.0,
        "response_similarity": float(sim.response[k]),
        "question_word_overlap": shared / len(s_words) if s_words else 0.0,
        "question_word_coverage": shared / len(q_words) if q_words else 0.0,
        "n_words": float(len(text.split())),
        "question_similarity_gap": float(sim.question[k]) - best_q,
        "has_evidence": 1.0 if has_evidence else 0.0,
        "evidence_similarity": float(sim.passages[k].max()) if sim.passages is not None else 0.0,
    }


def _previous_segment_features(seg_words: Sequence[list[str]], k: int) -> dict[str, float]:
    """Lexical redundancy of segment `k` with segments 0..k−1 (``previous_word_containment``,
    ``previous_trigram_share``; word bigrams or unigrams for segments under 3 words)."""
    s_words = set(seg_words[k])
    earlier = seg_words[:k]
    containment = max(len(s_words & set(e)) / len(s_words) for e in earlier) if earlier and s_words else 0.0
    g = 3 if len(seg_words[k]) >= 3 else max(1, len(seg_words[k]))
    mine = _ngrams(seg_words[k], g)
    seen = set().union(*(_ngrams(e, g) for e in earlier)) if earlier else set()
    return {"previous_word_containment": containment,
            "previous_trigram_share": len(mine & seen) / len(mine) if mine else 0.0}


def standardize(rows: Sequence[Sequence[float]], norm: dict) -> list[list[float]]:
    """(x − mean) / std per column with `norm` = {"mean": [...], "std": [...]} (std 0 → 1)."""
    mean, std = norm["mean"], norm["std"]
    return [[(x - m) / (s or 1.0) for x, m, s in zip(row, mean, std)] for row in rows]


def feature_norm(rows: Sequence[Sequence[float]]) -> dict:
    """Column means and standard deviations of `rows` (the training segments)."""
    t = torch.tensor(rows, dtype=torch.float64)  # (N, F)
    std = t.std(dim=0, unbiased=False) if len(rows) > 1 else torch.zeros(t.shape[1], dtype=torch.float64)
    return {"mean": t.mean(dim=0).tolist(), "std": [float(s) if s > 1e-8 else 1.0 for s in std]}


class SentenceEncoder:
    """A frozen Hugging Face encoder giving unit-norm mean-pooled text embeddings
    (how sentence-transformers models such as all-MiniLM-L6-v2 were trained to be used)."""

    def __init__(self, model, tokenizer, *, max_length: int = 256, batch_size: int = 32) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) texts → (N, H) float32 unit-norm embeddings on the CPU.

        Each distinct text is encoded once (questions and passages repeat across the
        samples of a question), in batches of similar length (less padding); padding is
        masked, so the result does not depend on the batching."""
        device = next(self.model.parameters()).device
        unique = list(dict.fromkeys(texts))
        lengths = [len(t) for t in unique]
        order = sorted(range(len(unique)), key=lambda i: -lengths[i])
        pooled_by: dict[int, torch.Tensor] = {}
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            enc = self.tokenizer([unique[j] for j in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]  # (b, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, H)
            for j, row in zip(idx, torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()):
                pooled_by[j] = row
        if not unique:
            return torch.zeros((0, 0))
        at = {t: j for j, t in enumerate(unique)}
        return torch.stack([pooled_by[at[t]] for t in texts])

    def feature_rows(self, questions, responses, spans, *, names=BASE_FEATURES, contexts=None):
        """`segment_feature_table` with this encoder."""
        return segment_feature_table(questions, responses, spans, names=names, contexts=contexts, encoder=self)


def segment_feature_table(
    questions: Sequence[str],
    responses: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int]]],
    *,
    names: Sequence[str] = BASE_FEATURES,
    contexts: Sequence[str | None] | None = None,
    encoder: "SentenceEncoder | None" = None,
) -> list[list[list[float]]]:
    """Raw feature rows (columns `names`) of the segments `spans[i]` of each
    `responses[i]`. When a feature needs embeddings, `encoder` embeds all questions,
    responses, segments and (if needed) passage sentences in one batched pass; each
    distinct passage text is split and embedded once. Word-only features need no encoder.
    `contexts[i]`: the passages of question i (None: none)."""
    contexts = list(contexts) if contexts is not None else [None] * len(questions)
    use_passages = any(n.startswith("evidence_") or n in ("has_evidence", "question_link_share") for n in names)
    if not needs_embeddings(names):  # word features only: no encoder pass at all
        zero = torch.zeros((1, 1))
        out = []
        for q, r, sp, c in zip(questions, responses, spans, contexts):
            segs = [r[a:b] for a, b in sp]
            out.append(segment_feature_rows(q, segs, zero[0], zero.expand(len(segs), 1), zero[0], names=names,
                                            passage_sentences=passage_sentences(c) if c and use_passages else ())
                       if segs else [])
        return out
    if encoder is None:
        raise ValueError(f"features {[n for n in names if n in _EMBEDDED]} need a sentence encoder")
    embed_passages = use_passages and needs_passage_embeddings(names)
    texts: list[str] = []
    passage_at: dict[str, tuple[int, tuple[str, ...]]] = {}
    for q, r, sp in zip(questions, responses, spans):
        if sp:
            texts += [q, r] + [r[a:b] for a, b in sp]
    for c in contexts if use_passages else ():
        if c and c not in passage_at:
            sents = passage_sentences(c)
            passage_at[c] = (len(texts), sents)
            if embed_passages:
                texts += list(sents)
    emb = encoder.embed(texts) if texts else None
    out, at = [], 0
    for q, r, sp, c in zip(questions, responses, spans, contexts):
        if not sp:
            out.append([])
            continue
        n = len(sp)
        e = emb[at : at + 2 + n]
        at += 2 + n
        sents: tuple[str, ...] = ()
        p_emb = None
        if c and c in passage_at:
            start, sents = passage_at[c]
            p_emb = emb[start : start + len(sents)] if embed_passages else None
        out.append(segment_feature_rows(q, [r[a:b] for a, b in sp], e[0], e[2:], e[1], names=names,
                                        passage_sentences=sents, passage_embeddings=p_emb))
    return out


@functools.lru_cache(maxsize=256)
def passage_sentences(context: str) -> tuple[str, ...]:
    """The sentences of a prompt's passage text (`fgrlhf_ray.data.segments.split_sentences`),
    cached: the same passages come with every response to a question."""
    from fgrlhf_ray.data.segments import split_sentences

    return tuple(context[a:b] for a, b in split_sentences(context))


def fit_feature_head(
    rows: Sequence[Sequence[float]],
    labels: Sequence[int],
    *,
    error_weight: float = 1.0,
    l2: float = 0.03,
    steps: int = 200,
) -> tuple[torch.Tensor, float]:
    """L2-regularised logistic regression of the error label on standardised feature rows.

    Used to warm-start a segment RM's feature head before fine-tuning, so that training
    starts from what the features alone predict and the encoder learns the rest.

    Args:
        rows: (N, F) standardised features of labelled segments.
        labels: (N,) 1 = error, 0 = no error.
        error_weight: loss weight of error examples (no-error examples weigh 1).
        l2: λ in  Σ_i c_i·BCE(w·x_i + b, y_i) / Σ_i c_i + λ·‖w‖².

    Returns:
        (w (F,), b): the error logit is w·x + b.
    """
    x = torch.tensor(rows, dtype=torch.float64)  # (N, F)
    y = torch.tensor(labels, dtype=torch.float64)  # (N,)
    c = 1.0 + (error_weight - 1.0) * y  # (N,) per-example weights
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, weight=c, reduction="sum")
        loss = bce / c.sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), float(b.detach())
