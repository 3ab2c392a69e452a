"""The service contract the PPO controller is written against, and the in-process runtime.

Services (`RolloutService`, `ScorerService`, `ReferenceService`, `LearnerService`) return
*handles*; a `Runtime` puts objects and resolves handles. With Ray a handle is an
ObjectRef and the runtime is `fgrlhf_ray.launch.runtime.RayRuntime`; in unit tests a
handle is the value itself and `InProcessRuntime` is the identity. No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fgrlhf_ray.infra.reliability import ActorDied, ParticipantFailed
from fgrlhf_ray.types import RolloutBatch

Handle = Any  # an ObjectRef under Ray, the value itself in-process


class Runtime(Protocol):
    def put(self, value: Any) -> Handle: ...

    def resolve(self, handles: dict[str, Handle], *, timeout: float) -> tuple[dict[str, Any], dict[str, float]]:
        """Values for every handle, and seconds until each was ready (measured from the call).

        Raises `ParticipantFailed` naming the handles that failed (or are still pending
        at the timeout)."""
        ...

    def failure_kind(self, exc: BaseException) -> str | None:
        """"died" (an actor process died), "timeout", or None (not an infrastructure fault: a bug)."""
        ...


class PhaseFailed(RuntimeError):
    """A step had to be abandoned: a learner rank failed, or retries were exhausted.

    `participant` names what failed, `learner` says whether it was the learner (whose
    state only a checkpoint can restore)."""

    def __init__(self, message: str, *, participant: str, learner: bool) -> None:
        super().__init__(message)
        self.participant, self.learner = participant, learner


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff: before retry k (0-based) wait
    `min(backoff_s · 2^k, max_backoff_s)` seconds; give up after `retries` retries."""

    retries: int = 2
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * (2.0 ** attempt), self.max_backoff_s)

    def should_retry(self, attempt: int) -> bool:
        """Whether a failure of attempt `attempt` (0 = the first try) is retried."""
        return attempt < self.retries


# Handle names that belong to the learner (not restartable mid-run) and to the engines.
LEARNER_PARTICIPANTS = frozenset({"values", "learn", "learner"})
ROLLOUT_PARTICIPANTS = frozenset({"generate", "sync", "engine"})


class RolloutService(Protocol):
    def generate(self, prompts: list[str], *, n: int, sampling: dict, seed: int) -> RolloutBatch: ...

    def sync_weights(self, weights: Handle) -> Handle: ...

    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> Handle:
        """-> list[list[float]]: each engine's logprobs of `response_ids` after `prompt_ids`."""
        ...


class ScorerService(Protocol):
    name: str

    def score(self, rollout: Handle, num_samples: int) -> Handle:  # -> list[SegmentRewards], one per sample
        ...


class ReferenceService(Protocol):
    def logprobs(self, rollout: Handle) -> Handle:  # -> (B, T) tensor
        ...


class LearnerService(Protocol):
    def logprobs_and_values(self, rollout: Handle) -> Handle:  # -> ((B, T), (B, T))
        ...

    def train(self, experience: Handle) -> Handle:  # -> stats dict
        ...

    def weights(self) -> Handle:  # -> whatever RolloutService.sync_weights accepts
        ...

    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> Handle: ...

    def save_checkpoint(self, directory: str) -> Handle: ...


class InProcessRuntime:
    """Handles are plain values: for unit tests with in-process fakes."""

    def put(self, value: Any) -> Any:
        return value

    def resolve(self, handles: dict[str, Any], *, timeout: float) -> tuple[dict[str, Any], dict[str, float]]:
        failed = [name for name, h in handles.items() if isinstance(h, BaseException)]
        if failed:  # fakes return an exception instance as the "handle" of a failed call
            cause = handles[failed[0]]
            raise ParticipantFailed(failed, self.failure_kind(cause) or "error", cause)
        return dict(handles), {name: 0.0 for name in handles}

    def failure_kind(self, exc: BaseException) -> str | None:
        if isinstance(exc, ParticipantFailed):
            return exc.kind if exc.kind != "error" else None
        if isinstance(exc, ActorDied):
            return "died"
        if isinstance(exc, TimeoutError):
            return "timeout"
        return None


