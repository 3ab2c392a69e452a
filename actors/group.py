"""What every actor group shares: fan one call out, join the results into one handle.

The service contract (`fgrlhf_ray.control.services`): every call that runs remotely
returns a handle — here one ObjectRef — and the caller decides when to wait. A group
with several actors (vLLM engines, learner ranks, scorer replicas) therefore calls all
of them (`ActorGroup.call`) and joins their ObjectRefs with a zero-CPU task
(`join(refs, combine)`), so the driver never holds the per-actor parts. Callers outside
the PPO loop (tests, `fgrlhf eval`, benchmarks) wait with `collect`, which bounds the
wait and says what timed out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ray


@ray.remote(num_cpus=0)
def _join(combine: Callable[[list], Any], *parts: Any) -> Any:
    return combine(list(parts))


def join(refs: Sequence[Any], combine: Callable[[list], Any]) -> Any:
    """One ObjectRef of `combine([result of each ref])`, resolved once all refs are ready.

    A failed part makes the joined ref fail with the part's error (Ray propagates the
    error of a task argument), so fault classification sees the real cause."""
    return _join.remote(combine, *refs)


def first(parts: list) -> Any:
    """Rank 0's result; the others only took part (e.g. in a ZeRO-3 gather)."""
    return parts[0]


def concat_lists(parts: list[list]) -> list:
    return [item for part in parts for item in part]


def collect(handle: Any, *, timeout_s: float | None, what: str) -> Any:
    """Wait for one handle (or a list of them): `ray.get` whose timeout names the call."""
    try:
        return ray.get(handle, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"{what} did not finish within {timeout_s:.0f} s. An actor may be stuck or too slow: check "
            "its log (ray logs / dashboard), or raise the timeout."
        ) from None


class ActorGroup:
    """Actors of one role, each replaceable by its spawner after a fault.

    Subclasses fill `self.actors` and `self._spawners` (callables → a new actor handle
    with the same options and bundle) and add their role's calls on top of `call`."""

    role = "actor"
    actors: list
    _spawners: list

    def call(self, method: str, *args: Any, **kwargs: Any) -> list:
        """`actor.method.remote(*args, **kwargs)` on every actor; their ObjectRefs in order."""
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def health(self) -> list:
        """ObjectRefs of each actor's `health()` (pid, memory, restarts)."""
        return self.call("health")

    def recover(self, kind: str, *, timeout_s: float = 300.0) -> str:
        """Make every actor usable again after a fault; returns what was done.

        An actor Ray is restarting is waited for; one that is dead for good (restarts
        exhausted, or killed) is replaced by its spawner; after a timeout the actors are
        killed first so Ray restarts them (a hung call cannot be cancelled)."""
        from fgrlhf_ray.infra.reliability import ensure_actor

        done = []
        for i, actor in enumerate(self.actors):
            if kind == "timeout":
                ray.kill(actor, no_restart=False)
            self.actors[i], what = ensure_actor(actor, self._spawners[i], timeout_s=timeout_s)
            done.append(f"{self.role} {i} {what}")
        return ", ".join(done)
