"""The PPO loop, written against interfaces.

One step reads like the algorithm:

    prompts  = next batch of prompts
    rollout  = generate(prompts)                                  # vLLM engines
    verdicts = score(rollout) ‖ reference(rollout) ‖ values(rollout)   # fan out, one wait
    exp      = assemble(rollout, verdicts, ...)                   # pure algo code
    stats    = learn(exp)                                         # DeepSpeed ranks
    sync_weights(); check the probe                               # learner → vLLM

The collaborators (`RolloutService`, `ScorerService`, `ReferenceService`,
`LearnerService`: `fgrlhf_ray.control.services`; under Ray the actor groups of
`fgrlhf_ray.actors` themselves) return *handles* from every call, generation included,
and a `Runtime` resolves handles and puts objects; every phase waits, times out and
retries through the same path (`_resolve_with_retries`).
With Ray a handle is an ObjectRef and the runtime is `RayRuntime` (one `ray.wait`
sweep per phase to time each participant, then one `ray.get`); in unit tests a handle is
the value itself and `InProcessRuntime` is the identity. The controller therefore never
imports Ray, and runs in-process with fakes.

Faults. Every phase waits at most its timeout (`ray.get_timeout_s`, or
`ray.phase_timeouts[phase]`). When a rollout engine, a scorer replica or the reference
actor dies (or times out) mid-step, the controller logs it, waits (`RetryPolicy`:
exponential backoff), asks the service to `recover` (Ray restarts the actor up to
`ray.max_restarts` times; a dead-for-good actor is recreated), re-syncs the engines to
the learner's weights if an engine was involved, and relaunches only the failed part of
the phase — results already computed are kept. After `ray.phase_retries` failed retries,
or when a learner rank fails (its optimizer state cannot be rebuilt mid-run), the step
is abandoned with `PhaseFailed`; the trainer turns that into a message on how to resume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fgrlhf_ray.algo.experience import assemble_experience, pad_rollout
from fgrlhf_ray.algo.kl import AdaptiveKLController, FixedKLController
from fgrlhf_ray.algo.rewards import ScorerOutput, token_char_offsets
from fgrlhf_ray.algo.weighting import RewardSpec, sample_rewards
from fgrlhf_ray.config import RunConfig
from fgrlhf_ray.control.services import (
    LEARNER_PARTICIPANTS, ROLLOUT_PARTICIPANTS, Handle, InProcessRuntime, LearnerService, PhaseFailed,
    ReferenceService, RetryPolicy, RolloutService, Runtime, ScorerService,
)
from fgrlhf_ray.infra.reliability import ParticipantFailed
from fgrlhf_ray.infra.metrics import MetricsLogger
from fgrlhf_ray.data.prompts import PromptSampler
from fgrlhf_ray.rewards.diagnostics import RewardMonitor, batch_diagnostics
from fgrlhf_ray.infra.rng import capture_rng_state, restore_rng_state
from fgrlhf_ray.data.segments import answer_shape
from fgrlhf_ray.types import Experience, RolloutBatch, SegmentRewards
from fgrlhf_ray.weight_sync.probe import ProbeGapError, check_probe_gaps

log = logging.getLogger(__name__)

WeightSyncError = ProbeGapError  # vLLM's logprobs after a weight sync disagree with the learner's


@dataclass
class Generation:
    """One step's batch of prompts on its way through the engines.

    `weights_step`: how many learner updates the engines' weights held when it was launched
    (the step's staleness is the learner's step minus this); `handle`: the running generation
    (None: not launched yet, e.g. after a resume)."""

    prompts: list[str]
    seed: int
    weights_step: int
    handle: Handle = None


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    experience: Experience | None = None


ScorerSpec = RewardSpec  # how a scorer's raw values become rewards (name, w, μ, σ: `algo.weighting`)


@dataclass
class PPOController:
    """Drives PPO steps over the given services. Construct with keyword arguments only."""

    config: RunConfig
    prompts: Sequence[str]
    rollout: RolloutService
    scorers: Sequence[ScorerService]
    scorer_specs: Sequence[ScorerSpec]
    reference: ReferenceService
    learner: LearnerService
    decode: Any  # callable list[int] -> str, the policy tokenizer's decode (for char offsets)
    pad_token_id: int  # the policy tokenizer's pad id (learner and reference pad the same way)
    runtime: Runtime = field(default_factory=InProcessRuntime)
    metrics: MetricsLogger | None = None
    probe: tuple[list[int], list[int]] | None = None  # (prompt_ids, response_ids) checked after each sync
    retry: RetryPolicy | None = None  # None: from config.ray (phase_retries, retry_backoff_s)
    step_hooks: list = field(default_factory=list)  # callables step -> dict, merged into the step's metrics
    # How new weights reach the engines: () -> Handle of a stats dict. None: through the object
    # store, `rollout.sync_weights(learner.weights())`; the trainer passes the bucketed
    # broadcast here for `learner.weight_sync: broadcast`.
    push_weights: Callable[[], Handle] | None = None
    # Warnings about blind / gamed reward models; None: built from config.diagnostics (if enabled).
    monitor: RewardMonitor | None = None
    auditor: Any = None  # fgrlhf_ray.control.audit.Auditor: the audit judge (config.audit), or None
    chaos: Any = None  # test-only fault injection (`fgrlhf_ray.infra.chaos.ChaosMonkey`), or None
    step: int = 0

    def __post_init__(self) -> None:
        ppo = self.config.ppo
        if self.retry is None:
            self.retry = RetryPolicy(retries=self.config.ray.phase_retries, backoff_s=self.config.ray.retry_backoff_s)
        self.fault_events: list[dict] = []  # every fault met and how it was handled (the run's fault log)
        self.injected_faults: list[dict] = []  # faults the chaos harness injected (tests only)
        self._pending: Generation | None = None  # the next step's batch, sampling since the last step
        self._open_faults: list[dict] = []  # faults of the current phase not yet recovered
        self.sampler = PromptSampler(list(self.prompts), seed=self.config.seed, shuffle=self.config.data.shuffle)
        if ppo.kl_controller == "adaptive":
            self.kl_controller = AdaptiveKLController(kl_coef=ppo.kl_coef, target=ppo.kl_target,
                                                     horizon=ppo.kl_horizon)
        else:
            self.kl_controller = FixedKLController(kl_coef=ppo.kl_coef)
        if [s.name for s in self.scorers] != [s.name for s in self.scorer_specs]:
            raise ValueError("scorers and scorer_specs must name the same reward models in the same order")
        if self.monitor is None and self.config.diagnostics.enabled:
            self.monitor = RewardMonitor(config=self.config.diagnostics, names=[s.name for s in self.scorer_specs],
                                         scale={s.name: s.std for s in self.scorer_specs})

    # ------------------------------------------------------------------ the loop

    def run(self, num_steps: int | None = None, *, on_step=None) -> list[StepResult]:
        results = []
        end = self.config.ppo.total_steps if num_steps is None else self.step + num_steps
        while self.step < end:
            result = self.train_step()
            results.append(result)
            if on_step is not None:
                on_step(result)
        return results

    def train_step(self) -> StepResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        faults_before = len(self.fault_events)
        sampler_state = self.sampler.state_dict()
        try:
            return self._train_step(timings, started, faults_before)
        except BaseException:
            # The step is abandoned: put its prompts back so a retry or a resume sees them.
            self.sampler.load_state_dict(sampler_state)
            raise

    def _train_step(self, timings: dict[str, float], started: float, faults_before: int) -> StepResult:
        # This step's batch: launched during the previous step (rollout.async_steps 1), or now.
        generation = self._pending if self._pending is not None else self._draw_generation(launch=False)
        rollout, rollout_handle = self.generate(generation, timings)
        staleness = self.step - generation.weights_step  # learner updates the sampling weights lag behind
        # One step off: the engines sample the next batch (from these weights) while this one is
        # scored and learned from; it is collected before the weight sync, which needs idle engines.
        upcoming = self._draw_generation(launch=True) if self.config.rollout.async_steps else None
        verdicts, ref_logprobs, (old_logprobs, old_values) = self.score_and_evaluate(
            rollout_handle, len(rollout), timings)
        diagnostics = self.diagnose(rollout, verdicts)
        diagnostics.update(self.submit_audit(rollout_handle, rollout, verdicts, timings))
        experience, reward_stats = self.assemble(rollout, verdicts, ref_logprobs, old_logprobs, old_values)
        learn_stats = self.learn(experience, timings)
        if upcoming is not None:
            self.generate(upcoming, timings, timing_key="time/generate_next")
        sync_stats = self.sync_weights(timings)
        diagnostics.update(self.collect_audit(timings))
        self.kl_controller.update(reward_stats["kl"], n_steps=len(rollout))
        self.step += 1
        self._pending = upcoming  # (not earlier: a failed step must leave the sampler and this together)
        timings["time/step"] = time.perf_counter() - started
        metrics = {**reward_stats, **learn_stats, **sync_stats, **timings, **rollout_stats(rollout), **diagnostics,
                   "kl_coef": float(self.kl_controller.kl_coef), "rollout/staleness": float(staleness)}
        faults = self.fault_events[faults_before:]
        metrics["faults/retries"] = float(len(faults))
        if faults:
            metrics["time/recovery"] = sum(f.get("recovered_after_s", 0.0) for f in faults)
        for hook in self.step_hooks:  # e.g. the trainer's actor-memory report
            metrics.update(hook(self.step))
        if self.metrics is not None:
            self.metrics.log(self.step, metrics)
        return StepResult(step=self.step, metrics=metrics, experience=experience)

    # ----------------------------------------------------------------- the steps

    def _draw_generation(self, *, launch: bool) -> "Generation":
        """The next step's prompts (and its sampling seed); `launch`: start sampling them now."""
        step = self.step + (1 if launch else 0)  # the step whose batch this is (0-based)
        generation = Generation(prompts=self.sampler.next_batch(self.config.ppo.prompts_per_step),
                                seed=self.config.seed * 100_003 + step, weights_step=self.step)
        if launch:
            generation.handle = self._launch_generation(generation)
        return generation

    def _launch_generation(self, generation: "Generation") -> Handle:
        sampling = self.config.rollout.sampling
        return self.rollout.generate(generation.prompts, n=sampling.n_samples_per_prompt,
                                     sampling=sampling.model_dump(), seed=generation.seed)

    def generate(self, generation: "Generation", timings: dict[str, float], *,
                 timing_key: str = "time/generate") -> tuple[RolloutBatch, Handle]:
        """Wait for a batch (launching it if it is not yet running): the batch, and its handle
        (already in the object store under Ray) for the fan-out to scorers, reference and learner.
        A failed generation is relaunched with the same prompts and seed."""
        t0 = time.perf_counter()
        launched = [generation.handle] if generation.handle is not None else []

        def launch() -> Handle:
            generation.handle = launched.pop() if launched else self._launch_generation(generation)
            return generation.handle

        values, _ = self._resolve_with_retries("generate", {"generate": launch})
        timings[timing_key] = time.perf_counter() - t0
        return values["generate"], generation.handle

    def score_and_evaluate(
        self, rollout: Handle, num_samples: int, timings: dict[str, float]
    ) -> tuple[dict[str, list[SegmentRewards]], torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """All scorers, the reference policy and the learner's old logprobs/values at once.

        A failed participant is relaunched alone (after recovery); finished ones are kept."""
        launch = {f"score:{s.name}": (lambda s=s: s.score(rollout, num_samples)) for s in self.scorers}
        launch["reference"] = lambda: self.reference.logprobs(rollout)
        launch["values"] = lambda: self.learner.logprobs_and_values(rollout)
        t0 = time.perf_counter()
        values, ready_after = self._resolve_with_retries("score", launch)
        timings["time/score_reference_values"] = time.perf_counter() - t0
        timings["time/score"] = max((t for k, t in ready_after.items() if k.startswith("score:")), default=0.0)
        timings["time/reference"] = ready_after["reference"]
        timings["time/values"] = ready_after["values"]
        verdicts = {s.name: values[f"score:{s.name}"] for s in self.scorers}
        return verdicts, values["reference"], values["values"]

    def assemble(
        self,
        rollout: RolloutBatch,
        verdicts: dict[str, list[SegmentRewards]],
        ref_logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor | None,
    ) -> tuple[Experience, dict[str, float]]:
        """Per-token rewards, KL, advantages (`ppo.advantage_estimator`): pure `algo` code over the padded batch."""
        ppo = self.config.ppo
        padded = pad_rollout(rollout, pad_token_id=self.pad_token_id)
        offsets = [token_char_offsets(ids, self.decode, text=text)
                   for ids, text in zip(rollout.response_ids, rollout.responses)]
        outputs = [ScorerOutput.from_spec(spec, verdicts[spec.name]) for spec in self.scorer_specs]
        return assemble_experience(
            sequences=padded.sequences,
            attention_mask=padded.attention_mask,
            action_mask=padded.action_mask,
            token_offsets=offsets,
            scorer_outputs=outputs,
            old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs,
            old_values=old_values,
            kl_coef=float(self.kl_controller.kl_coef),
            kl_estimator=ppo.kl_estimator,
            gamma=ppo.gamma,
            lam=ppo.lam,
            scale_rewards=ppo.scale_rewards_by_std,
            whiten_advantages=ppo.whiten_advantages,
            estimator=ppo.advantage_estimator,
            group_ids=torch.tensor(rollout.prompt_index, dtype=torch.long),
            kl_in=ppo.kl_in,
        )

    def diagnose(self, rollout: RolloutBatch, verdicts: dict[str, list[SegmentRewards]]) -> dict[str, float]:
        """Each RM's reward-signal statistics (`diag/...`); warnings about blind or gamed RMs are
        logged and appended to `<logging.dir>/warnings.jsonl` (see `fgrlhf_ray.rewards.diagnostics`)."""
        if self.monitor is None:
            return {}
        stats = batch_diagnostics({s.name: verdicts[s.name] for s in self.scorer_specs},
                                  response_tokens=[len(ids) for ids in rollout.response_ids])
        for event in self.monitor.update(self.step + 1, stats, num_samples=len(rollout)):
            if event["status"] == "warning":
                log.warning("reward diagnostics, step %d: %s", event["step"], event["message"])
            else:
                log.info("reward diagnostics, step %d: %s", event["step"], event["message"])
            if self.metrics is not None:
                self.metrics.append("warnings.jsonl", event)
        for spec in self.scorer_specs:
            stats[f"diag/{spec.name}/flags"] = float(self.monitor.active(spec.name))
        return stats

    def submit_audit(self, rollout_handle: Handle, rollout: RolloutBatch,
                     verdicts: dict[str, list[SegmentRewards]], timings: dict[str, float]) -> dict[str, float]:
        """Hand a sample of this step's rollouts to the audit judge (it runs while the step goes on)."""
        if self.auditor is None:
            return {}
        t0 = time.perf_counter()
        stats = self.auditor.submit(self.step + 1, rollout_handle, rollout, verdicts)
        timings["time/audit"] = time.perf_counter() - t0
        return stats

    def collect_audit(self, timings: dict[str, float] | None = None, *, wait: bool = False) -> dict[str, float]:
        """Agreement metrics of a finished audit (this step's or an earlier one's); records go to
        `<logging.dir>/audit.jsonl`. `wait`: block for the audit in flight (the end of a run)."""
        if self.auditor is None:
            return {}
        t0 = time.perf_counter()
        stats, records = self.auditor.collect(self.step + (0 if wait else 1), wait=wait)
        for record in records:
            if self.metrics is not None:
                self.metrics.append("audit.jsonl", record)
        if timings is not None:
            timings["time/audit"] = timings.get("time/audit", 0.0) + time.perf_counter() - t0
        return stats

    def learn(self, experience: Experience, timings: dict[str, float]) -> dict[str, float]:
        t0 = time.perf_counter()
        experience_handle = self.runtime.put(experience)
        stats, _ = self._resolve_with_retries("learn", {"learn": lambda: self.learner.train(experience_handle)})
        timings["time/learn"] = time.perf_counter() - t0
        return dict(stats["learn"])

    def sync_weights(self, timings: dict[str, float]) -> dict[str, float]:
        """Push the learner's weights to every engine, then compare logprobs on the probe."""
        t0 = time.perf_counter()
        pushed, _ = self._resolve_with_retries("sync", {"sync": self._push_weights})
        timings["time/sync"] = time.perf_counter() - t0
        # Transport stats (seconds, bytes, buckets, whether a broadcast group was formed).
        stats = pushed["sync"] if isinstance(pushed["sync"], dict) else {}
        transport = {k: float(v) for k, v in stats.items() if k.startswith("sync/") and isinstance(v, (int, float))}
        if self.probe is None:
            return transport
        prompt_ids, response_ids = self.probe
        got, _ = self._resolve_with_retries("sync", {
            "engine": lambda: self.rollout.probe_logprobs(prompt_ids, response_ids),
            "learner": lambda: self.learner.probe_logprobs(prompt_ids, response_ids),
        })
        gap = check_probe_gaps(got["learner"], got["engine"], self.config.learner.sync_probe_tolerance,
                               when=f" after the sync at step {self.step + 1}", setting="learner.sync_probe_tolerance")
        log.info("weight sync: probe max |logp_vllm - logp_learner| = %.2e", gap)
        return {**transport, "sync/probe_gap": gap}

    def _push_weights(self) -> Handle:
        if self.push_weights is not None:
            return self.push_weights()
        return self.rollout.sync_weights(self.learner.weights())

    # ----------------------------------------------------------------- faults

    def phase_timeout(self, phase: str) -> float:
        """Seconds a phase may wait: `ray.phase_timeouts[phase]`, else `ray.get_timeout_s`."""
        ray_config = self.config.ray
        return float(ray_config.phase_timeouts.get(phase, ray_config.get_timeout_s))

    def _resolve_with_retries(self, phase: str, launch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """Launch every participant, resolve them; on a fault relaunch only the failed ones."""
        handles: dict[str, Handle] = {}
        attempt = 0
        to_launch = list(launch)
        while True:
            try:
                if attempt == 0:
                    self.inject_chaos(phase)
                for name in to_launch:
                    handles[name] = launch[name]()
                values, ready_after = self.runtime.resolve(handles, timeout=self.phase_timeout(phase))
                self._phase_succeeded(phase)
                return values, ready_after
            except Exception as exc:  # noqa: BLE001 - classified (and re-raised if not a fault) below
                names = exc.names if isinstance(exc, ParticipantFailed) else list(launch)
                self._handle_fault(phase, exc, attempt, default_names=names)
                to_launch = [n for n in names if n in launch] or list(launch)
                attempt += 1

    def _handle_fault(self, phase: str, exc: BaseException, attempt: int, *, default_names: list[str]) -> None:
        """Log a fault, then recover and return (the caller retries), or raise `PhaseFailed`.

        Not a fault (a bug, a bad config) → re-raise `exc` unchanged."""
        kind = self.runtime.failure_kind(exc)
        if kind is None:
            raise exc
        names = exc.names if isinstance(exc, ParticipantFailed) else default_names
        cause = exc.cause if isinstance(exc, ParticipantFailed) and exc.cause is not None else exc
        what = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"[:300]
        step = self.step + 1
        learner_parts = [n for n in names if n in LEARNER_PARTICIPANTS]
        if not learner_parts and phase == "sync" and not self._learner_alive():
            learner_parts = ["learner"]
        event = {"step": step, "phase": phase, "participants": names, "kind": kind, "error": what,
                 "attempt": attempt + 1, "detected_at": time.time()}
        self.fault_events.append(event)
        if learner_parts:
            event["outcome"] = "abandoned (learner)"
            log.error("fault at step %d, phase %s: the learner failed (%s: %s); abandoning the step",
                      step, phase, kind, what)
            raise PhaseFailed(
                f"step {step}, phase {phase}: a learner rank failed ({kind}: {what}); the learner's weights and "
                f"optimizer state cannot be rebuilt mid-run", participant=",".join(learner_parts), learner=True,
            ) from exc
        if not self.retry.should_retry(attempt):
            event["outcome"] = "abandoned (retries exhausted)"
            log.error("fault at step %d, phase %s: %s still failing after %d retries (%s: %s); giving up",
                      step, phase, ", ".join(names), self.retry.retries, kind, what)
            raise PhaseFailed(
                f"step {step}, phase {phase}: {', '.join(names)} still failing after {self.retry.retries} retries "
                f"(ray.phase_retries) — last error {kind}: {what}", participant=",".join(names), learner=False,
            ) from exc
        delay = self.retry.delay(attempt)
        log.warning("fault at step %d, phase %s: %s %s (%s); recovering, retry %d/%d after %.1f s backoff",
                    step, phase, ", ".join(names), "died" if kind == "died" else "timed out", what,
                    attempt + 1, self.retry.retries, delay)
        time.sleep(delay)
        recoveries = [f"{name}: {self._recover(name, kind)}" for name in names]
        if any(n in ROLLOUT_PARTICIPANTS for n in names) and "sync" not in names:
            # A restarted engine runs the initial weights: bring it back to the learner's.
            self.runtime.resolve({"sync": self._push_weights()}, timeout=self.phase_timeout("sync"))
            recoveries.append("engines re-synced to the learner's weights")
        event["recovery"] = "; ".join(recoveries)
        event["outcome"] = "retried"
        self._open_faults.append(event)
        log.warning("recovery at step %d, phase %s: %s", step, phase, event["recovery"])

    def _recover(self, name: str, kind: str) -> str:
        if name.startswith("score:"):
            service = next(s for s in self.scorers if s.name == name.split(":", 1)[1])
        elif name == "reference":
            service = self.reference
        elif name in ROLLOUT_PARTICIPANTS:
            service = self.rollout
        else:
            return "no recovery hook; relaunching"
        recover = getattr(service, "recover", None)
        return recover(kind) if recover is not None else "no recovery hook; relaunching"

    def _learner_alive(self) -> bool:
        alive = getattr(self.learner, "alive", None)
        return True if alive is None else bool(alive())

    def inject_chaos(self, phase: str, step: int | None = None) -> list[dict]:
        """Tests only: arm the faults `chaos` schedules for `phase` of `step` (`fgrlhf_ray.infra.chaos`).

        Without `step` (the step in progress: a phase of `_resolve_with_retries`) they count as
        recovered when the phase completes; otherwise the caller closes the returned events."""
        if self.chaos is None:
            return []
        events = self.chaos.inject(self.step + 1 if step is None else step, phase)
        self.injected_faults.extend(events)
        if step is None:
            self._open_faults.extend(events)
        return events

    def _phase_succeeded(self, phase: str) -> None:
        now = time.time()
        for event in self._open_faults:
            # A detected fault counts from its detection, an injected one from the injection.
            began = event.get("injected_at", event.get("detected_at"))
            if began is None:  # an injected fault whose target was not called in this phase
                continue
            event["recovered_after_s"] = now - began
            log.warning("recovered: step %d, phase %s completed %.1f s after the fault (%s)", event["step"], phase,
                        event["recovered_after_s"], ", ".join(event.get("participants") or [event.get("target", "?")]))
        self._open_faults.clear()

    def evaluate(self, prompts: Sequence[str]) -> dict[str, float]:
        """Generate once per prompt with the training sampling and report each RM's mean reward."""
        sampling = self.config.rollout.sampling
        handle = self.rollout.generate(list(prompts), n=1, sampling=sampling.model_dump(), seed=self.config.seed)
        rollout = self.runtime.resolve({"generate": handle}, timeout=self.phase_timeout("generate"))[0]["generate"]
        verdicts, _ = self.runtime.resolve({s.name: s.score(handle, len(rollout)) for s in self.scorers},
                                           timeout=self.config.ray.get_timeout_s)
        metrics = {"eval/response_length": sum(map(len, rollout.response_ids)) / max(len(rollout), 1)}
        total = 0.0
        for spec in self.scorer_specs:
            per_sample = sample_rewards([[seg.value for seg in v.segments] for v in verdicts[spec.name]],
                                        weight=spec.weight, mean=spec.mean, std=spec.std)
            metrics[f"eval/reward/{spec.name}"] = sum(per_sample) / max(len(per_sample), 1)
            total += metrics[f"eval/reward/{spec.name}"]
        metrics["eval/reward/total"] = total
        return metrics

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """Step, prompt position, KL controller, this process's RNG states and the batch in flight
        (its prompts and seed: a resumed run samples it again, so no prompt is lost or repeated)."""
        pending = None
        if self._pending is not None:
            pending = {"prompts": self._pending.prompts, "seed": self._pending.seed,
                       "weights_step": self._pending.weights_step}
        return {"step": self.step, "sampler": self.sampler.state_dict(),
                "kl_controller": self.kl_controller.state_dict(), "rng": capture_rng_state(), "pending": pending}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        if "rng" in state:  # checkpoints written before RNG states were saved have none
            restore_rng_state(state["rng"])
        pending = state.get("pending")
        # The batch in flight at the checkpoint is sampled again, from the checkpoint's weights.
        self._pending = Generation(**{**pending, "weights_step": self.step}) if pending else None


def rollout_stats(rollout: RolloutBatch) -> dict[str, float]:
    lengths = [len(ids) for ids in rollout.response_ids]
    truncated = sum(reason == "length" for reason in rollout.finish_reasons)
    return {
        "response_length/mean": sum(lengths) / max(len(lengths), 1),
        "response_length/max": float(max(lengths, default=0)),
        "rollout/truncated_fraction": truncated / max(len(lengths), 1),
        "rollout/samples": float(len(lengths)),
        **answer_shape(rollout.responses),
    }
