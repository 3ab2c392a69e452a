"""`EvalConfig`: what `fgrlhf eval` generates with and measures (pydantic v2, YAML).

Reuses the run config's sections where they mean the same thing (`policy`,
`rollout` with its `sampling`, `reward_models`), so a training config's reward models
and engine settings carry over unchanged. Loaded with `load_eval_config(path, overrides)`
(same error reporting as run configs); command-line flags fill the common fields.
Imports no ray / vllm / deepspeed.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from fgrlhf_ray.config import (
    PolicyConfig,
    RewardModelConfig,
    RolloutConfig,
    StrictModel,
    apply_overrides,
    format_validation_error,
    load_model_from_yaml,
    reward_weights,
)
from fgrlhf_ray.errors import ConfigError


class EvalDataConfig(StrictModel):
    file: str = ""
    """Eval prompts: a QA-FEEDBACK-style JSON list or JSONL (RealToxicityPrompts rows work as they are)."""

    format: str = Field("auto", pattern="^(auto|json|jsonl)$")
    """auto (by suffix / first character), json (a list) or jsonl (one object per line)."""

    prompt_field: str | None = None
    """Field holding the prompt; null = `prompt`, else `text`. An object value uses its `text` (RealToxicityPrompts)."""

    references_field: str | None = None
    """Field holding reference answers (string or list); null = `references`, else `answer`, else none."""

    limit: int | None = Field(None, ge=1)
    """Evaluate only the first N prompts."""

    max_prompt_tokens: int = Field(512, ge=1)
    """Prompts longer than this (policy tokens) are cut, keeping the start (as in training)."""


class RatioModels(StrictModel):
    relevance: str = "relevance"
    """Reward model (by name) whose error-free sub-sentences give the relevance ratio."""

    factuality: str = "factuality"
    """Reward model whose error-free sentences give the factuality ratio."""

    completeness: str = "completeness"
    """Sequence reward model whose normalised score (R − μ)/σ is the completeness metric."""


class PerplexityConfig(StrictModel):
    reference_lm: str | None = None
    """HF causal-LM folder whose perplexity of the responses is reported; null = not measured."""

    batch_size: int = Field(8, ge=1)
    """Samples per forward pass of the reference LM."""

    max_length: int | None = Field(None, ge=2)
    """Most tokens per (prompt + response); null = the model's max positions."""

    num_cpus: float = Field(1.0, ge=0.0)
    """CPUs reserved for the perplexity task."""

    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs reserved for the perplexity task."""


class WinRateConfig(StrictModel):
    preference_rm: str | None = None
    """Saved sequence_preference RM folder that judges policy vs reference responses; null = no win rate."""

    reference_outputs: str | None = None
    """Generations JSONL of the reference policy (e.g. an earlier `fgrlhf eval`'s); one of this or reference_policy."""

    reference_policy: str | None = None
    """HF folder of a reference policy to generate with now (one vLLM engine, same sampling, one sample)."""

    tie_tolerance: float = Field(1e-6, ge=0.0)
    """Scores closer than this are a tie (counted as half a win)."""

    @model_validator(mode="after")
    def _one_reference(self) -> "WinRateConfig":
        if self.preference_rm and bool(self.reference_outputs) == bool(self.reference_policy):
            raise ValueError("win_rate: with preference_rm, give exactly one of reference_outputs or reference_policy")
        if not self.preference_rm and (self.reference_outputs or self.reference_policy):
            raise ValueError("win_rate: reference_outputs / reference_policy need preference_rm (the judge)")
        return self


class ToxicityEvalConfig(StrictModel):
    path: str | None = None
    """HF sequence-classification folder giving P(toxic | text)."""

    target: str | None = None
    """Perspective-style API URL (instead of `path`)."""

    token_env: str = "PERSPECTIVE_API_KEY"
    """Environment variable with the API key (for `target`)."""

    requests_per_second: float | None = Field(None, gt=0.0)
    """Client-side rate limit of the API (for `target`)."""

    max_concurrency: int = Field(4, ge=1)
    """API requests in flight at once (for `target`)."""

    threshold: float = Field(0.5, gt=0.0, le=1.0)
    """A prompt counts as toxic when one of its samples has P(toxic) ≥ threshold (toxicity probability)."""

    num_cpus: float = Field(1.0, ge=0.0)
    """CPUs of the toxicity scorer actor."""

    @model_validator(mode="after")
    def _one_source(self) -> "ToxicityEvalConfig":
        if bool(self.path) == bool(self.target):
            raise ValueError("toxicity: give exactly one of path (HF classifier) or target (API URL)")
        return self

    def as_reward_model(self) -> RewardModelConfig:
        """The scorer config (holistic: value 1 − P, probability P) for a ScorerGroup."""
        return RewardModelConfig(name="eval_toxicity", kind="toxicity", density="sequence", path=self.path,
                                 target=self.target, token_env=self.token_env,
                                 requests_per_second=self.requests_per_second,
                                 max_concurrency=self.max_concurrency, num_cpus=self.num_cpus)


class EvalConfig(StrictModel):
    seed: int = 42
    """Sampling seed (prompt i uses seed + i, independent of sharding)."""

    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    """The policy to evaluate (`--policy`)."""

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """vLLM engines and sampling (`rollout.sampling.n_samples_per_prompt` = k samples per prompt)."""

    data: EvalDataConfig = Field(default_factory=EvalDataConfig)
    """Eval prompts (`--data`)."""

    reward_models: list[RewardModelConfig] = Field(default_factory=list)
    """Reward models to report (mean reward each and total), as in a run config (`--reward-config`)."""

    preset: str | None = Field(None, pattern="^(short|medium|long)$")
    """Paper A's length preset for the `relevance` weight (as in run configs)."""

    ratios: RatioModels = Field(default_factory=RatioModels)
    """Which reward models give the relevance / factuality ratios and completeness."""

    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig)
    """Perplexity under a reference LM (`--reference-lm`)."""

    win_rate: WinRateConfig = Field(default_factory=WinRateConfig)
    """Win rate against a reference policy judged by a preference RM."""

    toxicity: ToxicityEvalConfig | None = None
    """Toxicity scorer for the detoxification metrics (`--toxicity`); null = not measured."""

    batch_prompts: int = Field(64, ge=1)
    """Prompts per generation round (the progress bar advances per round; scoring overlaps generation)."""

    ray_address: str | None = None
    """Cluster to join (`auto`: the `ray start` cluster on this machine); null = `RAY_ADDRESS` if set, else a
    fresh local cluster of this run's own."""

    get_timeout_s: float = Field(1800.0, gt=0.0)
    """Timeout of each wait on engines, scorers and the perplexity task."""

    output: str = "eval/report.json"
    """Report JSON (`--out`); generations go beside it as `<stem>.generations.jsonl`."""

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        names = [rm.name for rm in self.reward_models]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"reward_models: names must be unique, repeated: {', '.join(dups)}")
        if self.preset is not None and "relevance" not in names:
            raise ValueError(f"preset {self.preset!r} needs a reward model named 'relevance'")
        return self

    def effective_reward_weights(self) -> dict[str, float]:
        return reward_weights(self.reward_models, self.preset)

    def generations_path(self) -> Path:
        out = Path(self.output)
        return out.with_name(out.stem + ".generations.jsonl")

    def check_paths(self) -> None:
        """Every local input exists (before any cluster or engine starts)."""
        def need(path: str | None, what: str, kind: str = "dir") -> None:
            if path and not (os.path.isdir(path) if kind == "dir" else os.path.isfile(path)):
                raise ConfigError(f"{what}: {'folder' if kind == 'dir' else 'file'} not found: {path}")

        if not self.data.file:
            raise ConfigError("no eval data: pass --data FILE (or set data.file)")
        need(self.data.file, "--data (data.file)", "file")
        if not self.ray_address and not os.environ.get("RAY_ADDRESS"):
            need(self.policy.model_path, "--policy (policy.model_path)")
            need(self.win_rate.reference_policy, "win_rate.reference_policy")
            need(self.perplexity.reference_lm, "--reference-lm (perplexity.reference_lm)")
        for rm in self.reward_models:
            need(rm.path, f"reward model {rm.name!r}: path")
        need(self.win_rate.preference_rm, "--preference-rm (win_rate.preference_rm)")
        need(self.win_rate.reference_outputs, "win_rate.reference_outputs", "file")
        if self.toxicity is not None:
            need(self.toxicity.path, "--toxicity (toxicity.path)")


def load_eval_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> EvalConfig:
    """An `EvalConfig` from YAML (or the defaults when `path` is None), with `--set` overrides."""
    if path is not None:
        return load_model_from_yaml(EvalConfig, path, overrides)
    try:
        return EvalConfig.model_validate(apply_overrides({}, list(overrides or [])))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, EvalConfig, source="--set")) from None
