"""Build the scorer for one configured reward model, whatever its kind: the kind registry.

A scorer is anything with `name`, `density` and
`score(prompts, responses) -> list[SegmentRewards]`. Each `kind` of
`reward_models[].kind` has one builder, registered with `@register_scorer(kind)`;
`build_scorer` looks it up. Builders import their backend lazily, so a function scorer
never pays for torch / transformers / Ray Serve. `build_scorer` is what a scorer actor
(and a Serve replica, and `fgrlhf eval-rm`) calls inside its own process, so reward
models load where they run.
"""

from __future__ import annotations

from collections.abc import Callable

from fgrlhf_ray.config import MODEL_KINDS, RewardModelConfig
from fgrlhf_ray.errors import ConfigError

ScorerBuilder = Callable[[RewardModelConfig], object]
_BUILDERS: dict[str, ScorerBuilder] = {}


def register_scorer(kind: str) -> Callable[[ScorerBuilder], ScorerBuilder]:
    """Decorator: `builder(config) -> scorer` becomes the one way to build scorers of `kind`."""

    def add(builder: ScorerBuilder) -> ScorerBuilder:
        if kind in _BUILDERS:
            raise ValueError(f"scorer kind {kind!r} is already registered (by {_BUILDERS[kind].__qualname__})")
        _BUILDERS[kind] = builder
        return builder

    return add


def registered_kinds() -> tuple[str, ...]:
    return tuple(_BUILDERS)


def build_scorer(config: RewardModelConfig):
    """Instantiate the scorer described by `config` in this process."""
    builder = _BUILDERS.get(config.kind)
    if builder is None:
        raise ConfigError(f"reward model {config.name!r}: unknown kind {config.kind!r}; "
                          f"registered kinds: {', '.join(_BUILDERS)}")
    return builder(config)


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


def normalization_of(config: RewardModelConfig, scorer) -> tuple[float, float]:
    """(μ, σ) applied before weighting: the config's values, else the model's stored ones, else (0, 1)."""
    stored_mean, stored_std = getattr(scorer, "normalization", None) or (0.0, 1.0)
    mean = config.normalize_mean if config.normalize_mean is not None else stored_mean
    std = config.normalize_std if config.normalize_std is not None else stored_std
    return float(mean), float(std)


# ------------------------------------------------------------------ the built-in kinds


def _load_saved_model(config: RewardModelConfig):
    """A trained RM folder (`fgrlhf train-rm`), checked against the config's kind and density."""
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


for _kind in MODEL_KINDS:
    register_scorer(_kind)(_load_saved_model)


@register_scorer("function")
def _function_scorer(config: RewardModelConfig):
    from fgrlhf_ray.rewards.function_scorer import FunctionScorer

    return FunctionScorer(target=config.target, density=config.density, name=config.name)


@register_scorer("http")
def _http_scorer(config: RewardModelConfig):
    from fgrlhf_ray.rewards.http_scorer import HttpScorer

    # Any server speaking /v1/score (`fgrlhf serve`); a `#model` fragment picks the model.
    return HttpScorer(name=config.name, url=config.target, density=config.density, timeout_s=config.timeout_s,
                      max_retries=config.max_retries, max_concurrency=config.max_concurrency,
                      token_env=config.token_env)


@register_scorer("serve")
def _serve_handle_scorer(config: RewardModelConfig):
    from fgrlhf_ray.rewards.serve_handle_scorer import ServeHandleScorer

    # In-cluster through a DeploymentHandle (no HTTP hop): target `app` or `app/deployment`.
    return ServeHandleScorer.from_target(name=config.name, target=config.target, density=config.density,
                                         timeout_s=config.timeout_s, max_retries=config.max_retries)


@register_scorer("toxicity")
def _toxicity_scorer(config: RewardModelConfig):
    from fgrlhf_ray.rewards.toxicity import build_toxicity_scorer

    # Detoxification: a DetoxScorer over an HF classifier (path) or a Perspective-style API (target).
    return build_toxicity_scorer(config)
