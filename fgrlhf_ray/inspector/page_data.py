"""The reward inspector's page data: responses and reward-model verdicts → one JSON document.

Pure Python (no Ray, no models; `token_strips` alone imports torch, lazily, for training's
placement code). What the page shows for each response, and how it is computed:

- **marks** — per reward model, one `[start, end, label, probability, raw, weighted]` per
  segment. `[start, end)` are *code-point* offsets into the response, exactly the offsets the
  reward models return (`fgrlhf_ray.types.Segment`, `/v1/score`); the page slices
  `Array.from(text)`, which counts code points too, so an emoji or an accent never shifts a
  segment. `weighted` = w · (v − μ) / σ with the model's weight and normalisation, as
  `fgrlhf_ray.algo.rewards.place_segment_rewards` weighs it (`algo.weighting.weighted_values`).
- **labels** — reference annotations in the QA-FEEDBACK `feedback` schema (human labels of a
  QA-FEEDBACK file, the synthetic world's oracle): one `[start, end, error type, explanation]`
  per error span, drawn as one more lane (named by its source, e.g. `human`, `oracle`).
- **stats** — per lane `{segments, flagged, share, raw, weighted}` (labels: `segments` =
  `flagged` = error spans, plus `missing`); **metrics** — `total` = Σ of the models'
  `weighted`, `words`, `chars`, `tokens`. A segment is *flagged* when its label is not `no_error`, or, for a model without
  labels, when its value is ≤ 0 — the complement of `fgrlhf eval`'s "error-free" rule.
- **strip** — per policy token `[start, end, value, {model: contribution}]`: the summed
  weighted reward on that token, placed as in training (a segment's value on the token holding
  its last character, a sequence value on the last token; no KL term). Tokens come from the
  policy tokenizer's offset mapping, or, without one, from whitespace words (`word_offsets`).

The JSON is embedded in the HTML page with `json_for_script`, which escapes `<`, `>` and `&`
so that no response text (`</script>`, `<!--`) can end the data block; the page inserts every
string as text, never as markup. Filters (`parse_filter`) are the same little language the page
accepts: `factuality.flagged >= 2 and total < 0`.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fgrlhf_ray.algo.weighting import RewardSpec

FORMAT = "fgrlhf-inspect/1"

#: Statistics a filter may name after `<lane>.`, and the bare ones.
LANE_METRICS = ("segments", "flagged", "share", "raw", "weighted", "missing")
RESPONSE_METRICS = ("total", "words", "chars", "tokens")


@dataclass(frozen=True)
class ModelInfo:
    """One reward model as the page shows it: its density and kind, and how its raw values are
    weighed (`spec`: training's w · (v − μ) / σ, `fgrlhf_ray.algo.weighting`)."""

    name: str
    density: str
    weight: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    kind: str | None = None

    @property
    def spec(self) -> "RewardSpec":
        from fgrlhf_ray.algo.weighting import RewardSpec  # torch loads on first use, not on import

        return RewardSpec(name=self.name, weight=self.weight, mean=self.mean, std=self.std)


@dataclass
class Item:
    """One response to show.

    `source` says where it came from (`file:line`); `labels` maps a label source (`human`,
    `oracle`) to a QA-FEEDBACK `feedback` dict (`errors` with `start`/`end`/`error type`
    [/`explanation`], `missing-info`) whose offsets index `response`.
    """

    prompt: str
    response: str
    policy: str = "policy"
    sample: int = 0
    source: str = ""
    labels: dict[str, dict] = field(default_factory=dict)


# ------------------------------------------------------------------------ numbers


def _num(x: Any) -> float | None:
    """A JSON-safe float (None for NaN / ±inf / missing)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def is_flagged(label: str | None, value: float) -> bool:
    """Whether the page counts a segment as flagged (an error): label ≠ `no_error`; without a
    label, value ≤ 0 (the complement of `fgrlhf eval`'s error-free rule)."""
    return label != "no_error" if label is not None else not value > 0


# ------------------------------------------------------------------ segment ranges


class PageDataError(ValueError):
    """A verdict or label that does not fit its response (the message names the item and segment)."""


def _field(seg: Any, name: str, default: Any = None) -> Any:
    return seg.get(name, default) if isinstance(seg, Mapping) else getattr(seg, name, default)


def char_ranges(text: str, segments: Sequence[Any], *, where: str = "") -> list[tuple[int, int]]:
    """Validated `[start, end)` code-point ranges of `segments` (objects or dicts with
    `char_start` / `char_end`) in `text`, in the segments' order.

    A missing `char_start` is taken as the previous segment's end (as function scorers do).
    Raises PageDataError naming `where` and the segment when a range is not
    0 ≤ start ≤ end ≤ len(text) (code points), e.g. offsets computed on another text.
    """
    out: list[tuple[int, int]] = []
    prev = 0
    n = len(text)
    for k, seg in enumerate(segments):
        end = _field(seg, "char_end")
        start = _field(seg, "char_start", prev)
        if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int):
            raise PageDataError(f"{where}segment {k}: char_start / char_end must be integers, got {start!r}, {end!r}")
        if not 0 <= start <= end <= n:
            raise PageDataError(
                f"{where}segment {k}: range [{start}, {end}) is outside the response (length {n} characters); "
                "offsets must be code-point indices into the response the model scored"
            )
        out.append((start, end))
        prev = end
    return out


def lane_marks(text: str, verdict: Any, model: ModelInfo, *, where: str = "") -> list[list]:
    """One model's segments on `text` as `[start, end, label, probability, raw, weighted]`,
    sorted by (start, end). `verdict` is a `SegmentRewards` or a `/v1/score` ModelScore dict."""
    segments = list(_field(verdict, "segments", []) or [])
    ranges = char_ranges(text, segments, where=where)
    from fgrlhf_ray.algo.weighting import weighted_values

    raws = [_num(_field(seg, "value")) for seg in segments]
    spec = model.spec
    weighted = weighted_values([0.0 if r is None else r for r in raws], weight=spec.weight, mean=spec.mean,
                               std=spec.std).tolist()
    marks = []
    for (a, b), seg, raw, w in zip(ranges, segments, raws, weighted):
        label = _field(seg, "label")
        weighted = None if raw is None else _num(w)
        marks.append([a, b, None if label is None else str(label), _round(_num(_field(seg, "probability"))),
                      _round(raw), _round(weighted)])
    marks.sort(key=lambda m: (m[0], m[1]))
    return marks


def label_marks(text: str, feedback: Mapping[str, Any], *, where: str = "") -> list[list]:
    """QA-FEEDBACK error spans as `[start, end, error type, explanation]`, sorted; PageDataError
    naming `where` for a span outside `text`."""
    errors = feedback.get("errors") or []
    if not isinstance(errors, list):
        raise PageDataError(f"{where}feedback.errors must be a list")
    out = []
    for k, e in enumerate(errors):
        if not isinstance(e, Mapping):
            raise PageDataError(f"{where}feedback.errors[{k}] must be an object")
        (a, b), = char_ranges(text, [{"char_start": e.get("start"), "char_end": e.get("end")}],
                              where=f"{where}feedback.errors[{k}]: ")
        out.append([a, b, str(e.get("error type") or "error"), str(e.get("explanation") or "")])
    out.sort(key=lambda m: (m[0], m[1]))
    return out


# ------------------------------------------------------------------------- stats


def lane_stats(marks: Sequence[Sequence]) -> dict[str, float]:
    """{segments, flagged, share, raw, weighted} of one model's marks on one response."""
    n = len(marks)
    flagged = sum(1 for m in marks if is_flagged(m[2], m[4] if m[4] is not None else 0.0))
    raw = sum(m[4] for m in marks if m[4] is not None)
    weighted = sum(m[5] for m in marks if m[5] is not None)
    return {"segments": n, "flagged": flagged, "share": round(flagged / n, 6) if n else 0.0,
            "raw": round(raw, 6), "weighted": round(weighted, 6)}


def label_stats(marks: Sequence[Sequence], feedback: Mapping[str, Any]) -> dict[str, float]:
    """{segments, flagged, share, missing} of a label source: error spans and missing facts."""
    missing = feedback.get("missing-info") or []
    n = len(marks)
    return {"segments": n, "flagged": n, "share": 1.0 if n else 0.0,
            "missing": len(missing) if isinstance(missing, list) else 0}


# ------------------------------------------------------------------------ tokens

_WORD = re.compile(r"\s*\S+")


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Whitespace-word pseudo-tokens `[start, end)` (leading whitespace attached, as byte-level
    BPE attaches it): the strip's tokens when no policy tokenizer is given."""
    return [m.span() for m in _WORD.finditer(text)]


def token_strips(
    texts: Sequence[str],
    verdicts: Mapping[str, Sequence[Any]],
    models: Sequence[ModelInfo],
    token_offsets: Sequence[Sequence[tuple[int, int]]],
    *,
    chunk: int = 256,
) -> list[list[list]]:
    """Per response, per token `[start, end, value, {model: contribution}]`.

    The values come from `fgrlhf_ray.algo.rewards.place_segment_rewards` — the placement the
    trainer uses — with each model's weight and (μ, σ): contribution[m][t] = Σ over m's segments
    whose last character lies in token t of w_m · (v − μ_m) / σ_m (sequence values on the last
    token); value[t] = Σ_m contribution[m][t]. A response without tokens gets an empty strip.
    """
    import torch

    from fgrlhf_ray.algo.rewards import ScorerOutput, place_segment_rewards

    by_name = {m.name: m for m in models}
    out: list[list[list]] = []
    for lo in range(0, len(texts), chunk):
        idx = list(range(lo, min(lo + chunk, len(texts))))
        # Responses without tokens are left out of the batch (placement cannot drop into nothing).
        live = [i for i in idx if len(token_offsets[i]) > 0]
        strips: dict[int, list[list]] = {i: [] for i in idx}
        if live:
            offsets = [[(int(a), int(b)) for a, b in token_offsets[i]] for i in live]
            T = max(len(o) for o in offsets)
            mask = torch.zeros(len(live), T)
            for r, o in enumerate(offsets):
                mask[r, : len(o)] = 1.0
            scorers = []
            for name, per_item in verdicts.items():
                m = by_name[name]
                # A segment ending at character 0 holds no character to place on (training refuses it).
                rewards = [[(int(_field(s, "char_end")), float(_field(s, "value")))
                            for s in (_field(per_item[i], "segments", []) or [])
                            if _num(_field(s, "value")) is not None
                            and (m.density == "sequence" or int(_field(s, "char_end")) >= 1)] for i in live]
                scorers.append(ScorerOutput(name=name, density=m.density, rewards=rewards, weight=m.weight,
                                            mean=m.mean, std=m.std))
            scores, per_scorer, _ = place_segment_rewards(scorers, token_offsets=offsets, action_mask=mask)
            for r, i in enumerate(live):
                cells = []
                for t, (a, b) in enumerate(offsets[r]):
                    parts = {name: round(float(c[r, t]), 6) for name, c in per_scorer.items() if float(c[r, t]) != 0.0}
                    cells.append([a, b, round(float(scores[r, t]), 6), parts])
                strips[i] = cells
        out.extend(strips[i] for i in idx)
    return out


# ---------------------------------------------------------------------- the page


def build_page_data(
    items: Sequence[Item],
    verdicts: Mapping[str, Sequence[Any]],
    models: Sequence[ModelInfo],
    *,
    token_offsets: Sequence[Sequence[tuple[int, int]]] | None = None,
    token_source: str = "whitespace words (no policy tokenizer given)",
    title: str = "fgrlhf reward inspector",
    notes: Sequence[str] = (),
    strip: bool = True,
) -> dict:
    """The page's JSON document (see the module docstring for each field).

    `verdicts[name][i]` is model `name`'s verdict on `items[i]` (a `SegmentRewards` or a dict
    with `segments`); every model in `verdicts` must be in `models`. `token_offsets[i]` are
    the policy-token spans of `items[i].response` (default: `word_offsets`). Responses are
    grouped by prompt text (first appearance order), so answers of several policies to the
    same prompt end up side by side. Raises PageDataError naming the item's `source` for
    segments that do not fit their response.
    """
    names = [m.name for m in models]
    for name, per_item in verdicts.items():
        if name not in names:
            raise ValueError(f"verdicts of {name!r} but no such model (models: {', '.join(names)})")
        if len(per_item) != len(items):
            raise ValueError(f"model {name!r}: {len(per_item)} verdicts for {len(items)} items")
    by_name = {m.name: m for m in models}
    offsets = [list(o) for o in token_offsets] if token_offsets is not None else [word_offsets(i.response) for i in items]
    if len(offsets) != len(items):
        raise ValueError(f"{len(offsets)} token-offset lists for {len(items)} items")
    strips = token_strips([i.response for i in items], verdicts, models, offsets) if strip and verdicts else None

    groups: dict[str, int] = {}
    group_list: list[dict] = []
    policies: list[str] = []
    label_sources: list[str] = []
    responses = []
    for i, item in enumerate(items):
        if item.prompt not in groups:
            groups[item.prompt] = len(group_list)
            group_list.append({"prompt": item.prompt, "responses": []})
        group_list[groups[item.prompt]]["responses"].append(i)
        if item.policy not in policies:
            policies.append(item.policy)
        label_sources.extend(s for s in (item.labels or {}) if s not in label_sources)
        responses.append(_response_entry(i, item, groups[item.prompt], verdicts, by_name, offsets[i],
                                         strips[i] if strips is not None else None))
    return {
        "format": FORMAT,
        "mode": "file",
        "title": title,
        "models": [{"name": m.name, "density": m.density, "weight": m.weight, "mean": m.mean, "std": m.std,
                    "kind": m.kind} for m in models if m.name in verdicts],
        "label_sources": label_sources,
        "policies": policies,
        "groups": group_list,
        "responses": responses,
        "token_source": token_source,
        "notes": list(notes),
    }


def _response_entry(i: int, item: Item, group: int, verdicts: Mapping[str, Sequence[Any]],
                    by_name: Mapping[str, ModelInfo], offsets: Sequence[tuple[int, int]], strip: list | None) -> dict:
    """One entry of the document's `responses`: every model's and label source's marks on
    `items[i]`, their stats, the response metrics the filters read, its missing facts."""
    where = f"{item.source or f'item {i}'}: "
    marks, stats = {}, {}
    for name, per_item in verdicts.items():
        marks[name] = lane_marks(item.response, per_item[i], by_name[name], where=where + f"model {name!r}: ")
        stats[name] = lane_stats(marks[name])
    labels, missing = {}, {}
    for source, feedback in (item.labels or {}).items():
        labels[source] = label_marks(item.response, feedback, where=where + f"{source} labels: ")
        stats[source] = label_stats(labels[source], feedback)
        info = feedback.get("missing-info") or []
        if isinstance(info, list) and info:
            missing[source] = [str(m.get("error type", "missing")) if isinstance(m, Mapping) else str(m)
                               for m in info]
    metrics = {"total": round(sum(stats[n]["weighted"] for n in verdicts), 6), "words": len(item.response.split()),
               "chars": len(item.response), "tokens": len(offsets)}
    return {"id": i, "group": group, "policy": item.policy, "sample": item.sample, "source": item.source,
            "text": item.response, "marks": marks, "labels": labels, "missing": missing, "stats": stats,
            "metrics": metrics, "strip": strip}


# ---------------------------------------------------------------------- escaping


def json_for_script(data: Any) -> str:
    """JSON for a `<script type="application/json">` block that no string can break out of.

    `<`, `>` and `&` become `\\u003c`, `\\u003e`, `\\u0026` (they only occur inside JSON
    strings, where the escapes mean the same characters), so `</script>`, `<!--` and
    `<script>` in a response are inert; non-ASCII is escaped too (also U+2028 / U+2029 and
    lone surrogates), so the file is plain ASCII. NaN / infinity are refused (ValueError).
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def escape_html(text: str) -> str:
    """Text for HTML element content or a quoted attribute: `& < > " '` escaped."""
    return html.escape(text, quote=True)


# ------------------------------------------------------------------------ filters


class FilterError(ValueError):
    """A filter expression the page (and `fgrlhf inspect --filter`) cannot read."""


_TOKEN = re.compile(r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op>>=|<=|==|!=|>|<|≥|≤|=)"
                    r"|(?P<name>[A-Za-z_][\w.-]*)|(?P<bad>\S))")
_OPS = {">=": "ge", "≥": "ge", "<=": "le", "≤": "le", ">": "gt", "<": "lt", "==": "eq", "=": "eq", "!=": "ne"}


@dataclass(frozen=True)
class Condition:
    lane: str | None  # None: a response metric (total, words, chars, tokens)
    metric: str
    op: str  # ge le gt lt eq ne
    value: float

    def holds(self, response: Mapping[str, Any]) -> bool:
        """On a page response: `stats[lane][metric]`, or `metrics[metric]` for a response metric."""
        src = (response.get("stats") or {}).get(self.lane) if self.lane is not None else response.get("metrics")
        x = src.get(self.metric) if isinstance(src, Mapping) else None
        if x is None:
            return False  # a lane this response has no verdict of never matches
        x = float(x)
        return {"ge": x >= self.value, "le": x <= self.value, "gt": x > self.value, "lt": x < self.value,
                "eq": abs(x - self.value) <= 1e-9, "ne": abs(x - self.value) > 1e-9}[self.op]


@dataclass(frozen=True)
class Filter:
    """`any(all(conditions) for conditions in alternatives)` — `or` of `and`s."""

    alternatives: tuple[tuple[Condition, ...], ...]

    def matches(self, response: Mapping[str, Any]) -> bool:
        """Whether a page response (with `stats` and `metrics`) matches."""
        return any(all(c.holds(response) for c in conj) for conj in self.alternatives)


def parse_filter(expr: str, lanes: Sequence[str]) -> Filter | None:
    """Parse `lane.metric OP number [and|or …]`; None for an empty expression.

    `lane` is a reward model or label source in `lanes`; `metric` one of `LANE_METRICS`
    (`factuality.flagged >= 2`: answers where the factuality model flags at least two
    sentences). Bare `total`, `words`, `chars`, `tokens` compare response metrics. `and` binds
    tighter than `or`. FilterError says what is wrong and where (character position).
    """
    expr = expr.strip()
    if not expr:
        return None
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:  # only trailing whitespace is left
            break
        kind = m.lastgroup
        if kind == "bad":
            raise FilterError(f"filter: unexpected {m.group('bad')!r} at character {m.start('bad') + 1}")
        tokens.append((kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    alternatives: list[tuple[Condition, ...]] = []
    conj: list[Condition] = []
    k = 0
    while True:
        if k >= len(tokens):
            raise FilterError("filter: expected a condition like `factuality.flagged >= 2` at the end")
        kind, text, at = tokens[k]
        if kind != "name":
            raise FilterError(f"filter: expected a name like `factuality.flagged` or `total` at character {at}, "
                              f"got {text!r}")
        lane, metric = _field_of(text, at, lanes)
        if k + 1 >= len(tokens) or tokens[k + 1][0] != "op":
            got = repr(tokens[k + 1][1]) if k + 1 < len(tokens) else "the end"
            raise FilterError(f"filter: expected a comparison (>=, <=, >, <, ==, !=) after {text!r}, got {got}")
        if k + 2 >= len(tokens) or tokens[k + 2][0] != "num":
            got = repr(tokens[k + 2][1]) if k + 2 < len(tokens) else "the end"
            raise FilterError(f"filter: expected a number after {text} {tokens[k + 1][1]}, got {got}")
        conj.append(Condition(lane, metric, _OPS[tokens[k + 1][1]], float(tokens[k + 2][1])))
        k += 3
        if k == len(tokens):
            alternatives.append(tuple(conj))
            return Filter(tuple(alternatives))
        kind, text, at = tokens[k]
        word = text.lower() if kind == "name" else ""
        if word == "and":
            k += 1
        elif word == "or":
            alternatives.append(tuple(conj))
            conj = []
            k += 1
        else:
            raise FilterError(f"filter: expected `and` or `or` at character {at}, got {text!r}")


def _field_of(text: str, at: int, lanes: Sequence[str]) -> tuple[str | None, str]:
    if "." not in text:
        if text in RESPONSE_METRICS:
            return None, text
        if text in lanes:
            return text, "flagged"  # `factuality >= 2` reads as its flagged count
        raise FilterError(f"filter: unknown name {text!r} at character {at}; use `<lane>.<metric>` with a lane in "
                          f"{', '.join(lanes) or '(none)'} or one of {', '.join(RESPONSE_METRICS)}")
    lane, metric = text.rsplit(".", 1)
    if lane not in lanes:
        raise FilterError(f"filter: unknown reward model or label source {lane!r} at character {at} "
                          f"(known: {', '.join(lanes) or 'none'})")
    if metric not in LANE_METRICS:
        raise FilterError(f"filter: unknown metric {metric!r} of {lane!r} at character {at} "
                          f"(known: {', '.join(LANE_METRICS)})")
    return lane, metric


def page_lanes(data: Mapping[str, Any]) -> list[str]:
    """Lane names of a page: its reward models, then its label sources."""
    return [m["name"] for m in data.get("models", [])] + list(data.get("label_sources", []))


def filter_page(data: dict, expr: str) -> dict:
    """A copy of the page keeping only the responses that match `expr` (and the groups that
    still have one); ids are renumbered. FilterError for a bad expression."""
    flt = parse_filter(expr, page_lanes(data))
    if flt is None:
        return data
    keep = [r for r in data["responses"] if flt.matches(r)]
    groups: list[dict] = []
    gmap: dict[int, int] = {}
    responses = []
    for new_id, r in enumerate(keep):
        if r["group"] not in gmap:
            gmap[r["group"]] = len(groups)
            groups.append({"prompt": data["groups"][r["group"]]["prompt"], "responses": []})
        g = gmap[r["group"]]
        groups[g]["responses"].append(new_id)
        responses.append({**r, "id": new_id, "group": g})
    return {**data, "groups": groups, "responses": responses,
            "policies": [p for p in data["policies"] if any(r["policy"] == p for r in responses)]}
