"""`write_demo_inspection`: the demo's `inspect.html` (every policy's answers to a sample of
test questions, scored by the demo's reward models, with the oracle's labels as one more lane).

The demo pipeline calls it; everything heavy is imported inside.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def write_demo_inspection(
    out_path: str | os.PathLike,
    questions: Sequence[Mapping[str, Any] | str],
    answers_by_policy: Mapping[str, Sequence[str | Sequence[str]]],
    reward_config: Any = None,
    oracle_labels: bool | Callable[[Any, str], Mapping] | Mapping[str, Sequence[Any]] | None = None,
    *,
    tokenizer: str | None = None,
    title: str = "fgrlhf demo: reward inspector",
    notes: Sequence[str] = (),
) -> Path:
    """Score every policy's answers with the reward models and write one self-contained HTML page.

    Args:
        out_path: the HTML file to write (parents are created; written atomically).
        questions: the questions, in order: question records of the synthetic world / QA-FEEDBACK
            (dicts with `text` = the policy prompt, or with `question` and `passages`), or
            plain prompt strings.
        answers_by_policy: policy name → one answer per question (`answers[i]` answers
            `questions[i]`; an entry may also be a list of samples). Every list must have
            `len(questions)` entries; policies appear side by side in this order.
        reward_config: the reward models to score with — a list of `reward_models` entries
            (dicts as in a training config, e.g. the demo's `reward_models_of(...)`, or
            `RewardModelConfig`s), a mapping with `reward_models` (and optionally `preset`),
            a path to a training / eval / serve YAML, or None to show the labels only.
        oracle_labels: None (no labels lane); True — the synthetic world's oracle annotates
            every answer (`Oracle().annotate(question, answer)`; needs question records); a
            callable `(question, answer) -> feedback dict`; or a mapping policy → per question
            (list per sample) a QA-FEEDBACK `feedback` dict. Shown as the `oracle` lane.
        tokenizer: policy tokenizer folder for the per-token strip (default: whitespace words).
        title, notes: page title and notes under it.

    Returns:
        The path written. Raises `ConfigError` / `DataError` for inputs that do not fit
        (lengths, bad reward config, labels outside an answer).
    """
    from fgrlhf_ray.errors import ConfigError, DataError
    from fgrlhf_ray.inspector.build import build_inspection
    from fgrlhf_ray.inspector.page_data import Item, PageDataError
    from fgrlhf_ray.inspector.render import write_page

    prompts = [_prompt_of(q, i) for i, q in enumerate(questions)]
    annotate = _annotator(oracle_labels)
    items: list[Item] = []
    for policy, answers in answers_by_policy.items():
        if len(answers) != len(questions):
            raise DataError(f"write_demo_inspection: policy {policy!r} has {len(answers)} answers for "
                            f"{len(questions)} questions; answers[i] must answer questions[i]")
        given = oracle_labels.get(policy) if isinstance(oracle_labels, Mapping) else None
        for i, answer in enumerate(answers):
            samples = [answer] if isinstance(answer, str) else list(answer)
            for k, text in enumerate(samples):
                if not isinstance(text, str):
                    raise DataError(f"write_demo_inspection: {policy!r} answer {i} sample {k} is not a string")
                labels = {}
                if given is not None:
                    fb = given[i] if isinstance(answer, str) else given[i][k]
                    if fb is not None:
                        labels["oracle"] = dict(fb)
                elif annotate is not None:
                    if isinstance(questions[i], str) and oracle_labels is True:
                        raise ConfigError("write_demo_inspection: oracle_labels=True needs question records "
                                          "(dicts), not prompt strings")
                    labels["oracle"] = dict(annotate(questions[i], text))
                items.append(Item(prompt=prompts[i], response=text, policy=policy, sample=k,
                                  source=f"question {i}", labels=labels))
    scorers = _scorers(reward_config)
    try:
        data = build_inspection(items, scorers, tokenizer=tokenizer, title=title, notes=notes)
    except PageDataError as exc:
        raise DataError(f"write_demo_inspection: {exc}") from None
    finally:
        if scorers is not None:
            scorers.close()
    return write_page(out_path, data)


def _prompt_of(q: Any, i: int) -> str:
    from fgrlhf_ray.errors import DataError

    if isinstance(q, str):
        return q
    if isinstance(q, Mapping):
        if isinstance(q.get("text"), str):
            return q["text"]
        if isinstance(q.get("question"), str):
            from fgrlhf_ray.data.qa_feedback import format_qa_prompt

            passages = q.get("passages") or []
            if passages and isinstance(passages[0], Mapping):  # prompts rows: {"wikipage", "content"}
                passages = [[p.get("wikipage", ""), p.get("content", "")] for p in passages]
            return format_qa_prompt(q["question"], passages)
    raise DataError(f"write_demo_inspection: question {i} is neither a prompt string nor a record with "
                    "'text' or 'question'")


def _annotator(oracle_labels: Any):
    if oracle_labels is True:
        from fgrlhf_ray.data.synthetic_oracle import Oracle

        return Oracle().annotate
    if callable(oracle_labels):
        return oracle_labels
    return None


def _scorers(reward_config: Any):
    from fgrlhf_ray.config import RewardModelConfig, reward_weights
    from fgrlhf_ray.errors import ConfigError
    from fgrlhf_ray.inspector.scoring import local_scorers

    if reward_config is None:
        return None
    if isinstance(reward_config, (str, os.PathLike)):
        from fgrlhf_ray.inspector.inputs import load_reward_setup

        setup = load_reward_setup(reward_config)
        return local_scorers(setup.reward_models, setup.weights)
    preset = None
    entries = reward_config
    if isinstance(reward_config, Mapping):
        entries, preset = reward_config.get("reward_models"), reward_config.get("preset")
    if not isinstance(entries, Sequence) or not entries:
        raise ConfigError("write_demo_inspection: reward_config must be a non-empty list of reward_models entries, "
                          "a mapping with `reward_models`, a YAML path, or None")
    from pydantic import ValidationError

    from fgrlhf_ray.config import format_validation_error

    models = []
    for k, entry in enumerate(entries):
        if isinstance(entry, RewardModelConfig):
            models.append(entry)
            continue
        try:
            models.append(RewardModelConfig.model_validate(dict(entry)))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, RewardModelConfig,
                                                      source=f"reward_config[{k}]")) from None
    return local_scorers(models, reward_weights(models, preset))
