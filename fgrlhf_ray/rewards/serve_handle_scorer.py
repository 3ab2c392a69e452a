"""`ServeHandleScorer`: a reward model deployed by `fgrlhf serve`, called in-cluster
through a Serve `DeploymentHandle` (no HTTP hop, no JSON), as scorer kind `serve`.

It calls the model deployment directly, so the ingress's HTTP checks are skipped:
empty responses are scored like in-process (unlike `HttpScorer`). A batch is cut into
chunks of the deployment's `max_batch_size`, all sent at once; Serve spreads them over
the replicas and `@serve.batch` merges them with other callers' chunks.

Use it from synchronous code (a `ScorerActor`, a driver script): `DeploymentHandle`
results are awaited with `.result()`, which Serve forbids inside a running event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from fgrlhf_ray.errors import ConfigError, FgrlhfError
from fgrlhf_ray.infra.http import RetryPolicy, Retryable, error_reason, with_retries
from fgrlhf_ray.types import SegmentRewards


class ServeScorerError(FgrlhfError):
    """The deployment could not score a batch after retries."""


class ServeHandleScorer:
    """Scores through the deployment `deployment_name` of Serve application `app_name`.

    Args:
        name: scorer name in training.
        app_name: the Serve application (`app_name` in the serve config, default `fgrlhf-rm`).
        density: the density training expects; checked against the deployment's model.
        deployment_name: the model's deployment (= its name in the serve config); default `name`.
        timeout_s: how long to wait for one batch's scores.
        max_retries: retries of a failed batch (e.g. a replica died mid-call), 1 s apart, doubling.
    """

    kind = "serve"

    def __init__(self, *, name: str, app_name: str, density: str, deployment_name: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 2) -> None:
        self.name = name
        self.app_name = app_name
        self.deployment_name = deployment_name or name
        self.density = density
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._handle = None
        self._info: dict | None = None

    @classmethod
    def from_target(cls, *, name: str, target: str, density: str, **kwargs) -> "ServeHandleScorer":
        """`target` is `app` (deployment = `name`) or `app/deployment`, as in a training config."""
        app, _, deployment = target.partition("/")
        if not app or "/" in deployment:
            raise ConfigError(f"serve scorer {name!r}: target must be 'app' or 'app/deployment', got {target!r}")
        return cls(name=name, app_name=app, density=density, deployment_name=deployment or None, **kwargs)

    def __repr__(self) -> str:
        return f"ServeHandleScorer(name={self.name!r}, app={self.app_name!r}, deployment={self.deployment_name!r})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    @property
    def retry_policy(self) -> RetryPolicy:
        """1 s, 2 s, 4 s … between attempts, no jitter (the shared loop of `fgrlhf_ray.infra.http`)."""
        return RetryPolicy(max_retries=self.max_retries, backoff_s=1.0, max_backoff_s=float("inf"), jitter=False)

    def handle(self):
        if self._handle is None:
            from ray import serve

            try:
                self._handle = serve.get_deployment_handle(self.deployment_name, app_name=self.app_name)
            except Exception as exc:  # noqa: BLE001 — Serve raises several types for "not there"
                raise ConfigError(
                    f"serve scorer {self.name!r}: no deployment {self.deployment_name!r} in Serve application "
                    f"{self.app_name!r} of this Ray cluster ({exc}); start it with `fgrlhf serve --config FILE` "
                    "and connect to the same cluster"
                ) from None
        return self._handle

    def info(self) -> dict:
        """The deployment's model description (kind, density, normalisation, max_batch_size …)."""
        if self._info is None:
            info = self.handle().info.remote().result(timeout_s=self.timeout_s)
            if info["density"] != self.density:
                raise ConfigError(
                    f"serve scorer {self.name!r}: config says density {self.density!r} but deployment "
                    f"{self.app_name}/{self.deployment_name} serves density {info['density']!r}"
                )
            self._info = info
        return self._info

    @property
    def normalization(self) -> tuple[float, float] | None:
        """(μ, σ) the deployment applies: its config's normalize_mean/std, else the model's stored ones."""
        norm = self.info().get("normalization")
        return (float(norm[0]), float(norm[1])) if norm else None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:
        if len(prompts) != len(responses):
            raise ValueError(f"score(): got {len(prompts)} prompts but {len(responses)} responses; they must pair up")
        size = int(self.info()["max_batch_size"])
        pairs = list(zip(prompts, responses))
        chunks = [pairs[k : k + size] for k in range(0, len(pairs), size)]

        def attempt(_: int) -> list:
            try:
                calls = [self.handle().score.remote(chunk) for chunk in chunks]
                return [v for call in calls for v in call.result(timeout_s=self.timeout_s)]
            except Exception as exc:  # noqa: BLE001 — a dead replica, a timeout or a model error
                raise Retryable(error_reason(exc)) from exc

        verdicts = with_retries(attempt, policy=self.retry_policy, error=ServeScorerError,
                                what=f"serve scorer {self.name!r}: {self.app_name}/{self.deployment_name}")
        return [SegmentRewards(v.segments, v.density, self.name, dict(v.extra)) for v in verdicts]
