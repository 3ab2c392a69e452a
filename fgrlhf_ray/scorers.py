"""Build the scorer for one configured reward model, whatever its kind.

A scorer is anything with `name`, `density` and
`score(prompts, responses) -> list[SegmentRewards]`. `build_scorer` is what a
`ScorerActor` calls inside its own process, so reward models load where they run.
"""

from __future__ import annotations

from fgrlhf_ray.config import RewardModelConfig
from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.types import RolloutBatch, SegmentRewards


def credential_env_var(config: RewardModelConfig) -> str | None:
    """The driver's environment variable holding this scorer's credential, if it has one.

    Scorer actors may run on other nodes, which do not share the driver's environment:
    the actor group forwards this variable's value into their runtime env.
    """
    if config.kind == "http":
        return config.token_env
    if config.kind == "toxicity" and config.target:
        from fgrlhf_ray.rewards.toxicity import api_key_env

        return api_key_env(config)
    return None


def build_scorer(config: RewardModelConfig):
    """Instantiate the scorer described by `config` in this process."""
    if config.kind in ("segment_classifier", "sequence_preference", "token_level"):
        from fgrlhf_ray.rewards import load_reward_model

        model = load_reward_model(config.path)
        if model.kind != config.kind:
            raise ConfigError(
                f"reward model {config.name!r}: config says kind {config.kind!r} but {config.path} holds a "
                f"{model.kind!r} model"
            )
        if model.density != config.density:
            raise ConfigError(
                f"reward model {config.name!r}: config says density {config.density!r} but {config.path} was "
                f"trained for {model.density!r}"
            )
        return model
    if config.kind == "function":
        from fgrlhf_ray.rewards import FunctionScorer

        return FunctionScorer(target=config.target, density=config.density, name=config.name)
    if config.kind == "http":
        from fgrlhf_ray.http_scorer import HttpScorer

        # Any server speaking /v1/score (`fgrlhf serve`); a `#model` fragment picks the model.
        return HttpScorer(name=config.name, url=config.target, density=config.density, timeout_s=config.timeout_s,
                          max_retries=config.max_retries, max_concurrency=config.max_concurrency,
                          token_env=config.token_env)
    if config.kind == "serve":
        from fgrlhf_ray.serve.handle_scorer import ServeHandleScorer

        # In-cluster through a DeploymentHandle (no HTTP hop): target `app` or `app/deployment`.
        return ServeHandleScorer.from_target(name=config.name, target=config.target, density=config.density,
                                             timeout_s=config.timeout_s, max_retries=config.max_retries)
    if config.kind == "toxicity":
        from fgrlhf_ray.rewards.toxicity import build_toxicity_scorer

        # Detoxification: a DetoxScorer over an HF classifier (path) or a Perspective-style API (target).
        return build_toxicity_scorer(config)
    raise ConfigError(f"reward model {config.name!r}: unknown kind {config.kind!r}")


def normalization_of(config: RewardModelConfig, scorer) -> tuple[float, float]:
    """(μ, σ) applied before weighting: the config's values, else the model's stored ones, else (0, 1)."""
    stored_mean, stored_std = getattr(scorer, "normalization", None) or (0.0, 1.0)
    mean = config.normalize_mean if config.normalize_mean is not None else stored_mean
    std = config.normalize_std if config.normalize_std is not None else stored_std
    return float(mean), float(std)


def score_rollout(scorer, rollout: RolloutBatch, *, start: int = 0, stop: int | None = None) -> list[SegmentRewards]:
    """Score samples `[start, stop)` of a rollout (a replica's shard)."""
    stop = len(rollout) if stop is None else stop
    return scorer.score(rollout.prompts[start:stop], rollout.responses[start:stop])
