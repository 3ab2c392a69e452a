"""The oracle annotator of the synthetic fact-QA world: QA-FEEDBACK labels for any text.

Given a question record (from `SyntheticWorld` or read back from the JSON files) and a
response string, `Oracle.annotate` returns a dict in the QA-FEEDBACK ``feedback`` schema:

- ``errors``: ``{"error type", "explanation", "start", "end"}`` character spans of the
  response (end exclusive, trailing "," or "." included, as in the real data);
- ``missing-info``: ``{"error type", "passage_id", "sentence_id": [k]}`` for each
  required fact the response does not state;
- ``corrected-prediction``: the response minimally fixed.

Rules. The response is split into sentences (ending in ".", "!" or "?") and each
sentence into clauses at ", " / "; " (a leading "and " is dropped). Each clause is parsed
with the answer grammar (`synthetic_world.parse_clause`) into (subject, relation, value):

- not parseable (garbage, a truncated last sentence without ".", a sentence ending in
  "?" or "!") → **Incoherent**;
- the same triple already stated earlier in the response → **Redundant** (nothing else);
- otherwise relevance and factuality are judged independently, so one clause may carry
  one label of each family (identical spans; real QA-FEEDBACK spans never overlap):
  * (subject, relation) not among the required facts → **Irrelevant**;
  * the passages state (subject, relation) with another value → **Wrong-Grounding**;
  * the passages never state (subject, relation) → **Unverifiable**.

A required fact counts as covered when some clause states exactly its triple.
Missing facts are typed Missing-Answer / Missing-Major-Auxiliary / Missing-Minor-
Auxiliary (`synthetic_world.derive_required`). The corrected prediction drops every
clause with an Incoherent / Redundant / Irrelevant / Unverifiable label, replaces a
Wrong-Grounding value by the passages' value, keeps untouched sentences verbatim,
re-joins partly kept sentences with ", and ", and appends the missing facts as
grammar sentences; annotating it again gives no errors and nothing missing.

Quality (`Oracle.quality`, the scalar behind `preference`):

    Q = Σ_{covered required facts} COVER_WEIGHT[kind] − Σ_{error spans} ERROR_PENALTY[type]

with COVER_WEIGHT = Answer 1.0, Major 0.5, Minor 0.25 and ERROR_PENALTY = Irrelevant
0.25, Redundant 0.25, Incoherent 0.5, Unverifiable 0.5, Wrong-Grounding 0.75.
`preference(q, a, b)` is 1 if Q(a) > Q(b), 2 if Q(b) > Q(a), 0 (tie) when equal
(to 1e-9), the QA-FEEDBACK convention.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from fgrlhf_ray.data.synthetic_world import (
    ENTITY_TYPES,
    MISSING_ANSWER,
    MISSING_MAJOR,
    MISSING_MINOR,
    TYPE_RELATIONS,
    Fact,
    QuestionItem,
    RequiredFact,
    SyntheticWorld,
    derive_required,
    join_clauses,
    parse_clause,
    parse_question,
    render_core,
    render_fact,
)
from fgrlhf_ray.errors import DataError

IRRELEVANT = "Irrelevant"
REDUNDANT = "Redundant"
INCOHERENT = "Incoherent"
WRONG_GROUNDING = "Wrong-Grounding"
UNVERIFIABLE = "Unverifiable"

RELEVANCE_TYPES = (IRRELEVANT, REDUNDANT, INCOHERENT)  # paper A's C1
FACTUALITY_TYPES = (WRONG_GROUNDING, UNVERIFIABLE)  # paper A's C2
ERROR_TYPES = RELEVANCE_TYPES + FACTUALITY_TYPES
MISSING_TYPES = (MISSING_ANSWER, MISSING_MAJOR, MISSING_MINOR)

COVER_WEIGHT = {MISSING_ANSWER: 1.0, MISSING_MAJOR: 0.5, MISSING_MINOR: 0.25}
ERROR_PENALTY = {
    IRRELEVANT: 0.25,
    REDUNDANT: 0.25,
    INCOHERENT: 0.5,
    UNVERIFIABLE: 0.5,
    WRONG_GROUNDING: 0.75,
}

_EXPLANATION = {
    IRRELEVANT: "states {rel} of {s}, which the question did not ask for",
    REDUNDANT: "repeats a fact already stated",
    INCOHERENT: "not a grammatical statement",
    WRONG_GROUNDING: "the passages say {rel} of {s} is {pv}, not {v}",
    UNVERIFIABLE: "no passage states {rel} of {s}",
}


@dataclass(frozen=True)
class QuestionSpec:
    """What the oracle needs about a question, parsed from its record."""

    question: str
    subject: str
    subject_type: str
    asked: tuple[str, ...]
    required: tuple[RequiredFact, ...]
    passage_facts: dict  # (subject, relation) -> (value, passage_id, sentence_id)

    @property
    def required_keys(self) -> frozenset[tuple[str, str]]:
        return frozenset((r.fact.subject, r.fact.relation) for r in self.required)


@dataclass(frozen=True)
class Clause:
    """One clause of a response: its span in the response and what it says."""

    start: int
    end: int  # exclusive; includes the clause's trailing "," / ";" / terminator
    sentence_index: int
    fact: Fact | None  # None: not parseable
    core: str  # clause text without separator, terminator or leading "and "


def split_clauses(response: str) -> tuple[list[Clause], int]:
    """Split a response into clauses with character spans. Returns (clauses, n_sentences).

    Sentences end at runs of ".", "!" or "?"; a final piece without one is a sentence
    too (truncated text). Inside a sentence, clauses end at "," or ";" followed by
    whitespace. A sentence must end in exactly "." to be parseable.
    """
    clauses: list[Clause] = []
    n_sent = 0
    for m in re.finditer(r"[^.!?]*[.!?]+|[^.!?]+$", response):
        raw = m.group(0)
        lead = len(raw) - len(raw.lstrip())
        body = raw.strip()
        if not body:
            continue
        s_start = m.start() + lead
        s_end = s_start + len(body)
        term_m = re.search(r"[.!?]+$", body)
        terminator = term_m.group(0) if term_m else ""
        text = body[: len(body) - len(terminator)]
        pieces: list[tuple[int, int, str]] = []  # (start, end, core) relative to sentence
        pos = 0
        for sep in re.finditer(r"[,;](?=\s)", text):
            pieces.append((pos, sep.end(), text[pos:sep.start()]))
            nxt = sep.end()
            while nxt < len(text) and text[nxt].isspace():
                nxt += 1
            pos = nxt
        pieces.append((pos, len(body), text[pos:]))
        for start, end, core in pieces:
            core_s = core.strip()
            if core_s.startswith("and "):
                core_s = core_s[4:].lstrip()
            fact = parse_clause(core_s) if terminator == "." else None
            clauses.append(Clause(s_start + start, s_start + end, n_sent, fact, core_s))
        n_sent += 1
    return clauses, n_sent


def _passages_of(record: dict) -> list[tuple[str, list[str]]]:
    """(title, sentences) per passage from a prompts row or a feedback row."""
    passages = record.get("passages")
    if not isinstance(passages, list):
        raise DataError(f"question record has no 'passages' list: keys {sorted(record)}")
    out = []
    for p in passages:
        if isinstance(p, dict):  # prompts file: {wikipage, content}
            title, content = p["wikipage"], p["content"]
            prefix = f"{title}\n\n"
            if content.startswith(prefix):
                content = content[len(prefix):]
            sents = [m.group(0).strip() for m in re.finditer(r"[^.!?]*[.!?]+", content) if m.group(0).strip()]
        else:  # feedback file: [title, sentence_1, ...]
            title, sents = p[0], list(p[1:])
            if sents and sents[0].startswith(f"{title}\n\n"):
                sents[0] = sents[0][len(title) + 2:]
        out.append((title, sents))
    return out


def spec_from_record(record: dict) -> QuestionSpec:
    """Parse a synthetic question record (prompts row or feedback row) into a QuestionSpec.

    Raises DataError when the record was not made by the synthetic world (a passage
    sentence or the question outside the grammar).
    """
    question = record.get("question")
    if not isinstance(question, str):
        raise DataError(f"question record has no 'question' string: keys {sorted(record)}")
    pf: dict[tuple[str, str], tuple[str, int, int]] = {}
    for pid, (title, sents) in enumerate(_passages_of(record), start=1):
        for sid, sent in enumerate(sents, start=1):
            fact = parse_clause(sent[:-1]) if sent.endswith(".") else None
            if fact is None:
                raise DataError(
                    f"question {question!r}: passage {pid} ({title!r}) sentence {sid} "
                    f"{sent!r} is outside the synthetic answer grammar; the oracle only "
                    "judges records written by `fgrlhf data synth` / SyntheticWorld."
                )
            pf.setdefault((fact.subject, fact.relation), (fact.value, pid, sid))
    for subject, asked in parse_question(question):
        if not all((subject, r) in pf for r in asked):
            continue
        rels = {r for (s, r) in pf if s == subject}
        types = [t for t in ENTITY_TYPES if rels <= set(TYPE_RELATIONS[t])]
        if len(types) != 1:
            continue
        try:
            required = derive_required(subject, types[0], asked, pf)
        except KeyError:
            continue
        return QuestionSpec(question, subject, types[0], asked, required, pf)
    raise DataError(
        f"question {question!r} does not match the synthetic question grammar with "
        "passages that state its facts; the oracle only judges synthetic records."
    )


def spec_from_item(item: QuestionItem) -> QuestionSpec:
    return QuestionSpec(item.question, item.subject, item.subject_type, item.asked,
                        item.required, item.passage_facts())


class Oracle:
    """Ground-truth annotator for the synthetic world.

    `world` is optional: it is needed only to look questions up by id; records (dicts
    from the prompts / feedback files) and `QuestionItem`s carry all the oracle needs.
    """

    def __init__(self, world: SyntheticWorld | None = None):
        self.world = world
        self._cache: dict[str, QuestionSpec] = {}

    # -- question lookup ----------------------------------------------------------------

    def spec(self, q: str | dict | QuestionItem | QuestionSpec) -> QuestionSpec:
        if isinstance(q, QuestionSpec):
            return q
        if isinstance(q, QuestionItem):
            return spec_from_item(q)
        if isinstance(q, str):
            if self.world is None:
                raise ValueError(
                    f"Oracle.spec({q!r}): a question id needs Oracle(world); pass the "
                    "question record (dict) instead."
                )
            return spec_from_item(self.world.question(q))
        if isinstance(q, dict):
            key = json.dumps([q.get("question"), q.get("passages")], sort_keys=True)
            spec = self._cache.get(key)
            if spec is None:
                spec = self._cache[key] = spec_from_record(q)
            return spec
        raise TypeError(f"Oracle: expected a question id, record dict or QuestionItem, got {type(q).__name__}")

    # -- annotation ---------------------------------------------------------------------

    def judge(self, q, response: str) -> tuple[list[Clause], list[list[str]], list[RequiredFact], int]:
        """Per-clause labels: (clauses, labels per clause, missing required facts, n_sentences)."""
        spec = self.spec(q)
        clauses, n_sent = split_clauses(response)
        labels: list[list[str]] = []
        stated: set[Fact] = set()
        for c in clauses:
            if c.fact is None:
                labels.append([INCOHERENT])
                continue
            if c.fact in stated:
                labels.append([REDUNDANT])
                continue
            stated.add(c.fact)
            lab = []
            key = (c.fact.subject, c.fact.relation)
            if key not in spec.required_keys:
                lab.append(IRRELEVANT)
            grounded = spec.passage_facts.get(key)
            if grounded is None:
                lab.append(UNVERIFIABLE)
            elif grounded[0] != c.fact.value:
                lab.append(WRONG_GROUNDING)
            labels.append(lab)
        missing = [r for r in spec.required if r.fact not in stated]
        return clauses, labels, missing, n_sent

    def annotate(self, q, response: str) -> dict:
        """QA-FEEDBACK `feedback` dict for `response` (see the module docstring)."""
        spec = self.spec(q)
        clauses, labels, missing, _ = self.judge(spec, response)
        errors = []
        for c, labs in zip(clauses, labels):
            for t in labs:
                f = c.fact
                expl = _EXPLANATION[t].format(
                    rel=f.relation.replace("_", " ") if f else "",
                    s=f.subject if f else "",
                    v=f.value if f else "",
                    pv=spec.passage_facts.get((f.subject, f.relation), ("",))[0] if f else "",
                )
                errors.append({"error type": t, "explanation": expl, "start": c.start, "end": c.end})
        return {
            "errors": errors,
            "missing-info": [
                {"error type": m.kind, "passage_id": m.passage_id, "sentence_id": [m.sentence_id]}
                for m in missing
            ],
            "corrected-prediction": self._correct(spec, response, clauses, labels, missing),
        }

    def _correct(self, spec: QuestionSpec, response: str, clauses: list[Clause],
                 labels: list[list[str]], missing: list[RequiredFact]) -> str:
        sentences: list[str] = []
        kept: set[Fact] = set()
        by_sent: dict[int, list[int]] = {}
        for i, c in enumerate(clauses):
            by_sent.setdefault(c.sentence_index, []).append(i)
        drop_types = {INCOHERENT, REDUNDANT, IRRELEVANT, UNVERIFIABLE}
        for s_idx in sorted(by_sent):
            idxs = by_sent[s_idx]
            cores: list[str] = []
            unchanged = True
            for i in idxs:
                c, labs = clauses[i], labels[i]
                if drop_types & set(labs) or c.fact is None:
                    unchanged = False
                    continue
                fact = c.fact
                core = c.core
                if WRONG_GROUNDING in labs:
                    fact = fact._replace(value=spec.passage_facts[(fact.subject, fact.relation)][0])
                    core = render_core(fact)
                    unchanged = False
                if fact in kept:  # a fixed value can duplicate another statement
                    unchanged = False
                    continue
                kept.add(fact)
                cores.append(core)
            if not cores:
                continue
            if unchanged:
                sentences.append(response[clauses[idxs[0]].start:clauses[idxs[-1]].end])
            else:
                sentences.append(join_clauses([" ".join(x.split()) for x in cores]))
        sentences += [render_fact(m.fact) for m in missing if m.fact not in kept]
        return " ".join(sentences)

    # -- scalar quality and preferences -------------------------------------------------

    def quality(self, q, response: str) -> float:
        """Q = Σ covered COVER_WEIGHT[kind] − Σ error ERROR_PENALTY[type] (module docstring)."""
        spec = self.spec(q)
        _, labels, missing, _ = self.judge(spec, response)
        missing_set = set(missing)
        covered = sum(COVER_WEIGHT[r.kind] for r in spec.required if r not in missing_set)
        penalty = sum(ERROR_PENALTY[t] for labs in labels for t in labs)
        return float(covered - penalty)

    def max_quality(self, q) -> float:
        """Q of a perfect answer: every required fact, no errors."""
        return float(sum(COVER_WEIGHT[r.kind] for r in self.spec(q).required))

    def preference(self, q, resp_a: str, resp_b: str) -> int:
        """1 if resp_a is better, 2 if resp_b is better, 0 if tied (QA-FEEDBACK convention)."""
        qa, qb = self.quality(q, resp_a), self.quality(q, resp_b)
        if abs(qa - qb) <= 1e-9:
            return 0
        return 1 if qa > qb else 2

    def preferences(self, q, responses: Sequence[str]) -> list[int]:
        """Preferences for all pairs (i < j) in QA-FEEDBACK order: 1v2, 1v3, 1v4, 2v3, 2v4, 3v4."""
        return [
            self.preference(q, responses[i], responses[j])
            for i in range(len(responses))
            for j in range(i + 1, len(responses))
        ]


def oracle_metrics(records: Sequence[Any], responses: Sequence[str | Sequence[str]],
                   oracle: Oracle | None = None) -> dict[str, float]:
    """Aggregate oracle statistics of responses to the given questions.

    `responses[i]` answers `records[i]`; it may be one string or a list of samples.
    Returns a flat dict:
      n_responses, n_sentences;
      errors_per_sentence/<Type>: error spans of that type / sentences (all responses);
      frac_with_error/<Type>: share of responses with at least one span of the type;
      frac_with_any_error; missing_rate: missing required facts / required facts;
      missing_rate/<Missing-type>: per kind (over required facts of that kind);
      mean_words, mean_chars, mean_sentences, mean_quality, mean_quality_ratio
      (Q / max Q per response), perfect_rate (no error and nothing missing).
    """
    if len(records) != len(responses):
        raise ValueError(
            f"oracle_metrics: {len(records)} records but {len(responses)} responses; "
            "responses[i] must answer records[i]."
        )
    oracle = oracle or Oracle()
    n = n_sent = 0
    span_counts = {t: 0 for t in ERROR_TYPES}
    resp_with = {t: 0 for t in ERROR_TYPES}
    any_err = perfect = 0
    req_total = {k: 0 for k in MISSING_TYPES}
    req_missing = {k: 0 for k in MISSING_TYPES}
    words = chars = 0
    qual = qual_ratio = 0.0
    for rec, resp in zip(records, responses):
        samples: Iterable[str] = [resp] if isinstance(resp, str) else resp
        spec = oracle.spec(rec)
        max_q = sum(COVER_WEIGHT[r.kind] for r in spec.required)
        for text in samples:
            _, labels, missing, ns = oracle.judge(spec, text)
            n += 1
            n_sent += ns
            types_here = [t for labs in labels for t in labs]
            for t in types_here:
                span_counts[t] += 1
            for t in set(types_here):
                resp_with[t] += 1
            any_err += bool(types_here)
            perfect += (not types_here) and (not missing)
            for r in spec.required:
                req_total[r.kind] += 1
            for m in missing:
                req_missing[m.kind] += 1
            words += len(text.split())
            chars += len(text)
            missing_set = set(missing)
            q = sum(COVER_WEIGHT[r.kind] for r in spec.required if r not in missing_set) - sum(
                ERROR_PENALTY[t] for t in types_here
            )
            qual += q
            qual_ratio += q / max_q
    if n == 0:
        raise ValueError("oracle_metrics: no responses given")
    out: dict[str, float] = {"n_responses": float(n), "n_sentences": float(n_sent)}
    for t in ERROR_TYPES:
        out[f"errors_per_sentence/{t}"] = span_counts[t] / max(n_sent, 1)
    for t in ERROR_TYPES:
        out[f"frac_with_error/{t}"] = resp_with[t] / n
    out["frac_with_any_error"] = any_err / n
    total_req = sum(req_total.values())
    out["missing_rate"] = sum(req_missing.values()) / max(total_req, 1)
    for k in MISSING_TYPES:
        out[f"missing_rate/{k}"] = req_missing[k] / req_total[k] if req_total[k] else 0.0
    out["mean_words"] = words / n
    out["mean_chars"] = chars / n
    out["mean_sentences"] = n_sent / n
    out["mean_quality"] = qual / n
    out["mean_quality_ratio"] = qual_ratio / n
    out["perfect_rate"] = perfect / n
    return out
