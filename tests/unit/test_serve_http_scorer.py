"""`HttpScorer` transport logic against an in-memory server (`httpx.MockTransport`):
retries with backoff, no retry on 4xx, timeouts, bounded concurrency, chunking, auth.
(Equality with in-process scores over real HTTP is in tests/integration/test_serve_app.py.)"""

from __future__ import annotations

import json
import pickle
import threading
import time

import httpx
import pytest

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards.http_scorer import HttpScorer, HttpScorerError, split_target


class FakeServer:
    """Speaks /v1/models and /v1/score for one sequence model scoring len(response)."""

    def __init__(self, *, max_items=4, fail_first=0, fail_status=503, delay_s=0.0, density="sequence",
                 retry_after=None, score_status=200, timeout_first=0):
        self.max_items = max_items
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.timeout_first = timeout_first
        self.delay_s = delay_s
        self.density = density
        self.retry_after = retry_after
        self.score_status = score_status
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.score_calls: list[dict] = []
        self.attempts = 0
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        if request.url.path.endswith("/v1/models"):
            return httpx.Response(200, json={
                "app": "fake", "auth_required": False, "tokenizer": None,
                "limits": {"max_items": self.max_items, "max_body_bytes": 10**6, "max_chars": 1000, "max_token_offsets": 10},
                "models": [{"name": "completeness", "kind": "function", "density": self.density, "weight": 0.3,
                            "normalization": {"mean": 0.5, "std": 2.0}, "max_batch_size": 4,
                            "replicas": {"num_replicas": 1}}],
            })
        assert request.url.path.endswith("/v1/score")
        with self.lock:
            self.attempts += 1
            attempt = self.attempts
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            if attempt <= self.timeout_first:
                raise httpx.ReadTimeout("simulated timeout", request=request)
            if attempt <= self.fail_first:
                headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
                return httpx.Response(self.fail_status, json={"error": "x", "reason": f"failure {attempt}"},
                                      headers=headers)
            if self.score_status != 200:
                return httpx.Response(self.score_status, json={"error": "validation_error",
                                                               "reason": "items.0.prompt: bad"})
            body = json.loads(request.content)
            with self.lock:
                self.score_calls.append(body)
            assert len(body["items"]) <= self.max_items
            results = [{"index": i, "scores": {body["models"][0]: {
                "density": "sequence", "raw_total": float(len(it["response"])),
                "segments": [{"char_start": 0, "char_end": len(it["response"]), "label": None,
                              "value": float(len(it["response"])), "probability": None}]}}}
                for i, it in enumerate(body["items"])]
            return httpx.Response(200, json={"models": body["models"], "results": results})
        finally:
            with self.lock:
                self.in_flight -= 1


def scorer(server: FakeServer, **kwargs) -> HttpScorer:
    options = dict(name="completeness", url="http://rm.test:8000", density="sequence", backoff_s=0.01,
                   max_backoff_s=0.05, transport=httpx.MockTransport(server))
    return HttpScorer(**{**options, **kwargs})


PROMPTS = [f"q{i}" for i in range(10)]
RESPONSES = ["x" * (i + 1) for i in range(10)]


def test_scores_in_order_chunked_by_server_limit():
    server = FakeServer(max_items=4)
    out = scorer(server).score(PROMPTS, RESPONSES)
    assert [v.segments[0].value for v in out] == [float(i + 1) for i in range(10)]
    assert all(v.model_name == "completeness" and v.density == "sequence" for v in out)
    assert sorted(len(c["items"]) for c in server.score_calls) == [2, 4, 4]
    assert all(c["models"] == ["completeness"] for c in server.score_calls)


def test_normalization_and_model_from_url_fragment():
    server = FakeServer()
    s = scorer(server, name="c3", url="http://rm.test:8000/prefix/#completeness")
    assert s.url == "http://rm.test:8000/prefix" and s.model == "completeness"
    assert s.normalization == (0.5, 2.0)
    assert s.score(["q"], ["abc"])[0].model_name == "c3"


def test_retries_5xx_with_backoff_then_succeeds():
    server = FakeServer(fail_first=2)
    out = scorer(server, max_retries=3).score(["q"], ["abcd"])
    assert out[0].segments[0].value == 4.0 and server.attempts == 3


def test_gives_up_after_max_retries():
    server = FakeServer(fail_first=100)
    with pytest.raises(HttpScorerError, match=r"failed after 3 attempt\(s\): 503: failure 3"):
        scorer(server, max_retries=2).score(["q"], ["abcd"])
    assert server.attempts == 3


def test_retry_after_header_is_honoured():
    server = FakeServer(fail_first=1, fail_status=429, retry_after=0.3)
    start = time.monotonic()
    scorer(server, max_retries=1, max_backoff_s=1.0).score(["q"], ["ab"])
    assert time.monotonic() - start >= 0.3 and server.attempts == 2


def test_timeouts_are_retried():
    server = FakeServer(timeout_first=1)
    assert scorer(server, max_retries=1).score(["q"], ["ab"])[0].segments[0].value == 2.0
    always = FakeServer(timeout_first=100)
    with pytest.raises(HttpScorerError, match="timed out"):
        scorer(always, max_retries=1).score(["q"], ["ab"])


def test_4xx_is_not_retried_and_reason_is_shown():
    server = FakeServer(score_status=422)
    with pytest.raises(HttpScorerError, match=r"422: items.0.prompt: bad"):
        scorer(server, max_retries=5).score(["q"], ["ab"])
    assert server.attempts == 1
    unauthorized = FakeServer(score_status=401)
    with pytest.raises(HttpScorerError, match=r"401: .*MY_TOKEN"):
        scorer(unauthorized, token_env="MY_TOKEN").score(["q"], ["ab"])


def test_concurrency_is_bounded():
    server = FakeServer(max_items=1, delay_s=0.05)
    scorer(server, max_concurrency=3).score(PROMPTS, RESPONSES)
    assert server.max_in_flight == 3  # reached, never exceeded
    serial = FakeServer(max_items=1, delay_s=0.02)
    scorer(serial, max_concurrency=1).score(PROMPTS[:4], RESPONSES[:4])
    assert serial.max_in_flight == 1


def test_empty_items_are_not_sent():
    server = FakeServer()
    out = scorer(server).score(["q", "q", ""], ["ab", "", "cd"])
    assert out[0].segments[0].value == 2.0
    assert out[1].segments == [] and "empty" in out[1].extra["skipped"]
    assert out[2].segments == []
    assert [it["response"] for c in server.score_calls for it in c["items"]] == ["ab"]


def test_bearer_token_from_environment(monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    server = FakeServer()
    scorer(server, token_env="MY_TOKEN").score(["q"], ["ab"])
    assert all(h.get("authorization") == "Bearer s3cret" for h in server.headers)
    bare = FakeServer()
    scorer(bare, token_env=None).score(["q"], ["ab"])
    assert all("authorization" not in h for h in bare.headers)


def test_wrong_density_or_model_is_a_config_error():
    with pytest.raises(ConfigError, match="density 'token' but .* density 'sequence'"):
        scorer(FakeServer(), density="token").score(["q"], ["ab"])
    with pytest.raises(ConfigError, match="serves no model 'relevance'"):
        scorer(FakeServer(), name="relevance").score(["q"], ["ab"])


def test_connection_refused_is_retried_then_reported():
    s = HttpScorer(name="c", url="http://127.0.0.1:9", density="sequence", max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(HttpScorerError, match=r"failed after 2 attempt\(s\): ConnectError"):
        s.score(["q"], ["ab"])


def test_picklable_and_bad_arguments():
    s = scorer(FakeServer(), transport=None)
    clone = pickle.loads(pickle.dumps(s))
    assert clone.url == s.url and clone._client is None
    with pytest.raises(ConfigError, match="not an http"):
        split_target("ftp://host")
    with pytest.raises(ConfigError, match="max_concurrency >= 1"):
        HttpScorer(name="c", url="http://h", density="sequence", max_concurrency=0)
