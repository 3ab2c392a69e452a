"""Explicit per-segment features for segment RMs: position, relevance to the question,
redundancy with the other segments.

Why: on QA-FEEDBACK a relevance error is mostly *where* a sub-sentence sits (later
ones drift: 35% errors in the first, 70% from the sixth on) and *what it is close to*
(the question, or an earlier sub-sentence it repeats). A small cross-encoder fine-tuned on
~300 answers learns little of this from the separator token alone (held-out macro-F1
0.61, no better than a logistic regression on position only), while a logistic
regression on the features below, with similarities from the pretrained sentence
encoder, reaches 0.65. `SegmentClassifierRM(segment_features=True)` therefore adds a
linear layer over these features to the logit at each separator.

`segment_feature_rows` is pure (arrays in, lists out) and testable on hand-made
embeddings; `SentenceEncoder` is the frozen encoder that embeds texts for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

#: Column order of `segment_feature_rows`.
FEATURE_NAMES: tuple[str, ...] = (
    "index",  # k, the segment's 0-based position
    "relative_position",  # k / (n − 1); 0 for a single segment
    "n_segments",  # n
    "question_similarity",  # cos(segment, question)
    "max_similarity_previous",  # max_j<k cos(segment, segment_j); 0 for the first
    "max_similarity_next",  # max_j>k cos(segment, segment_j); 0 for the last
    "response_similarity",  # cos(segment, whole response)
    "question_word_overlap",  # |words(seg) ∩ words(q)| / |words(seg)|
    "question_word_coverage",  # |words(seg) ∩ words(q)| / |words(q)|
    "n_words",  # words in the segment
)

_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def segment_feature_rows(
    question: str,
    segments: Sequence[str],
    question_embedding: torch.Tensor,
    segment_embeddings: torch.Tensor,
    response_embedding: torch.Tensor,
) -> list[list[float]]:
    """Raw (unstandardised) features of each segment, columns as `FEATURE_NAMES`.

    Args:
        question: the question text (no "question:" prefix needed; it only adds one word).
        segments: the n segment texts of one response, in order.
        question_embedding: (H,) unit-norm embedding of the question.
        segment_embeddings: (n, H) unit-norm embeddings of the segments.
        response_embedding: (H,) unit-norm embedding of the whole response.

    Returns:
        n rows of len(FEATURE_NAMES) floats.
    """
    n = len(segments)
    if n == 0:
        return []
    sims = segment_embeddings @ segment_embeddings.T  # (n, n) cosine similarities
    to_question = segment_embeddings @ question_embedding  # (n,)
    to_response = segment_embeddings @ response_embedding  # (n,)
    q_words = _words(question)
    rows = []
    for k, text in enumerate(segments):
        s_words = _words(text)
        shared = len(s_words & q_words)
        rows.append(
            [
                float(k),
                k / (n - 1) if n > 1 else 0.0,
                float(n),
                float(to_question[k]),
                float(sims[k, :k].max()) if k > 0 else 0.0,
                float(sims[k, k + 1 :].max()) if k < n - 1 else 0.0,
                float(to_response[k]),
                shared / len(s_words) if s_words else 0.0,
                shared / len(q_words) if q_words else 0.0,
                float(len(text.split())),
            ]
        )
    return rows


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
        """(N,) texts → (N, H) float32 unit-norm embeddings on the CPU."""
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]  # (b, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, H)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros((0, 0))

    def feature_rows(
        self, questions: Sequence[str], responses: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> list[list[list[float]]]:
        """Raw feature rows of the segments `spans[i]` of each `responses[i]`, embedding
        all questions, responses and segments in one batched pass."""
        texts: list[str] = []
        for q, r, sp in zip(questions, responses, spans):
            texts += [q, r] + [r[a:b] for a, b in sp] if sp else []
        emb = self.embed(texts) if texts else None
        out, at = [], 0
        for q, r, sp in zip(questions, responses, spans):
            if not sp:
                out.append([])
                continue
            n = len(sp)
            e = emb[at : at + 2 + n]
            at += 2 + n
            out.append(segment_feature_rows(q, [r[a:b] for a, b in sp], e[0], e[2:], e[1]))
        return out


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
