"""Paper A's protocol for reward-model data: feedback on the policy's *own* answers.

Paper A's annotators labelled samples of the SFT policy, not perturbed gold answers; reward
models trained on perturbations were measured to be constant on the policy's answers (the
demo's relevance RM called 87-100% of its sub-sentences "no error"). This module turns
(prompt record, policy samples) into QA-FEEDBACK rows, with any annotator filling in the
labels:

    sample_policy(...)        the policy answers each prompt k times (vLLM, PPO's sampling)
    feedback_rows(...)        rows in the schema of ``dev400_feedback.json``
    write_feedback_file(...)  one JSON file of rows, ready for `fgrlhf train-rm`

Row layout. QA-FEEDBACK puts fine-grained feedback on ``prediction 1`` only. With
``feedback_on="all"`` a question with samples s1..sk gives k rows; row j lists the
samples rotated to start at s_j (``prediction 1`` = s_j), so every sample gets its
labels while each row stays in the real schema. The k rows share the same pairs of
samples; the pair readers (`holistic_pairs`, `completeness_pairs`) drop repeated pairs.
``feedback_on="first"`` writes one row per question (annotation cost of the real data).
Without an annotator the rows hold the predictions only (for human annotation).

An annotator is any object with ``annotate(record, response) -> feedback dict`` (errors,
missing-info, corrected-prediction) and ``preferences(record, responses) -> [0|1|2 …]``
in QA-FEEDBACK pair order; the synthetic world's `Oracle` is one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from fgrlhf_ray.errors import ConfigError, DataError
from fgrlhf_ray.data.segments import split_sentences

FeedbackOn = Literal["all", "first"]


class Annotator(Protocol):
    def annotate(self, record: dict, response: str) -> dict: ...

    def preferences(self, record: dict, responses: Sequence[str]) -> list[int]: ...


def load_annotator(spec: str) -> Annotator | None:
    """``oracle`` (the synthetic world's), ``none``, or ``module:factory`` returning an Annotator."""
    if spec == "none":
        return None
    if spec == "oracle":
        from fgrlhf_ray.data.synthetic_oracle import Oracle

        return Oracle()
    from fgrlhf_ray.infra.targets import import_target

    annotator = import_target(spec)()
    for method in ("annotate", "preferences"):
        if not callable(getattr(annotator, method, None)):
            raise ConfigError(f"annotator {spec!r}: the object it returns has no {method}() method "
                              "(see fgrlhf_ray.data.policy_feedback.Annotator)")
    return annotator


def feedback_passages(record: dict, *, where: str) -> list[list[str]]:
    """A prompts row's ``passages`` ([{wikipage, content}]) in the feedback schema:
    ``[title, sentence_1, ...]`` with the ``"Title\\n\\n"`` prefix on the first sentence,
    as in QA-FEEDBACK (so `format_qa_prompt` rebuilds the policy prompt's context)."""
    passages = record.get("passages")
    if not isinstance(passages, list):
        raise DataError(f"{where}: no 'passages' list (keys {sorted(record)})")
    out = []
    for k, p in enumerate(passages):
        if not (isinstance(p, dict) and isinstance(p.get("wikipage"), str) and isinstance(p.get("content"), str)):
            raise DataError(f"{where}: passage {k} must be {{'wikipage': str, 'content': str}}, got {p!r:.80}")
        title, content = p["wikipage"], p["content"]
        prefix = f"{title}\n\n"
        body = content[len(prefix):] if content.startswith(prefix) else content
        sents = [body[a:b].strip() for a, b in split_sentences(body)] or [body]
        sents[0] = prefix + sents[0]
        out.append([title, *sents])
    return out


def feedback_rows(record: dict, samples: Sequence[str], annotator: Annotator | None, *,
                  feedback_on: FeedbackOn = "all", where: str = "record") -> list[dict]:
    """QA-FEEDBACK rows for one prompt record and its policy samples (layout in the module doc).

    Preferences need exactly 4 predictions (the schema's 6 pairs); with another k the rows
    carry no ``preference`` field.
    """
    if not samples:
        raise DataError(f"{where}: no samples")
    question = record.get("question")
    if not isinstance(question, str):
        raise DataError(f"{where}: no 'question' string (keys {sorted(record)})")
    base: dict[str, Any] = {"question": question, "passages": feedback_passages(record, where=where)}
    if record.get("answer"):
        base["gold"] = record["answer"][0] if isinstance(record["answer"], list) else record["answer"]
    k = len(samples)
    rows = []
    for j in range(k if feedback_on == "all" else 1):
        preds = list(samples[j:]) + list(samples[:j])
        row = dict(base)
        row.update({f"prediction {i}": p for i, p in enumerate(preds, start=1)})
        if annotator is not None:
            row["feedback"] = annotator.annotate(record, preds[0])
            if k == 4:
                row["preference"] = list(annotator.preferences(record, preds))
        rows.append(row)
    return rows


def write_feedback_file(path: str | os.PathLike, records: Sequence[dict], samples: Sequence[Sequence[str]],
                        annotator: Annotator | None, *, feedback_on: FeedbackOn = "all") -> dict:
    """Write all rows of `records[i]` × `samples[i]` to `path` (JSON list); returns counts."""
    if len(records) != len(samples):
        raise ValueError(f"write_feedback_file: {len(records)} records but {len(samples)} sample lists")
    rows = []
    for i, (rec, s) in enumerate(zip(records, samples)):
        rows += feedback_rows(rec, s, annotator, feedback_on=feedback_on, where=f"record {i}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    tmp.replace(path)
    n_samples = sum(len(s) for s in samples)
    distinct = sum(len(set(s)) for s in samples)
    return {"questions": len(records), "samples": n_samples, "rows": len(rows),
            "distinct_sample_share": distinct / max(n_samples, 1)}


def sample_policy(policy: str, prompts: Sequence[str], *, n: int, temperature: float, top_k: int,
                  max_new_tokens: int, seed: int, max_model_len: int = 512) -> list[list[str]]:
    """`n` samples per prompt from a vLLM engine on `policy` (seeded: prompt i uses seed + i).

    Runs vLLM in this process: call it under ``if __name__ == "__main__":`` (the `fgrlhf`
    command does), since vLLM spawns its engine process.
    """
    from fgrlhf_ray.workers.rollout import VLLMRolloutEngine

    engine = VLLMRolloutEngine(model_path=policy, seed=seed, max_model_len=max_model_len)
    try:
        batch = engine.generate(list(prompts), n=n, temperature=temperature, top_k=top_k,
                                max_new_tokens=max_new_tokens, seed=seed)
    finally:
        engine.shutdown()
    return [[r.strip() for r in batch.responses[i * n:(i + 1) * n]] for i in range(len(prompts))]
