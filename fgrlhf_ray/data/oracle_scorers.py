"""The synthetic world's oracle as ordinary `kind: function` reward scorers.

The demo's *oracle-reward arm* trains PPO on these instead of learned reward models, which
isolates what reward **density** does from what reward-model **quality** does:

    fine-grained   relevance    per sub-sentence  +1 / −1 (no Irrelevant/Redundant/Incoherent span)
                   factuality   per sentence      +1 / −1 (no Wrong-Grounding/Unverifiable span)
                   completeness per answer        2·(covered required weight / max) − 1  ∈ [−1, 1]
    holistic       quality      per answer        Q / max Q (the oracle's quality score, ≤ 1)

with paper A's weights applied by the trainer, as for learned RMs. Segments are cut by the
same splitters the learned segment RMs use (`segment_splitter`), and a segment is an error
when it overlaps an oracle error span of its family — exactly how the RMs' training labels
are made from feedback rows (`label_segments`), so the oracle scorer is the perfect RM of the
same design. Each is a batched ``fn(prompts, responses) -> list`` (config: ``kind: function,
target: fgrlhf_ray.data.oracle_scorers:relevance``): a template for any verifier a user has.

The question record is parsed back from the policy prompt (`record_from_prompt`), so the
scorers need nothing but the text PPO already sends to every scorer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from fgrlhf_ray.data.rm_data import label_segments, segment_splitter
from fgrlhf_ray.data.synthetic_oracle import (
    COVER_WEIGHT,
    FACTUALITY_TYPES,
    RELEVANCE_TYPES,
    Oracle,
    QuestionSpec,
    spec_from_record,
)
from fgrlhf_ray.errors import DataError
from fgrlhf_ray.types import Segment

_PROMPT = re.compile(r"question: (?P<q>.*?) context: (?P<ctx>.*?)(?: answer:)?\s*$", re.DOTALL)
_PASSAGE = re.compile(r"wikipage: (?P<title>.*?) text: (?P<content>.*)", re.DOTALL)
_ORACLE = Oracle()


def record_from_prompt(prompt: str) -> dict:
    """``question: Q context: wikipage: T text: C | wikipage: … [answer:]`` → a prompts row
    ``{"question", "passages": [{"wikipage", "content"}]}`` (DataError if it is not one)."""
    m = _PROMPT.fullmatch(prompt)
    if m is None:
        raise DataError(f"oracle scorer: prompt {prompt[:80]!r}… is not 'question: … context: … answer:'")
    passages = []
    for part in m.group("ctx").split(" | "):
        p = _PASSAGE.fullmatch(part)
        if p is None:
            raise DataError(f"oracle scorer: passage {part[:60]!r}… is not 'wikipage: T text: C'")
        passages.append({"wikipage": p.group("title"), "content": p.group("content")})
    return {"question": m.group("q"), "passages": passages}


@lru_cache(maxsize=4096)
def _spec(prompt: str) -> QuestionSpec:
    return spec_from_record(record_from_prompt(prompt))


def _segment_labels(prompt: str, response: str, *, density: str, types: Sequence[str]) -> list[Segment]:
    spans = segment_splitter(density)(response)
    errors = [(e["start"], e["end"]) for e in _ORACLE.annotate(_spec(prompt), response)["errors"]
              if e["error type"] in types]
    return [Segment(a, b, -1.0 if lab else 1.0, "error" if lab else "no_error")
            for (a, b), lab in zip(spans, label_segments(response, spans, errors))]


def relevance(prompts: Sequence[str], responses: Sequence[str]) -> list[list[Segment]]:
    """Per sub-sentence: −1 if it overlaps an Irrelevant / Redundant / Incoherent span, else +1."""
    return [_segment_labels(p, r, density="sub_sentence", types=RELEVANCE_TYPES) for p, r in zip(prompts, responses)]


def factuality(prompts: Sequence[str], responses: Sequence[str]) -> list[list[Segment]]:
    """Per sentence: −1 if it overlaps a Wrong-Grounding / Unverifiable span, else +1."""
    return [_segment_labels(p, r, density="sentence", types=FACTUALITY_TYPES) for p, r in zip(prompts, responses)]


def completeness(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Per answer: 2·(Σ COVER_WEIGHT of covered required facts / Σ of all) − 1."""
    out = []
    for p, r in zip(prompts, responses):
        spec = _spec(p)
        missing = set(_ORACLE.judge(spec, r)[2])
        covered = sum(COVER_WEIGHT[f.kind] for f in spec.required if f not in missing)
        out.append(2.0 * covered / _ORACLE.max_quality(spec) - 1.0)
    return out


def holistic(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Per answer: the oracle's quality Q / max Q (1 = every required fact, no error)."""
    return [_ORACLE.quality(_spec(p), r) / _ORACLE.max_quality(_spec(p)) for p, r in zip(prompts, responses)]
