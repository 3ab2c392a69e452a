"""`ServeConfig`: the typed configuration of `fgrlhf serve` (one YAML file).

It reuses `fgrlhf_ray.config.RewardModelConfig` for each served reward model — the same
fields (path, density, weight, normalize_mean/std, num_replicas, num_cpus, num_gpus)
mean the same thing as in a training config, so a model's weighted total from
`/v1/score` equals what training would place for it — and adds a `serve:` block per
model (request batching, autoscaling, health checks) plus the HTTP front: host, port,
route prefix, bearer token, request limits.

The rules on the reward-model list (at least one, unique names, a `preset` needs a model
named `relevance`) and the preset weights are the training config's own functions.

Load with `load_serve_config(path, overrides)` (every problem becomes one `ConfigError`
listing each bad field, like `fgrlhf config validate`). Imports no ray.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fgrlhf_ray.config import (
    ENV_VAR_PATTERN,
    MODEL_KINDS,
    RewardModelConfig,
    StrictModel,
    check_reward_model_set,
    load_model_from_yaml,
    require_reward_models,
    reward_weights,
)
from fgrlhf_ray.errors import ConfigError

#: Environment variable read for the bearer token by default, on both sides (server and `HttpScorer`).
DEFAULT_TOKEN_ENV = "FGRLHF_SERVE_TOKEN"

#: Name of the HTTP ingress deployment; reward-model deployments are named after their model.
INGRESS_DEPLOYMENT = "fgrlhf_ingress"

#: Kinds a Serve replica can load itself (an `http` / `serve` scorer would only proxy another server).
SERVABLE_KINDS = (*MODEL_KINDS, "function")


class ModelServeOptions(StrictModel):
    """How one reward model runs under Ray Serve."""

    max_batch_size: int = Field(16, ge=1)
    """Most (prompt, response) items merged from concurrent requests into one `score()` call
    (`@serve.batch`); requests are cut into chunks of at most this many items."""

    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    """How long a replica waits for more items after the first before scoring a partial batch."""

    min_replicas: int | None = Field(None, ge=0)
    """Autoscaling lower bound; set with `max_replicas` to autoscale (then `num_replicas` is ignored)."""

    max_replicas: int | None = Field(None, ge=1)
    """Autoscaling upper bound; null = a fixed `num_replicas`."""

    target_ongoing_requests: float = Field(2.0, gt=0.0)
    """Autoscaling target of in-flight scoring calls per replica."""

    max_ongoing_requests: int = Field(64, ge=1)
    """Scoring calls a replica accepts at once before Serve queues them elsewhere."""

    health_check_period_s: float = Field(10.0, gt=0.0)
    """Seconds between Serve's health checks (`check_health`) of each replica."""

    health_check_timeout_s: float = Field(30.0, gt=0.0)
    """A health check that takes longer than this marks the replica unhealthy (it is replaced)."""

    @model_validator(mode="after")
    def _check_autoscaling(self) -> "ModelServeOptions":
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("set both serve.min_replicas and serve.max_replicas to autoscale, or neither")
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serve.min_replicas ({self.min_replicas}) must be <= serve.max_replicas ({self.max_replicas})"
            )
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None


class ServedRewardModelConfig(RewardModelConfig):
    """A training `reward_models` entry plus its `serve:` options."""

    serve: ModelServeOptions = Field(default_factory=ModelServeOptions)
    """Batching, autoscaling and health-check options for this model's deployment."""

    @model_validator(mode="after")
    def _check_servable(self) -> "ServedRewardModelConfig":
        if self.kind not in SERVABLE_KINDS:
            raise ValueError(
                f"reward model {self.name!r}: kind {self.kind!r} cannot be served (a replica must load the model "
                f"itself); use one of {', '.join(SERVABLE_KINDS)}"
            )
        if self.name == INGRESS_DEPLOYMENT:
            raise ValueError(f"reward model name {self.name!r} is reserved for the HTTP ingress; rename the model")
        return self


class IngressOptions(StrictModel):
    """The HTTP front deployment (validation, auth, fan-out to the models)."""

    num_replicas: int = Field(1, ge=1)
    """Ingress replicas (it only parses requests and awaits the models; one is usually enough)."""

    num_cpus: float = Field(0.1, ge=0.0)
    """CPUs reserved per ingress replica."""

    max_ongoing_requests: int = Field(256, ge=1)
    """Concurrent HTTP requests one ingress replica accepts (it is async; keep this high)."""


class ServeConfig(StrictModel):
    """`fgrlhf serve --config FILE`: reward models behind one HTTP application."""

    host: str = "127.0.0.1"
    """Interface the HTTP proxy binds. Loopback by default; use 0.0.0.0 only behind auth / a firewall."""

    port: int = Field(8000, ge=1, le=65535)
    """HTTP port of the Serve proxy."""

    route_prefix: str = "/"
    """URL prefix of the application: `/` serves `/v1/score`; `/rm` serves `/rm/v1/score`."""

    app_name: str = Field("fgrlhf-rm", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Serve application name; `serve` scorers in training name it in `target: <app_name>/<model>`."""

    ray_address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`); null = `RAY_ADDRESS` if set, else a local cluster."""

    token_env: str | None = DEFAULT_TOKEN_ENV
    """Environment variable holding the bearer token. When it is set (non-empty) at start-up, every
    `/v1/score` and `/v1/models` call needs `Authorization: Bearer <token>`; null disables auth."""

    require_token: bool = False
    """Refuse to start unless the `token_env` variable is set (fail closed instead of serving without auth)."""

    max_body_bytes: int = Field(1_048_576, ge=256)
    """Largest accepted request body in bytes (larger → 413)."""

    max_items: int = Field(64, ge=1)
    """Most (prompt, response) items in one request (more → 413)."""

    max_chars: int = Field(32_768, ge=1)
    """Longest accepted prompt or response, in characters (longer → 422)."""

    max_token_offsets: int = Field(4096, ge=1)
    """Most `token_offsets` pairs per item (per-token rewards)."""

    tokenizer: str | None = None
    """Policy tokenizer folder: lets `return_token_rewards` work without client-sent `token_offsets`
    (the server splits each response with this tokenizer's offset mapping)."""

    request_timeout_s: float = Field(60.0, gt=0.0)
    """Time the ingress waits for a model's scores before answering 504."""

    preset: Literal["short", "medium", "long"] | None = None
    """Same as in a training config: sets the weight of the model named `relevance` (0.4 / 0.3 / 0.2)."""

    ingress: IngressOptions = Field(default_factory=IngressOptions)
    """The HTTP front deployment."""

    reward_models: list[ServedRewardModelConfig]
    """The reward models to deploy (one Serve deployment each; at least one)."""

    @field_validator("route_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"/([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?", value):
            raise ValueError("route_prefix must start with '/' and contain only path segments, e.g. '/' or '/rm'")
        return value

    @field_validator("token_env")
    @classmethod
    def _check_token_env(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(ENV_VAR_PATTERN, value):
            raise ValueError("token_env must be an environment variable name like FGRLHF_SERVE_TOKEN")
        return value

    @field_validator("reward_models")
    @classmethod
    def _at_least_one(cls, value: list[ServedRewardModelConfig]) -> list[ServedRewardModelConfig]:
        return require_reward_models(value)  # the training config's rule

    @model_validator(mode="after")
    def _check_serve(self) -> "ServeConfig":
        check_reward_model_set(self.reward_models, self.preset)  # unique names, preset needs 'relevance'
        if self.require_token and self.token_env is None:
            raise ValueError("require_token is true but token_env is null; name the variable holding the token")
        return self

    def effective_weights(self) -> dict[str, float]:
        """Weight per model after `preset` (the same function as `RunConfig.effective_reward_weights`)."""
        return reward_weights(self.reward_models, self.preset)

    def model(self, name: str) -> ServedRewardModelConfig:
        for rm in self.reward_models:
            if rm.name == name:
                return rm
        raise KeyError(name)

    def resolve_token(self, environ: dict | None = None) -> str | None:
        """The bearer token from `token_env` (None = auth off). ConfigError if required but unset."""
        environ = os.environ if environ is None else environ
        token = environ.get(self.token_env, "") if self.token_env else ""
        if not token and self.require_token:
            raise ConfigError(
                f"require_token is true but the environment variable {self.token_env} is not set; "
                f"export {self.token_env}=<secret> or set require_token: false"
            )
        return token or None


def load_serve_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ServeConfig:
    """Load and validate a serve YAML file (ConfigError listing every problem)."""
    return load_model_from_yaml(ServeConfig, path, overrides)
