"""Backoff shared by the http scorer, the toxicity API client and the editor client."""

from __future__ import annotations

import httpx
import pytest

from fgrlhf_ray.infra.http import retry_delay


def response(headers: dict) -> httpx.Response:
    return httpx.Response(503, headers=headers)


@pytest.mark.parametrize("attempt", [0, 1, 2, 5])
def test_exponential_with_jitter_and_cap(attempt):
    for _ in range(50):
        delay = retry_delay(attempt, None, backoff_s=0.5, max_backoff_s=3.0)
        full = min(3.0, 0.5 * 2**attempt)
        assert 0.5 * full <= delay <= full


def test_retry_after_seconds_wins_and_is_capped():
    assert retry_delay(0, response({"Retry-After": "2"}), backoff_s=0.1, max_backoff_s=10.0) == 2.0
    assert retry_delay(0, response({"Retry-After": "120"}), backoff_s=0.1, max_backoff_s=10.0) == 10.0
    assert retry_delay(0, response({"Retry-After": "-3"}), backoff_s=0.1, max_backoff_s=10.0) == 0.0


def test_unparseable_retry_after_falls_back_to_backoff():
    delay = retry_delay(1, response({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), backoff_s=1.0,
                        max_backoff_s=10.0)
    assert 1.0 <= delay <= 2.0


# ----------------------------------------------------------------- the one retry loop

from fgrlhf_ray.errors import FgrlhfError  # noqa: E402
from fgrlhf_ray.infra.http import (  # noqa: E402
    RetryPolicy, Retryable, error_reason, http_request, json_body, with_retries,
)


class Failed(FgrlhfError):
    pass


@pytest.fixture
def no_sleep(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("fgrlhf_ray.infra.http.time.sleep", waits.append)
    return waits


def test_with_retries_retries_only_retryable_and_reports_the_last_reason(no_sleep):
    calls = []

    def attempt(k):
        calls.append(k)
        if k < 2:
            raise Retryable(f"flaky {k}")
        return "ok"

    policy = RetryPolicy(max_retries=2, backoff_s=1.0, max_backoff_s=10.0, jitter=False)
    assert with_retries(attempt, policy=policy, what="x", error=Failed) == "ok"
    assert calls == [0, 1, 2] and no_sleep == [1.0, 2.0]
    with pytest.raises(Failed, match=r"^x failed after 3 attempt\(s\): flaky 1!$"):
        with_retries(lambda k: (_ for _ in ()).throw(Retryable("flaky 1")), policy=policy, what="x", error=Failed,
                     hint="!")
    with pytest.raises(KeyError):  # not Retryable: at once, no wait
        with_retries(lambda k: {}["nope"], policy=policy, what="x", error=Failed)


def test_error_reason_of_replies_and_exceptions():
    assert error_reason(httpx.Response(422, json={"reason": "items.0.prompt: bad"})) == "items.0.prompt: bad"
    assert error_reason(httpx.Response(404, json={"detail": "no model"})) == "no model"
    assert error_reason(httpx.Response(403, json={"error": {"message": "API key not valid"}})) == "API key not valid"
    assert error_reason(httpx.Response(422, json={"error": "validation_error", "reason": "bad"})) == "bad"
    assert error_reason(httpx.Response(400, json={"error": "bad"})) == "bad"
    assert error_reason(httpx.Response(500, text="boom")) == "boom"
    assert error_reason(httpx.Response(502)) == "Bad Gateway"
    assert error_reason(httpx.ConnectError("refused")) == "ConnectError: refused"

    class Wrapped(Exception):  # a Ray error carries the real one as `cause`
        cause = ValueError("traceback line\nmodel failed")

    assert error_reason(Wrapped("x")) == "ValueError: model failed"
    assert error_reason(RuntimeError()) == "RuntimeError"


def test_http_request_retries_statuses_and_refuses_others(no_sleep):
    replies = iter([httpx.Response(503, json={"reason": "busy"}, headers={"Retry-After": "3"}),
                    httpx.Response(200, json={"ok": 1})])
    policy = RetryPolicy(max_retries=2, backoff_s=0.1)
    got = http_request(lambda k: next(replies), policy=policy, what="GET u", timeout_s=1, refuse=None, error=Failed)
    assert json_body(got, what="GET u", error=Failed) == {"ok": 1} and no_sleep == [3.0]

    def refuse(response, reason):
        return Failed(f"refused {response.status_code}: {reason}")

    with pytest.raises(Failed, match="refused 401: nope"):
        http_request(lambda k: httpx.Response(401, json={"detail": "nope"}), policy=policy, what="GET u",
                     timeout_s=1, refuse=refuse, error=Failed)

    def timeout(k):
        raise httpx.ReadTimeout("slow")

    with pytest.raises(Failed, match=r"GET u failed after 3 attempt\(s\): timed out after 1.5 s \(t\)$"):
        http_request(timeout, policy=policy, what="GET u", timeout_s=1.5, timeout_hint=" (t)", refuse=refuse,
                     error=Failed)
    with pytest.raises(Failed, match="answered 200 with a non-JSON body: 'hi'"):
        json_body(httpx.Response(200, text="hi"), what="GET u", error=Failed)
