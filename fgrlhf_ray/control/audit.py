"""The audit judge: score a sample of rollouts with a trusted scorer, off the critical path.

Every `audit.every`-th step the controller hands the step's rollout (its object-store handle)
and a seeded sample of its indices to a `JudgeService` (with Ray: one `AuditActor`, see
`fgrlhf_ray/actors/audit.py`) and goes on with the step; at the end of the step, and of each
later one, it collects whatever the judge has finished, so a result may arrive a step late.
One audit is in flight at a time: a step that comes while the judge is still busy is not
audited (`audit/skipped`), so a slow judge never holds up training. The judge's verdicts
only feed the `audit/<rm>/...` metrics (`fgrlhf_ray.rewards.diagnostics.agreement`) and
`<logging.dir>/audit.jsonl`; they never enter the reward.

No Ray here: the service hides it (in-process fakes in the unit tests).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fgrlhf_ray.rewards.diagnostics import agreement
from fgrlhf_ray.types import RolloutBatch, SegmentRewards

log = logging.getLogger(__name__)

Handle = Any


class JudgeService(Protocol):
    def judge(self, rollout: Handle, indices: list[int]) -> Handle:
        """Start scoring samples `indices` of `rollout`; -> a handle of (verdicts, judge seconds)."""
        ...

    def done(self, handle: Handle) -> bool:
        """Whether the result is ready (never blocks)."""
        ...

    def result(self, handle: Handle, *, timeout: float) -> tuple[list[SegmentRewards], float]: ...


def sample_indices(num_samples: int, *, rate: float, min_samples: int, seed: int) -> list[int]:
    """A seeded sample of round(rate · B) indices (at least `min_samples`, at most B), sorted."""
    k = min(num_samples, max(min_samples, round(rate * num_samples)))
    return sorted(random.Random(seed).sample(range(num_samples), k))


def judge_rollout(scorer, rollout: RolloutBatch, indices: Sequence[int]) -> tuple[list[SegmentRewards], float]:
    """The judge's verdicts on samples `indices` of `rollout`, and the seconds it took."""
    t0 = time.perf_counter()
    verdicts = scorer.score([rollout.prompts[i] for i in indices], [rollout.responses[i] for i in indices])
    return list(verdicts), time.perf_counter() - t0


@dataclass
class _Pending:
    step: int
    indices: list[int]
    verdicts: dict[str, list[SegmentRewards]]  # each RM's verdicts on the sampled responses
    samples: list[dict]  # prompt / response of each sampled index (for audit.jsonl), or []
    handle: Handle
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Auditor:
    """Submits audits and turns finished ones into metrics and `audit.jsonl` records.

    `config` is the run's `AuditConfig`; `judge` the service running the judge.
    """

    config: Any  # fgrlhf_ray.config.AuditConfig
    judge: JudgeService
    seed: int = 0

    def __post_init__(self) -> None:
        self._pending: _Pending | None = None
        self.failures = 0

    def submit(self, step: int, rollout_handle: Handle, rollout: RolloutBatch,
               verdicts: Mapping[str, Sequence[SegmentRewards]]) -> dict[str, float]:
        """Start the audit of `step` if it is due and the judge is free; -> `audit/submitted|skipped`."""
        if step % self.config.every:
            return {}
        if self._pending is not None:
            return {"audit/skipped": 1.0}
        indices = sample_indices(len(rollout), rate=self.config.sample_rate, min_samples=self.config.min_samples,
                                 seed=self.seed * 1_000_003 + step)
        samples = ([{"index": i, "prompt": rollout.prompts[i], "response": rollout.responses[i]} for i in indices]
                   if self.config.record_responses else [])
        try:
            handle = self.judge.judge(rollout_handle, indices)
        except Exception as exc:  # noqa: BLE001 - the audit is a side channel: never stop training for it
            self._failed(step, exc)
            return {"audit/failures": float(self.failures)}
        self._pending = _Pending(step, indices, {name: [v[i] for i in indices] for name, v in verdicts.items()},
                                 samples, handle)
        return {"audit/submitted": 1.0}

    def collect(self, step: int, *, wait: bool = False) -> tuple[dict[str, float], list[dict]]:
        """Metrics and records of a finished audit (`wait`: block up to `flush_timeout_s` for it).

        Metrics: `audit/<rm>/<agreement stat>`, `audit/step` (the audited step), `audit/lag_steps`,
        `audit/samples`, `audit/judge_s` (the judge's own time), `audit/latency_s` (submit → collect).
        """
        pending = self._pending
        if pending is None or (not wait and not self.judge.done(pending.handle)):
            return {}, []
        self._pending = None
        try:
            judged, judge_s = self.judge.result(pending.handle, timeout=self.config.flush_timeout_s)
        except Exception as exc:  # noqa: BLE001 - see submit
            self._failed(pending.step, exc)
            return {"audit/failures": float(self.failures)}, []
        if len(judged) != len(pending.indices):
            self._failed(pending.step, ValueError(f"the judge returned {len(judged)} verdicts for "
                                                  f"{len(pending.indices)} samples"))
            return {"audit/failures": float(self.failures)}, []
        metrics = {"audit/step": float(pending.step), "audit/lag_steps": float(step - pending.step),
                   "audit/samples": float(len(pending.indices)), "audit/judge_s": judge_s,
                   "audit/latency_s": time.perf_counter() - pending.submitted}
        per_rm = {name: agreement(v, judged) for name, v in pending.verdicts.items()}
        for name, stats in per_rm.items():
            metrics.update({f"audit/{name}/{k}": v for k, v in stats.items()})
        record = {"step": pending.step, "collected_at_step": step, "indices": pending.indices, "judge_s": judge_s,
                  "agreement": per_rm}
        if pending.samples:
            for k, sample in enumerate(pending.samples):
                sample["judge_total"] = judged[k].total
                sample["rm_totals"] = {name: v[k].total for name, v in pending.verdicts.items()}
            record["samples"] = pending.samples
        return metrics, [record]

    def _failed(self, step: int, exc: BaseException) -> None:
        self.failures += 1
        log.warning("audit of step %d failed (%s: %s); training continues without it", step, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
