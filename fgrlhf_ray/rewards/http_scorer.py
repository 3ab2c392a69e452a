"""`HttpScorer`: a reward model behind any URL that speaks `/v1/score` (`fgrlhf serve`
or a compatible server), used as scorer kind `http` in training.

It has the `RewardModel` interface — `name`, `kind`, `density`, `normalization`,
`score(prompts, responses) -> list[SegmentRewards]` — and returns the server's raw
segments, so the trainer weights and normalises them exactly as for an in-process model.

Transport rules:
- each request carries at most `max_items_per_request` items (default: the server's
  `max_items` limit from `GET /v1/models`); a batch is split into such requests and at
  most `max_concurrency` of them are in flight at once (one thread pool per scorer);
- every request has a `timeout_s`; connection errors, timeouts and 408 / 429 / 5xx answers
  are retried up to `max_retries` times with exponential backoff (`backoff_s · 2^k`, capped
  at `max_backoff_s`, jittered, `Retry-After` honoured: `fgrlhf_ray.infra.http`); other
  4xx answers are not retried and raise `HttpScorerError` with the server's reason;
- the bearer token comes from the environment variable `token_env` (default
  `FGRLHF_SERVE_TOKEN`; sent only when the variable is set).

The server rejects empty prompts and responses, so items with an empty prompt or
response are not sent: they get no segments (`extra["skipped"]` says why) and hence no
reward from this scorer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from fgrlhf_ray.errors import ConfigError, FgrlhfError
from fgrlhf_ray.infra.http import RetryPolicy, bearer_headers, http_request, json_body
from fgrlhf_ray.types import Segment, SegmentRewards

DEFAULT_TOKEN_ENV = "FGRLHF_SERVE_TOKEN"


class HttpScorerError(FgrlhfError):
    """A scoring request failed for good (after retries, or refused with a 4xx)."""


def split_target(url: str) -> tuple[str, str | None]:
    """`http://host:8000/prefix#model` → (`http://host:8000/prefix`, `model`); no fragment → None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"http scorer: {url!r} is not an http(s):// URL like http://127.0.0.1:8000")
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))
    return base, (parts.fragment or None)


class HttpScorer:
    """Scores through `POST {url}/v1/score` (see the module docstring for the transport rules).

    Args:
        name: scorer name in training (metrics, reward placement).
        url: base URL of the application, e.g. `http://127.0.0.1:8000` (or `…/prefix`);
            a fragment `#relevance` picks the served model, otherwise `model` or `name`.
        density: the density training expects; checked against the server's model.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt for retryable failures.
        max_concurrency: most requests in flight at once from this scorer.
        token_env: environment variable with the bearer token (None: never send one).
        model: served model name (default: the URL fragment, else `name`).
        max_items_per_request: items per request (default: the server's `max_items`).
        backoff_s, max_backoff_s: first retry delay and its cap.
        transport: an `httpx` transport (tests use `httpx.MockTransport`).
    """

    kind = "http"

    def __init__(
        self,
        *,
        name: str,
        url: str,
        density: str,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 4,
        token_env: str | None = DEFAULT_TOKEN_ENV,
        model: str | None = None,
        max_items_per_request: int | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout_s <= 0 or max_retries < 0 or max_concurrency < 1:
            raise ConfigError(
                f"http scorer {name!r}: need timeout_s > 0, max_retries >= 0 and max_concurrency >= 1 "
                f"(got {timeout_s}, {max_retries}, {max_concurrency})"
            )
        self.name = name
        self.url, fragment = split_target(url)
        self.model = model or fragment or name
        self.density = density
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.token_env = token_env
        self.max_items_per_request = max_items_per_request
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._transport = transport
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._info: dict | None = None
        self._limits: dict | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpScorer(name={self.name!r}, url={self.url!r}, model={self.model!r})"

    # ---------------------------------------------------------------- plumbing
    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.url + "/",
                    headers=bearer_headers(self.token_env),
                    timeout=self.timeout_s,
                    transport=self._transport,
                    limits=httpx.Limits(max_connections=self.max_concurrency,
                                        max_keepalive_connections=self.max_concurrency),
                )
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"http-scorer-{self.name}")
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._client is not None:
                self._client.close()
            self._client, self._pool = None, None

    def __getstate__(self) -> dict:  # picklable: connections are rebuilt where it lands
        state = self.__dict__.copy()
        state.update(_client=None, _pool=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        client = self._http()
        what = f"http scorer {self.name!r}: {method} {self.url}/{path}"

        def refuse(response: httpx.Response, reason: str) -> HttpScorerError:
            hint = ""
            if response.status_code == 401:
                hint = (f" (set the bearer token in ${self.token_env})" if self.token_env
                        else " (the server needs a bearer token; set token_env)")
            return HttpScorerError(f"{what} → {response.status_code}: {reason}{hint}")

        response = http_request(lambda _: client.request(method, path, **kwargs), policy=self.retry_policy,
                                what=what, timeout_s=self.timeout_s, timeout_hint=" (timeout_s)",
                                refuse=refuse, error=HttpScorerError)
        return json_body(response, what=what, error=HttpScorerError)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)

    # ------------------------------------------------------------- model info
    def info(self) -> dict:
        """The served model's entry from `GET /v1/models` (cached); checks its density."""
        if self._info is None:
            listing = self._request("GET", "v1/models")
            models = {m["name"]: m for m in listing.get("models", [])}
            if self.model not in models:
                raise ConfigError(
                    f"http scorer {self.name!r}: {self.url} serves no model {self.model!r}; it serves "
                    f"{', '.join(models) or 'nothing'} (pick one with a URL fragment, e.g. {self.url}#{next(iter(models), 'name')})"
                )
            info = models[self.model]
            if info["density"] != self.density:
                raise ConfigError(
                    f"http scorer {self.name!r}: config says density {self.density!r} but {self.url} serves "
                    f"{self.model!r} with density {info['density']!r}"
                )
            self._limits = listing.get("limits") or {}
            self._info = info
        return self._info

    @property
    def normalization(self) -> tuple[float, float] | None:
        """(μ, σ) the server applies for this model (its config's, else the model's stored ones)."""
        norm = self.info().get("normalization")
        return (float(norm["mean"]), float(norm["std"])) if norm else None

    # ---------------------------------------------------------------- scoring
    def _post(self, pairs: list[tuple[str, str]]) -> list[SegmentRewards]:
        body = {"items": [{"prompt": p, "response": r} for p, r in pairs], "models": [self.model]}
        reply = self._request("POST", "v1/score", json=body)
        results = reply.get("results", [])
        if len(results) != len(pairs):
            raise HttpScorerError(f"http scorer {self.name!r}: sent {len(pairs)} items, got {len(results)} results")
        out = []
        for result in results:
            verdict = result["scores"][self.model]
            segments = [Segment(int(s["char_start"]), int(s["char_end"]), float(s["value"]), s.get("label"),
                                s.get("probability")) for s in verdict["segments"]]
            out.append(SegmentRewards(segments, verdict["density"], self.name))
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:
        if len(prompts) != len(responses):
            raise ValueError(f"score(): got {len(prompts)} prompts but {len(responses)} responses; they must pair up")
        self.info()  # fail fast on a wrong URL / model / density, and learn the server's limits
        per_request = self.max_items_per_request or int((self._limits or {}).get("max_items", 16))
        keep = [i for i, (p, r) in enumerate(zip(prompts, responses)) if p and r]
        pairs = [(prompts[i], responses[i]) for i in keep]
        chunks = [pairs[k : k + per_request] for k in range(0, len(pairs), per_request)]
        self._http()
        scored = [v for part in self._pool.map(self._post, chunks) for v in part]
        out = [SegmentRewards([], self.density, self.name,
                              extra={"skipped": "empty prompt or response (the server rejects empty strings)"})
               for _ in responses]
        for i, verdict in zip(keep, scored):
            out[i] = verdict
        return out

