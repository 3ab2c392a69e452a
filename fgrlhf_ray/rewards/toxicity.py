"""Toxicity scorers for the detoxification task (paper A, section 4).

A *toxicity scorer* is any callable `P(texts: list[str]) -> list[float]` giving
P(toxic | text) in [0, 1]. Two implementations:

- `hf_toxicity_classifier(path)` — a local Hugging Face sequence-classification folder
  (wraps `fgrlhf_ray.rewards.function_scorer.hf_toxicity`, picking the toxic class from
  the model's labels: a label named `toxic`, else index 1 of a 2-class model, else the
  sigmoid of a 1-logit model).
- `PerspectiveClient(url)` — an HTTP client speaking the Perspective API's
  `comments:analyze` format (any compatible server; a loopback one in the tests):

      POST {url}/v1alpha1/comments:analyze?key=KEY
      {"comment": {"text": "..."}, "requestedAttributes": {"TOXICITY": {}},
       "languages": ["en"], "doNotStore": true}
      → {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 0.12}}}}

  One text per request (the API's unit). The key comes from an environment variable
  (default `PERSPECTIVE_API_KEY`; none sent when unset). Requests are rate limited
  client-side (`requests_per_second`, the API's quota is per second), at most
  `max_concurrency` are in flight, and timeouts, connection errors, 429 and 5xx are
  retried with exponential backoff (honouring `Retry-After`) by the shared client of
  `fgrlhf_ray.infra.http`, as in `fgrlhf_ray.rewards.http_scorer`.

`build_toxicity_scorer(config)` turns a `kind: toxicity` reward-model config into a
`DetoxScorer` (the existing detox reward maths): density `sequence` gives the
holistic reward 1 − P(y); density `sentence` the fine-grained −(P(y_1..j) − P(y_1..j−1))
after each sentence j.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from fgrlhf_ray.errors import ConfigError, FgrlhfError
from fgrlhf_ray.infra.http import RetryPolicy, http_request
from fgrlhf_ray.rewards.http_scorer import split_target

DEFAULT_KEY_ENV = "PERSPECTIVE_API_KEY"
ANALYZE_PATH = "v1alpha1/comments:analyze"


class ToxicityApiError(FgrlhfError):
    """The toxicity API refused a request or kept failing after retries."""


# ----------------------------------------------------------------- HF classifier


def toxic_label_index(id2label: dict, num_labels: int, *, where: str) -> int:
    """Which output is P(toxic): a label named 'toxic' (any case), else 1 of 2, else 0 of 1."""
    names = {str(v).lower(): int(k) for k, v in id2label.items()}
    if num_labels == 1:
        return 0
    if "toxic" in names:
        return names["toxic"]
    if num_labels == 2:
        return 1
    raise ConfigError(f"{where}: cannot tell which of {num_labels} labels is 'toxic' (labels: {sorted(names)}); "
                      "rename the toxic class to 'toxic' in the model's config.json id2label")


def hf_toxicity_classifier(path: str, *, device: str = "cpu", batch_size: int = 32,
                           max_length: int = 512) -> Callable[[list[str]], list[float]]:
    """Batched P(toxic | text) from a local HF sequence-classification folder."""
    from transformers import AutoConfig

    from fgrlhf_ray.rewards.function_scorer import hf_toxicity

    if not os.path.isdir(path):
        raise ConfigError(f"toxicity classifier folder not found: {path} (a local Hugging Face "
                          "sequence-classification model folder is needed)")
    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a Hugging Face model folder ({exc})") from None
    index = toxic_label_index(cfg.id2label or {}, int(cfg.num_labels), where=path)
    return hf_toxicity(path, toxic_label=index, device=device, batch_size=batch_size, max_length=max_length)


# ----------------------------------------------------------------- HTTP client


class RateLimiter:
    """At most `rate` acquisitions per second, spaced evenly, shared by threads.

    Each `acquire` reserves the next free slot (`1/rate` s after the previous one) and
    sleeps until it; no bursts, so a per-second API quota is never exceeded.
    """

    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate is not None and rate <= 0:
            raise ConfigError(f"requests_per_second must be > 0, got {rate}")
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable (scorer actors receive it): a fresh lock where it lands
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


class PerspectiveClient:
    """P(toxic) from a Perspective-API-style server (see the module docstring).

    Args:
        url: base URL (`https://commentanalyzer.googleapis.com`) or the full
            `…/v1alpha1/comments:analyze` URL.
        key_env: environment variable holding the API key (sent as `?key=`).
        attribute: the requested attribute (TOXICITY).
        requests_per_second: client-side rate limit (None: unlimited).
        max_concurrency: requests in flight at once.
        timeout_s, max_retries, backoff_s, max_backoff_s: transport rules.
        transport: an `httpx` transport for tests.
    """

    def __init__(self, *, url: str, key_env: str | None = DEFAULT_KEY_ENV, attribute: str = "TOXICITY",
                 requests_per_second: float | None = None, max_concurrency: int = 4, timeout_s: float = 30.0,
                 max_retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 languages: Sequence[str] = ("en",), transport: httpx.BaseTransport | None = None) -> None:
        base, _ = split_target(url)
        self.endpoint = base if base.endswith("comments:analyze") else f"{base}/{ANALYZE_PATH}"
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ConfigError(f"toxicity client: need max_concurrency >= 1, max_retries >= 0, timeout_s > 0 "
                              f"(got {max_concurrency}, {max_retries}, {timeout_s})")
        self.key_env = key_env
        self.attribute = attribute
        self.languages = list(languages)
        self.limiter = RateLimiter(requests_per_second)
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self._transport = transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self.requests_sent = 0  # attempts, retries included (for stats and tests)

    def __getstate__(self) -> dict:  # picklable: the connection pool is rebuilt where it lands
        state = self.__dict__.copy()
        state.update(_client=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s, transport=self._transport,
                                            limits=httpx.Limits(max_connections=self.max_concurrency))
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)

    def _score_one(self, text: str) -> float:
        key = os.environ.get(self.key_env, "") if self.key_env else ""
        params = {"key": key} if key else {}
        body = {"comment": {"text": text}, "requestedAttributes": {self.attribute: {}},
                "languages": self.languages, "doNotStore": True}
        what = f"toxicity API {self.endpoint}"

        def send(_: int) -> httpx.Response:
            self.limiter.acquire()
            with self._lock:
                self.requests_sent += 1
            return self._http().post(self.endpoint, params=params, json=body)

        def refuse(response: httpx.Response, reason: str) -> ToxicityApiError:
            hint = ""
            if response.status_code in (400, 401, 403) and self.key_env:
                hint = f" (is the API key in ${self.key_env} valid?)" if key else f" (${self.key_env} is not set)"
            return ToxicityApiError(f"{what} → {response.status_code}: {reason}{hint}")

        response = http_request(send, policy=self.retry_policy, what=what, timeout_s=self.timeout_s,
                                refuse=refuse, error=ToxicityApiError)
        return self._parse(response, what)

    def _parse(self, response: httpx.Response, what: str) -> float:
        try:
            value = response.json()["attributeScores"][self.attribute]["summaryScore"]["value"]
            value = float(value)
        except (ValueError, KeyError, TypeError):
            raise ToxicityApiError(f"{what} answered without attributeScores.{self.attribute}.summaryScore.value: "
                                   f"{response.text[:200]!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ToxicityApiError(f"{what} returned toxicity {value}, outside [0, 1]")
        return value

    def __call__(self, texts: list[str]) -> list[float]:
        """P(toxic) per text, in order. Empty texts are not sent (the API rejects them): P = 0."""
        out = [0.0] * len(texts)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        if not todo:
            return out
        with ThreadPoolExecutor(min(self.max_concurrency, len(todo)), thread_name_prefix="toxicity") as pool:
            for i, p in zip(todo, pool.map(self._score_one, [texts[i] for i in todo])):
                out[i] = p
        return out


# ----------------------------------------------------------------- scorer from config


def api_key_env(config: Any) -> str:
    """The environment variable holding the API key of a `kind: toxicity` scorer with a `target`.

    The API key is not the bearer token of `fgrlhf serve`: unless the config names another
    variable than that default, read PERSPECTIVE_API_KEY, so a serve token never goes to a
    third party. (Compared by value, not `model_fields_set`: scorer actors receive the
    config as a full dump, where every field counts as set.)
    """
    serve_default = type(config).model_fields["token_env"].default
    return config.token_env if config.token_env != serve_default else DEFAULT_KEY_ENV


def toxicity_function(config: Any) -> Callable[[list[str]], list[float]]:
    """The P(texts) a `kind: toxicity` reward-model config describes (path → HF, target → HTTP)."""
    if config.path:
        return hf_toxicity_classifier(config.path, batch_size=config.batch_size)
    return PerspectiveClient(url=config.target, key_env=api_key_env(config), requests_per_second=config.requests_per_second,
                             max_concurrency=config.max_concurrency, timeout_s=config.timeout_s,
                             max_retries=config.max_retries)


def build_toxicity_scorer(config: Any):
    """`DetoxScorer` for a `kind: toxicity` config: density sequence → 1 − P(y), sentence → −ΔP."""
    from fgrlhf_ray.rewards.function_scorer import DetoxScorer

    mode = "fine_grained" if config.density == "sentence" else "holistic"
    return DetoxScorer(toxicity=toxicity_function(config), mode=mode, batched=True, name=config.name)


# ----------------------------------------------------------------- tiny local classifier


def build_tiny_toxicity_classifier(out_dir: str | os.PathLike, *, seed: int = 0) -> str:
    """A tiny random BERT sequence classifier with labels non_toxic / toxic (tests, smoke
    runs; nothing downloaded). Its P(toxic) is arbitrary but deterministic."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from fgrlhf_ray.rewards.tiny import build_tiny_bert

    out = build_tiny_bert(out_dir, seed=seed)
    cfg = BertConfig.from_pretrained(str(out))
    cfg.num_labels = 2
    cfg.id2label, cfg.label2id = {0: "non_toxic", 1: "toxic"}, {"non_toxic": 0, "toxic": 1}
    cfg.initializer_range = 0.5  # large random weights: P(toxic) then varies visibly between texts
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(str(out), safe_serialization=True)
    return str(out)
