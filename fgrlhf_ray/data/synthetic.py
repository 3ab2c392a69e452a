"""Synthetic fact-QA task: the embedded default of fgrlhf-ray (DESIGN.md "Embedded default").

Public API (implementation in `synthetic_world` and `synthetic_oracle`):

- `SyntheticWorld.generate(seed, n_questions, ...)` — entities, facts, questions with
  passages and gold answers (`QuestionItem`s in `world.questions`).
- `Oracle(world=None)` — `annotate(q, response)` → QA-FEEDBACK feedback dict,
  `quality(q, response)` → float, `preference(q, a, b)` → 0 | 1 | 2.
- `oracle_metrics(records, responses)` — error rates, missing-fact rate, length.
- `write_synthetic_dataset(out_dir, n=..., seed=...)` — train/dev/test files in the
  QA-FEEDBACK schema (what `fgrlhf data synth` runs).

`q` may be a prompts-file row, a feedback-file row, a `QuestionItem`, or a question id
(with `Oracle(world)`).

The answer grammar (one template per relation; clauses may be joined with ", and "):

    {s} was born in the year {v}.    {s} was born in {v}.      {s} works as a {v}.
    {s} works for {v}.               {s} is located in {v}.    {s} has a population of {v}.
    The mayor of {s} is {v}.         {s} was founded in {v}.   {s} flows through {v}.
    {s} is {v} kilometres long.      {s} flows into the {v}.   {s} is headquartered in {v}.
    {s} was founded by {v}.          {s} makes {v}.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fgrlhf_ray.data.synthetic_oracle import (
    COVER_WEIGHT,
    ERROR_PENALTY,
    ERROR_TYPES,
    FACTUALITY_TYPES,
    MISSING_TYPES,
    RELEVANCE_TYPES,
    Oracle,
    QuestionSpec,
    oracle_metrics,
    spec_from_record,
    split_clauses,
)
from fgrlhf_ray.data.synthetic_world import (
    PROMPT_SUFFIX,
    RELATIONS,
    Fact,
    QuestionItem,
    RequiredFact,
    SyntheticWorld,
    build_text,
    parse_clause,
    render_fact,
)

__all__ = [
    "COVER_WEIGHT",
    "ERROR_PENALTY",
    "ERROR_TYPES",
    "FACTUALITY_TYPES",
    "MISSING_TYPES",
    "PROMPT_SUFFIX",
    "RELATIONS",
    "RELEVANCE_TYPES",
    "Fact",
    "Oracle",
    "QuestionItem",
    "QuestionSpec",
    "RequiredFact",
    "SyntheticWorld",
    "build_text",
    "feedback_record",
    "oracle_metrics",
    "parse_clause",
    "render_fact",
    "spec_from_record",
    "split_clauses",
    "write_synthetic_dataset",
]

SPLITS = ("train", "dev", "test")


def feedback_record(world: SyntheticWorld, item: QuestionItem, oracle: Oracle, rng: random.Random) -> dict:
    """A feedback-file row (same keys as dev400_feedback.json): four perturbed gold
    answers as predictions, the oracle's feedback on prediction 1, and the six pairwise
    oracle preferences."""
    preds = [world.perturb_answer(item, rng) for _ in range(4)]
    row = {"question": item.question, "passages": item.feedback_passages(), "gold": item.gold}
    for i, p in enumerate(preds, start=1):
        row[f"prediction {i}"] = p
    row["feedback"] = oracle.annotate(item, preds[0])
    row["preference"] = oracle.preferences(item, preds)
    return row


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    n: int = 2000,
    seed: int = 0,
    train_frac: float = 0.8,
    dev_frac: float = 0.1,
    entities_per_type: int | None = None,
) -> dict:
    """Generate a world and write `{split}.json` (prompts) and `{split}_feedback.json`.

    Splits: the first ⌊train_frac·n⌋ questions are train, the next ⌊dev_frac·n⌋ dev,
    the rest test (questions are already in random order). Writes `meta.json` with the
    arguments and counts. Deterministic given the arguments. Returns the meta dict.
    """
    if not (0.0 < train_frac <= 1.0 and 0.0 <= dev_frac < 1.0 and train_frac + dev_frac <= 1.0):
        raise ValueError(
            f"split fractions must satisfy 0 < train_frac <= 1, 0 <= dev_frac and "
            f"train_frac + dev_frac <= 1; got train_frac={train_frac}, dev_frac={dev_frac}"
        )
    world = SyntheticWorld.generate(seed, n, entities_per_type=entities_per_type)
    oracle = Oracle(world)
    n_train = int(train_frac * n)
    n_dev = int(dev_frac * n)
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev), "test": (n_train + n_dev, n)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"fgrlhf-synthetic-predictions:{seed}")
    counts = {}
    for split in SPLITS:
        a, b = bounds[split]
        items = world.questions[a:b]
        prompts = [it.prompt_record() for it in items]
        feedback = [feedback_record(world, it, oracle, rng) for it in items]
        (out / f"{split}.json").write_text(json.dumps(prompts, indent=1, ensure_ascii=False))
        (out / f"{split}_feedback.json").write_text(json.dumps(feedback, indent=1, ensure_ascii=False))
        counts[split] = len(items)
    meta = {
        "generator": "fgrlhf_ray.data.synthetic",
        "seed": seed,
        "n": n,
        "train_frac": train_frac,
        "dev_frac": dev_frac,
        "entities_per_type": entities_per_type,
        "counts": counts,
        "files": {s: [f"{s}.json", f"{s}_feedback.json"] for s in SPLITS},
        "prompt_suffix": PROMPT_SUFFIX,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta
