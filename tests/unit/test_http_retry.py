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
