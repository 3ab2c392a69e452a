"""Backoff between retries of an HTTP call, shared by every client we ship
(http scorer, toxicity API client, minimal-edit editor client)."""

from __future__ import annotations

import random

import httpx


def retry_delay(attempt: int, response: httpx.Response | None, *, backoff_s: float, max_backoff_s: float) -> float:
    """Seconds to wait before retry `attempt + 1` (attempt counts from 0).

    A server's `Retry-After` (seconds) wins, capped at `max_backoff_s`; otherwise exponential
    backoff `backoff_s · 2^attempt`, capped, with jitter in [0.5, 1]× so that many clients
    retrying a recovering server do not arrive in lockstep.
    """
    retry_after = response.headers.get("retry-after") if response is not None else None
    if retry_after is not None:
        try:
            return min(max_backoff_s, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date or junk: fall back to our own backoff
    return min(max_backoff_s, backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
