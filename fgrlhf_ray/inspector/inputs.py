"""What `fgrlhf inspect` reads: responses (three formats) and the reward config.

Responses (`read_items(spec)`, `spec` = `FILE` or `POLICY=FILE`):

- **generations** — the `*.generations.jsonl` of `fgrlhf eval --out` (one sample per line:
  `prompt`, `response`, `sample`, …);
- **jsonl** — any JSONL of `{"prompt": …, "response": …}`, optionally with `policy` (overrides
  the file's policy name), `sample` and `feedback` (QA-FEEDBACK `feedback` schema: its error
  spans are shown as the `labels` lane);
- **qa_feedback** — a QA-FEEDBACK JSON list (`fgrlhf_ray.data.qa_feedback`): the prompt is the
  policy prompt (question + passages), every `prediction k` is sample k−1, and the human error
  spans of `prediction 1` become the `human` lane.

`auto` picks qa_feedback for a JSON list and jsonl/generations otherwise. The policy name is
`POLICY` if given, else the file name without `.generations.jsonl` / `.jsonl` / `.json`. A bad
row raises `DataError` naming the file and line (JSONL) or row (QA-FEEDBACK).

Reward config (`load_reward_setup(path)`): a training config (`reward_models`, `preset`; the
policy's tokenizer is used for the per-token strip), an eval config, or a serve config
(`fgrlhf serve`'s YAML, whose `tokenizer` is used). Errors carry the YAML line, as
`fgrlhf config validate` reports them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fgrlhf_ray.errors import ConfigError, DataError
from fgrlhf_ray.inspector.page_data import Item

FORMATS = ("auto", "generations", "jsonl", "qa_feedback")


def split_spec(spec: str) -> tuple[str | None, str]:
    """`POLICY=FILE` → (POLICY, FILE); `FILE` → (None, FILE). A `=` inside an existing path wins."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if name.strip() and path.strip():
            return name.strip(), path.strip()
    return None, spec


def default_policy_name(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".generations.jsonl", ".jsonl", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _detect(path: Path, text: str) -> str:
    if path.suffix == ".json" or text.lstrip().startswith("["):
        return "qa_feedback"
    return "jsonl"


def read_items(spec: str, *, fmt: str = "auto", max_samples: int | None = None) -> list[Item]:
    """The responses in one input file (see the module docstring)."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    name, path_text = split_spec(spec)
    path = Path(path_text)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    policy = name or default_policy_name(path)
    if fmt == "auto":
        try:
            head = path.read_text(encoding="utf-8")[:4096]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None
        fmt = _detect(path, head)
    items = _read_qa_feedback(path, policy) if fmt == "qa_feedback" else _read_jsonl(path, policy)
    if max_samples is not None:
        seen: dict[tuple[str, str], int] = {}
        kept = []
        for item in items:
            key = (item.policy, item.prompt)
            if seen.get(key, 0) < max_samples:
                kept.append(item)
            seen[key] = seen.get(key, 0) + 1
        items = kept
    if not items:
        raise DataError(f"{path}: no responses")
    return items


def _read_jsonl(path: Path, policy: str) -> list[Item]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    items = []
    counts: dict[tuple[str, str], int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with 'prompt' and 'response', got {type(row).__name__}")
        prompt = row.get("prompt", row.get("text"))
        if isinstance(prompt, dict):  # RealToxicityPrompts-style {"prompt": {"text": ...}}
            prompt = prompt.get("text")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string (fields: {', '.join(sorted(row)) or 'none'})")
        response = row.get("response")
        if not isinstance(response, str):
            got = "missing" if "response" not in row else f"a {type(response).__name__}"
            raise DataError(f"{where}: 'response' must be a string, got {got} (a generations file of "
                            "`fgrlhf eval`, or JSONL of {\"prompt\": …, \"response\": …})")
        row_policy = row.get("policy", policy)
        if not isinstance(row_policy, str) or not row_policy.strip():
            raise DataError(f"{where}: 'policy' must be a non-empty string, got {row_policy!r}")
        key = (row_policy, prompt)
        sample = row.get("sample", counts.get(key, 0))
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise DataError(f"{where}: 'sample' must be a non-negative integer, got {sample!r}")
        counts[key] = counts.get(key, 0) + 1
        labels = {}
        feedback = row.get("feedback")
        if feedback is not None:
            labels["labels"] = _check_feedback(feedback, response, where)
        items.append(Item(prompt=prompt, response=response, policy=row_policy, sample=sample, source=where,
                          labels=labels))
    return items


def _check_feedback(feedback: Any, response: str, where: str) -> dict:
    if not isinstance(feedback, dict):
        raise DataError(f"{where}: 'feedback' must be an object (QA-FEEDBACK schema: errors, missing-info)")
    errors = feedback.get("errors", [])
    if not isinstance(errors, list):
        raise DataError(f"{where}: feedback.errors must be a list")
    for k, e in enumerate(errors):
        if not isinstance(e, dict):
            raise DataError(f"{where}: feedback.errors[{k}] must be an object")
        s, t = e.get("start"), e.get("end")
        if isinstance(s, bool) or isinstance(t, bool) or not isinstance(s, int) or not isinstance(t, int) \
                or not 0 <= s <= t <= len(response):
            raise DataError(f"{where}: feedback.errors[{k}]: span [{s!r}, {t!r}) is not inside the response "
                            f"(length {len(response)}); offsets are character (code point) indices")
    return feedback


def _read_qa_feedback(path: Path, policy: str) -> list[Item]:
    from fgrlhf_ray.data.qa_feedback import load_qa_feedback

    items = []
    for rec in load_qa_feedback(path):
        for k, pred in enumerate(rec.predictions):
            labels = {}
            if k == 0 and rec.errors is not None:
                labels["human"] = {
                    "errors": [{"error type": e.type, "start": e.start, "end": e.end} for e in rec.errors],
                    "missing-info": [{"error type": m.type, "passage_id": m.passage_id,
                                      "sentence_id": list(m.sentence_ids)} for m in (rec.missing or [])],
                }
            items.append(Item(prompt=rec.prompt, response=pred, policy=policy, sample=k,
                              source=f"{path}: row {rec.row}, prediction {k + 1}", labels=labels))
    return items


# ----------------------------------------------------------------------- rewards


@dataclass
class RewardSetup:
    """The reward models to run in-process, their weights (after `preset`) and a tokenizer hint."""

    reward_models: list[Any]  # RewardModelConfig
    weights: dict[str, float]
    tokenizer: str | None = None
    source: str = ""
    kind: str = "training"  # training | eval | serve
    notes: list[str] = field(default_factory=list)


def _serve_section():
    """The part of `fgrlhf serve`'s YAML the inspector needs (its other keys are Serve's business):
    `reward_models` entries are training entries plus a `serve:` block, which is not used here."""
    from fgrlhf_ray.config import RewardModelConfig

    class ServedEntry(RewardModelConfig):
        serve: dict[str, Any] | None = None

    class ServeRewards(BaseModel):
        model_config = ConfigDict(extra="ignore")
        reward_models: list[ServedEntry] = Field(min_length=1)
        preset: Literal["short", "medium", "long"] | None = None
        tokenizer: str | None = None

    return ServeRewards


_SERVE_ONLY = {"host", "port", "route_prefix", "app_name", "token_env", "require_token", "max_body_bytes",
               "max_items", "max_chars", "max_token_offsets", "tokenizer", "request_timeout_s", "ingress"}


def load_reward_setup(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RewardSetup:
    """Reward models of a training, eval or serve YAML (see the module docstring)."""
    import yaml

    from fgrlhf_ray.config import RewardModelConfig, load_config, load_model_from_yaml, reward_weights

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--reward-config: file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--reward-config {p}: cannot read ({exc})") from None
    except yaml.YAMLError:
        raw = None  # load_model_from_yaml below reports the line and column
    keys = set(raw) if isinstance(raw, dict) else set()
    rms = raw.get("reward_models") if isinstance(raw, dict) else None
    is_serve = bool(keys & _SERVE_ONLY) or (isinstance(rms, list) and any(isinstance(r, dict) and "serve" in r
                                                                           for r in rms))
    if is_serve:
        section = load_model_from_yaml(_serve_section(), p, list(overrides))
        models = [RewardModelConfig.model_validate(rm.model_dump(exclude={"serve"}, exclude_unset=True))
                  for rm in section.reward_models]
        names = [m.name for m in models]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ConfigError(f"{p}: reward_models: names must be unique, repeated: {', '.join(dups)}")
        return RewardSetup(models, reward_weights(models, section.preset), tokenizer=section.tokenizer,
                           source=str(p), kind="serve")
    eval_only = {"data", "ratios", "perplexity", "win_rate", "toxicity", "batch_prompts", "output", "get_timeout_s",
                 "ray_address"}
    run_keys = {"seed", "preset", "policy", "rollout", "reward_models", "ppo", "learner", "ray", "data", "logging",
                "checkpoint", "diagnostics", "audit"}
    if keys and not keys <= run_keys and keys & eval_only:
        from fgrlhf_ray.evaluation.config import load_eval_config

        config = load_eval_config(p, list(overrides))
        if not config.reward_models:
            raise ConfigError(f"{p}: this eval config has no reward_models to inspect with")
        return RewardSetup(list(config.reward_models), config.effective_reward_weights(),
                           tokenizer=_policy_tokenizer(raw, config.policy), source=str(p), kind="eval")
    config = load_config(p, list(overrides))  # a run config, or a file holding just `reward_models:`
    return RewardSetup(list(config.reward_models), config.effective_reward_weights(),
                       tokenizer=_policy_tokenizer(raw, config.policy), source=str(p), kind="training")


def _policy_tokenizer(raw: Any, policy: Any) -> str | None:
    """The policy's tokenizer folder when the file names a policy (not the default path) and it exists."""
    named = raw.get("policy") if isinstance(raw, dict) else None
    if not isinstance(named, dict) or not (named.get("model_path") or named.get("tokenizer_path")):
        return None
    return _tokenizer_dir(policy.tokenizer_path or policy.model_path)


def _tokenizer_dir(path: str | None) -> str | None:
    """`path` if it is a folder holding a tokenizer (the policy's), else None."""
    if not path or not Path(path).is_dir():
        return None
    return path if any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")) else None
