"""Fault handling helpers shared by the Ray shells and the trainer.

- `failure_kind(exc)`: is an exception an infrastructure fault the controller may
  recover from ("died": an actor/worker/node went away; "timeout") or anything else
  (None: a bug or bad input — never retried)?
- `actor_health()`: what every actor's `health()` method returns (pid, resident memory,
  whether Ray restarted it).
- `ensure_actor(actor, spawn)`: after a fault, wait for Ray to restart an actor, or
  replace it with `spawn()` if it is dead for good.
- `memory_over_limit(reports, limit_gib)`: which actors use more memory than allowed.

Ray is imported lazily, so the pure parts are testable without a cluster.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class ActorDied(RuntimeError):
    """An actor process died (in-process fakes raise it to simulate a crash)."""


class ParticipantFailed(RuntimeError):
    """Some participants of a phase failed: `names` (handle names), `kind` ("died",
    "timeout" or "error"), `cause` (the first underlying exception)."""

    def __init__(self, names: Sequence[str], kind: str, cause: BaseException | None, message: str = "") -> None:
        self.names, self.kind, self.cause = list(names), kind, cause
        super().__init__(message or f"{', '.join(self.names)}: {kind}: {type(cause).__name__}: {cause}")


class EngineWeightsLost(RuntimeError):
    """A rollout engine no longer holds the synced weights (Ray restarted it between calls)."""


def failure_kind(exc: BaseException) -> str | None:
    """"died", "timeout" or None (not an infrastructure fault).

    A task that failed because an argument came from a dead actor (Ray re-raises the
    dependency's error, possibly wrapped in a `RayTaskError`) counts as "died" too.
    """
    if isinstance(exc, ParticipantFailed):
        return exc.kind if exc.kind in ("died", "timeout") else None
    if isinstance(exc, (ActorDied, EngineWeightsLost)) or isinstance(getattr(exc, "cause", None), EngineWeightsLost):
        return "died"  # (Ray's RayTaskError for a remote EngineWeightsLost is both, or carries it as `cause`)
    try:
        import ray.exceptions as rex
    except ImportError:  # pragma: no cover - ray is a hard dependency of the trainer
        rex = None
    if rex is not None:
        died = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError)
        if isinstance(exc, died):
            return "died"
        if isinstance(exc, rex.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, died):
                return "died"
            return None
    if isinstance(exc, TimeoutError):  # ray's GetTimeoutError is one
        return "timeout"
    return None


def actor_health() -> dict:
    """Called inside an actor: pid, resident set size (bytes), restarted-by-Ray flag."""
    import psutil
    import ray

    restarted = False
    try:
        with warnings.catch_warnings():  # Ray's own property uses a deprecated one internally
            warnings.simplefilter("ignore")
            restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - not inside an actor (tests)
        pass
    return {"pid": os.getpid(), "rss_bytes": psutil.Process().memory_info().rss, "restarted": restarted,
            "node_id": _node_id()}


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        return None


def ensure_actor(actor: Any, spawn: Callable[[], Any], *, timeout_s: float) -> tuple[Any, str]:
    """Return a usable handle for `actor` and what happened to it.

    Calls `actor.health()`: Ray queues the call while it restarts the actor, so an
    answer means it is alive ("alive" or "restarted by Ray"). If Ray reports the actor
    dead for good (restarts exhausted, or killed without restart), a replacement from
    `spawn()` is returned instead. Raises `TimeoutError` if neither answers in time.
    """
    import ray
    import ray.exceptions as rex

    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"actor did not come back within {timeout_s:.0f} s after a fault")
        try:
            health = ray.get(actor.health.remote(), timeout=remaining)
        except rex.ActorUnavailableError:  # restarting, or transiently unreachable: ask again
            time.sleep(min(0.5, max(remaining, 0)))
            continue
        except rex.RayActorError:  # dead for good
            new = spawn()
            health = ray.get(new.health.remote(), timeout=max(deadline - time.monotonic(), 1.0))
            return new, f"was dead for good: recreated (pid {health['pid']})"
        except rex.GetTimeoutError:
            raise TimeoutError(f"actor did not answer within {timeout_s:.0f} s after a fault") from None
        state = "restarted by Ray" if health["restarted"] else "alive"
        return actor, f"{state} (pid {health['pid']})"


def memory_over_limit(reports: Mapping[str, Mapping[str, Any]], limit_gib: float | None) -> dict[str, float]:
    """{actor name: GiB} for every report whose `rss_bytes` exceeds `limit_gib` (None: off)."""
    if limit_gib is None:
        return {}
    return {name: r["rss_bytes"] / 2**30 for name, r in reports.items() if r["rss_bytes"] > limit_gib * 2**30}
