"""The one retry loop of every client we ship, and its HTTP form.

`with_retries` runs an attempt until it succeeds, raises something final, or has failed
`max_retries + 1` times; between attempts it waits `RetryPolicy.delay` (exponential
backoff, capped, jittered, a server's `Retry-After` honoured). An attempt says "try
again" by raising `Retryable`. Its users:

- `http_request` (the retrying HTTP call): the http scorer, the toxicity API client and
  the minimal-edit editor client. Timeouts, connection errors and `RETRY_STATUSES`
  answers are retried; any other 4xx is handed to the caller's `refuse`, which builds
  the caller's own error (a hint about a token, a row-level failure ...);
- the Serve-handle scorer, whose attempts are `DeploymentHandle` calls, not HTTP.

`error_reason` is the one formatter of "what went wrong" for all of them: the text of an
error reply (`{"reason"}`, `{"detail"}`, `{"error": {"message"}}` …) or of an exception.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

T = TypeVar("T")

# Answers worth trying again: request timeout, too many requests, server-side failures.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def retry_delay(attempt: int, response: httpx.Response | None, *, backoff_s: float, max_backoff_s: float,
                jitter: bool = True) -> float:
    """Seconds to wait before retry `attempt + 1` (attempt counts from 0).

    A server's `Retry-After` (seconds) wins, capped at `max_backoff_s`; otherwise exponential
    backoff `backoff_s · 2^attempt`, capped, with jitter in [0.5, 1]× so that many clients
    retrying a recovering server do not arrive in lockstep (`jitter=False`: exactly that).
    """
    retry_after = response.headers.get("retry-after") if response is not None else None
    if retry_after is not None:
        try:
            return min(max_backoff_s, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date or junk: fall back to our own backoff
    delay = min(max_backoff_s, backoff_s * 2**attempt)
    return delay * random.uniform(0.5, 1.0) if jitter else delay


@dataclass(frozen=True)
class RetryPolicy:
    """How often a client tries again and how long it waits in between (see `retry_delay`).

    Fields:
        max_retries: retries after the first attempt (so `max_retries + 1` attempts in all).
        backoff_s: the first wait; doubled each retry.
        max_backoff_s: cap on any wait, `Retry-After` included.
        jitter: scale each wait by a random factor in [0.5, 1].
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    jitter: bool = True

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        return retry_delay(attempt, response, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s,
                           jitter=self.jitter)


class Retryable(Exception):
    """Raised by an attempt that may succeed if tried again.

    `reason` ends up in the final error's message; `response` (an HTTP reply) lets a
    server's `Retry-After` set the wait.
    """

    def __init__(self, reason: str, response: httpx.Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


def with_retries(attempt: Callable[[int], T], *, policy: RetryPolicy, what: str,
                 error: Callable[[str], Exception], hint: str = "") -> T:
    """`attempt(k)` for k = 0, 1, …, until it returns; a `Retryable` waits and tries again.

    Anything else `attempt` raises propagates at once. After `policy.max_retries + 1`
    failed attempts raises `error(f"{what} failed after N attempt(s): {reason}{hint}")`,
    chained to the last attempt's cause.
    """
    last: Retryable | None = None
    for k in range(policy.max_retries + 1):
        try:
            return attempt(k)
        except Retryable as exc:
            last = exc
        if k < policy.max_retries:
            time.sleep(policy.delay(k, last.response))
    raise error(f"{what} failed after {policy.max_retries + 1} attempt(s): {last.reason}{hint}") from last.__cause__


def error_reason(failure: httpx.Response | BaseException) -> str:
    """What went wrong, in one line: the text of an error reply, or of an exception.

    A reply: its JSON body's `error.message` (Perspective, OpenAI-compatible servers), else
    `reason` (`fgrlhf serve`, whose `error` is a code) / `message` / `detail` / `error`, else
    the body (first 500 characters), else its text or status phrase. An exception (or the `cause`
    a Ray error wraps): `Type: last line of its message`.
    """
    if isinstance(failure, BaseException):
        cause = getattr(failure, "cause", None) or failure
        text = str(cause).strip()
        return f"{type(cause).__name__}: {text.splitlines()[-1]}" if text else type(cause).__name__
    try:
        body = failure.json()
    except ValueError:
        return failure.text[:300] or failure.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(body.get("reason") or body.get("message") or body.get("detail") or err or body)[:500]
    return str(body)[:500]


def bearer_headers(env_var: str | None) -> dict[str, str]:
    """`{"Authorization": "Bearer <token>"}` from the environment variable, or {} if unset/empty."""
    token = os.environ.get(env_var, "") if env_var else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def http_request(send: Callable[[int], httpx.Response], *, policy: RetryPolicy, what: str, timeout_s: float,
                 refuse: Callable[[httpx.Response, str], Exception], error: Callable[[str], Exception],
                 timeout_hint: str = "", hint: str = "") -> httpx.Response:
    """The retrying HTTP call: `send(attempt)` until it gets an answer below 400.

    Retried (see `with_retries`): timeouts ("timed out after {timeout_s} s{timeout_hint}"),
    connection errors, and `RETRY_STATUSES` answers ("503: reason"). Any other 4xx/5xx
    raises `refuse(response, reason)` at once. `send` does the request (and whatever each
    attempt needs first: a rate limiter, a counter).
    """

    def attempt(k: int) -> httpx.Response:
        try:
            response = send(k)
        except httpx.TimeoutException:
            raise Retryable(f"timed out after {timeout_s:g} s{timeout_hint}") from None
        except httpx.TransportError as exc:
            raise Retryable(error_reason(exc)) from None
        if response.status_code < 400:
            return response
        reason = error_reason(response)
        if response.status_code in RETRY_STATUSES:
            raise Retryable(f"{response.status_code}: {reason}", response)
        raise refuse(response, reason)

    return with_retries(attempt, policy=policy, what=what, error=error, hint=hint)


def json_body(response: httpx.Response, *, what: str, error: Callable[[str], Exception]):
    """The reply's JSON, or `error(...)` naming the status and the start of the body."""
    try:
        return response.json()
    except ValueError:
        raise error(f"{what} answered {response.status_code} with a non-JSON body: {response.text[:200]!r}") from None
