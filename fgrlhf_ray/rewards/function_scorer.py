"""Non-neural scorers with the `RewardModel` interface: user functions and toxicity.

- `FunctionScorer` wraps a user ``module:function`` (or any callable) that returns, per
  response, a float (whole-response reward), a `SegmentRewards`, or a list of segments
  as `Segment`, ``(char_end, value)``, ``(char_start, char_end, value)`` or dicts with
  ``char_start`` / ``char_end`` / ``value`` / optional ``label``.
- `DetoxScorer` turns any toxicity probability P(text) → [0, 1] into paper A's detox
  rewards: holistic 1 − P(y) on the whole response, or fine-grained
  −(P(y_1..j) − P(y_1..j−1)) after each sentence j (P of the empty prefix is taken as
  0, so the fine-grained rewards sum to −P(y)).
- `hf_toxicity(path)` builds a batched P(text) from a local Hugging Face
  sequence-classification model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.infra.targets import import_target
from fgrlhf_ray.rewards.base import check_pair_lengths
from fgrlhf_ray.types import Segment, SegmentRewards

_DENSITIES = ("sub_sentence", "sentence", "sequence", "token")


def _finite(x: Any, where: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: reward value {x!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: reward value {v} is not finite")
    return v


def to_segment_rewards(result: Any, response: str, *, density: str, name: str, where: str) -> SegmentRewards:
    """Normalise one user-function result for `response` into `SegmentRewards`."""
    if isinstance(result, SegmentRewards):
        return result
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        if density != "sequence":
            raise ValueError(f"{where}: the function returned a single number but the scorer's density is {density!r}; "
                             "return segments, or declare density 'sequence'")
        return SegmentRewards([Segment(0, len(response), _finite(result, where))], density, name)
    if not isinstance(result, (list, tuple)):
        raise ValueError(f"{where}: expected a number, SegmentRewards or a list of segments, got {type(result).__name__}")
    segs: list[Segment] = []
    prev_end = 0
    for k, item in enumerate(result):
        w = f"{where}, segment {k}"
        if isinstance(item, Segment):
            seg = item
        elif isinstance(item, dict):
            missing = [key for key in ("char_end", "value") if key not in item]
            if missing:
                raise ValueError(f"{w}: dict segment lacks {missing}")
            seg = Segment(int(item.get("char_start", prev_end)), int(item["char_end"]),
                          _finite(item["value"], w), item.get("label"), item.get("probability"))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            seg = Segment(prev_end, int(item[0]), _finite(item[1], w))
        elif isinstance(item, (list, tuple)) and len(item) == 3:
            seg = Segment(int(item[0]), int(item[1]), _finite(item[2], w))
        else:
            raise ValueError(f"{w}: expected Segment, dict, (char_end, value) or (char_start, char_end, value), got {item!r}")
        if not 0 <= seg.char_start <= seg.char_end <= len(response):
            raise ValueError(f"{w}: span [{seg.char_start}, {seg.char_end}) is outside the response (length {len(response)})")
        segs.append(seg)
        prev_end = seg.char_end
    segs.sort(key=lambda s: s.char_end)
    return SegmentRewards(segs, density, name)


class FunctionScorer:
    """A `RewardModel` around a user function.

    Args:
        target: the callable, or a ``"module:function"`` string.
        name: scorer name (logs, metrics).
        density: where its rewards land (sub_sentence / sentence / sequence / token).
        batched: True: ``fn(prompts, responses) -> list`` (one result per response);
            False: ``fn(prompt, response) -> result``, called per response.
    """

    kind = "function"

    def __init__(self, *, target: Callable | str, name: str = "function", density: str = "sequence",
                 batched: bool = True):
        if density not in _DENSITIES:
            raise ConfigError(f"FunctionScorer {name!r}: density must be one of {', '.join(_DENSITIES)}, got {density!r}")
        self.target = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
        self.fn = import_target(target) if isinstance(target, str) else target
        self.name = name
        self.density = density
        self.batched = batched
        self.normalization = None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:
        check_pair_lengths(prompts, responses)
        if self.batched:
            results = list(self.fn(list(prompts), list(responses)))
            if len(results) != len(responses):
                raise ValueError(f"function scorer {self.name!r} ({self.target}) returned {len(results)} results "
                                 f"for {len(responses)} responses")
        else:
            results = [self.fn(p, r) for p, r in zip(prompts, responses)]
        return [
            to_segment_rewards(res, r, density=self.density, name=self.name,
                               where=f"function scorer {self.name!r} ({self.target}), response {i}")
            for i, (res, r) in enumerate(zip(results, responses))
        ]


class DetoxScorer:
    """Paper A's detoxification rewards over any toxicity probability P(text).

    Args:
        toxicity: P(text) → [0, 1]; a callable or ``"module:function"``.
        mode: "fine_grained" (per sentence: −(P(y_1..j) − P(y_1..j−1))) or
            "holistic" (one value 1 − P(y)).
        batched: True if `toxicity` takes a list of texts and returns a list of floats.
        name: scorer name.
    """

    kind = "function"

    def __init__(self, *, toxicity: Callable | str, mode: str = "fine_grained", batched: bool = False,
                 name: str = "toxicity"):
        if mode not in ("fine_grained", "holistic"):
            raise ConfigError(f"DetoxScorer: mode must be 'fine_grained' or 'holistic', got {mode!r}")
        self.toxicity = import_target(toxicity) if isinstance(toxicity, str) else toxicity
        self.mode = mode
        self.batched = batched
        self.name = name
        self.density = "sentence" if mode == "fine_grained" else "sequence"
        self.normalization = None

    def _p(self, texts: list[str]) -> list[float]:
        vals = self.toxicity(texts) if self.batched else [self.toxicity(t) for t in texts]
        vals = [_finite(v, f"DetoxScorer {self.name!r}: toxicity") for v in vals]
        if len(vals) != len(texts):
            raise ValueError(f"DetoxScorer {self.name!r}: toxicity returned {len(vals)} values for {len(texts)} texts")
        return vals

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:
        check_pair_lengths(prompts, responses)
        if self.mode == "holistic":
            ps = self._p(list(responses))
            return [SegmentRewards([Segment(0, len(r), 1.0 - p, None, p)], "sequence", self.name)
                    for r, p in zip(responses, ps)]
        from fgrlhf_ray.data.segments import split_sentences

        spans = [split_sentences(r) for r in responses]
        # Every sentence-ending prefix of every response, scored in one call.
        prefixes = [r[:b] for r, sp in zip(responses, spans) for _, b in sp]
        ps = iter(self._p(prefixes)) if prefixes else iter(())
        out = []
        for r, sp in zip(responses, spans):
            segs, prev = [], 0.0
            for a, b in sp:
                p = next(ps)
                segs.append(Segment(a, b, prev - p, None, p))  # −(P_j − P_{j−1})
                prev = p
            out.append(SegmentRewards(segs, "sentence", self.name))
        return out


def hf_toxicity(path: str, *, toxic_label: str | int = "toxic", device: str = "cpu", batch_size: int = 32,
                max_length: int = 512) -> Callable[[list[str]], list[float]]:
    """A batched P(toxic | text) from a local HF sequence-classification folder.

    `toxic_label` is the label name (matched case-insensitively in `id2label`) or index.
    With a single output logit, P = sigmoid(logit).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    n = model.config.num_labels
    if isinstance(toxic_label, str) and n > 1:
        names = {str(v).lower(): int(k) for k, v in model.config.id2label.items()}
        if toxic_label.lower() not in names:
            raise ConfigError(f"hf_toxicity({path!r}): no label {toxic_label!r}; labels: {sorted(names)}")
        idx = names[toxic_label.lower()]
    else:
        idx = int(toxic_label) if not isinstance(toxic_label, str) else 0

    @torch.inference_mode()
    def p_toxic(texts: list[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            logits = model(**enc).logits.float()
            p = torch.sigmoid(logits[:, 0]) if n == 1 else torch.softmax(logits, -1)[:, idx]
            out += p.cpu().tolist()
        return out

    return p_toxic
