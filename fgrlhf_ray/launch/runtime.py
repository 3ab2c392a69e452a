"""`RayRuntime`: the controller's `Runtime` under Ray (handles are ObjectRefs)."""

from __future__ import annotations

import time
from typing import Any

from fgrlhf_ray.infra.reliability import ParticipantFailed, failure_kind


class RayRuntime:
    """Handles are ObjectRefs: `put` is `ray.put`; `resolve` waits for a whole phase.

    `resolve` sweeps `ray.wait` until every ref of the phase is ready, recording when
    each finished (so parallel participants get their own timing), then fetches all
    values with a single `ray.get`. Plain values pass through as ready at 0 s. A
    participant that failed (or is still pending at the timeout) raises
    `ParticipantFailed` naming it, after the others have finished, so the controller
    can relaunch only that one.
    """

    def __init__(self) -> None:
        import ray

        self.ray = ray

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def resolve(self, handles: dict[str, Any], *, timeout: float) -> tuple[dict[str, Any], dict[str, float]]:
        ray = self.ray
        start = time.perf_counter()
        refs = {name: h for name, h in handles.items() if isinstance(h, ray.ObjectRef)}
        ready_after = {name: 0.0 for name in handles if name not in refs}
        pending = dict(refs)
        by_ref = {ref: name for name, ref in refs.items()}
        while pending:
            remaining = timeout - (time.perf_counter() - start)
            if remaining <= 0:
                raise ParticipantFailed(
                    sorted(pending), "timeout", TimeoutError(f"no result within {timeout:.0f} s"),
                    f"phase did not finish within {timeout:.0f} s (ray.get_timeout_s / ray.phase_timeouts); "
                    f"still waiting for: {', '.join(sorted(pending))}",
                )
            done, _ = ray.wait(list(pending.values()), num_returns=1, timeout=remaining)
            for ref in done:
                name = by_ref[ref]
                ready_after[name] = time.perf_counter() - start
                pending.pop(name)
        fetch_timeout = max(timeout - (time.perf_counter() - start), 1.0)
        try:
            values = dict(zip(refs, ray.get(list(refs.values()), timeout=fetch_timeout)))
        except ray.exceptions.RayError:
            failed, first = [], None
            for name, ref in refs.items():  # all are ready: find which ones failed
                try:
                    ray.get(ref, timeout=fetch_timeout)
                except ray.exceptions.RayError as exc:
                    failed.append(name)
                    first = first or exc
            if not failed:
                raise
            raise ParticipantFailed(failed, failure_kind(first) or "error", first) from first
        values.update({name: h for name, h in handles.items() if name not in refs})
        return values, ready_after

    def failure_kind(self, exc: BaseException) -> str | None:
        return failure_kind(exc)
