"""The controller's fault handling with in-process fakes: which failures are retried,
what is relaunched, re-sync after an engine restart, bounded retries with backoff, and a
learner failure abandoning the step without consuming its prompts.

Fakes only prove the controller's logic; `tests/integration/test_reliability.py` kills
real Ray actors.
"""

from __future__ import annotations

import pytest
import torch
from test_controller import Calls, FakeLearner, FakeReference, FakeRollout, FakeSentenceScorer, FakeSequenceScorer
from test_controller import build as build_controller

from fgrlhf_ray.control import controller as controller_module
from fgrlhf_ray.control.services import PhaseFailed, RetryPolicy
from fgrlhf_ray.infra.reliability import ActorDied


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(controller_module.time, "sleep", slept.append)
    return slept


class Flaky:
    """Wraps a fake's method: calls number `fail_on` (1-based) return/raise `error`."""

    def __init__(self, fn, fail_on, error, *, raise_it=False):
        self.fn, self.fail_on, self.error, self.raise_it, self.n = fn, set(fail_on), error, raise_it, 0

    def __call__(self, *args, **kwargs):
        self.n += 1
        if self.n in self.fail_on:
            if self.raise_it:
                raise self.error
            return self.error  # InProcessRuntime treats an exception "handle" as a failed participant
        return self.fn(*args, **kwargs)


class Recovering:
    """Adds a `recover(kind)` hook that records its calls."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls
        self.name = getattr(inner, "name", None)

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def recover(self, kind):
        self.calls.append(f"recover:{self.name or type(self.inner).__name__}:{kind}")
        return "restarted"


def build(tmp_path, calls, **kw):
    controller, learner = build_controller(tmp_path, calls, **kw)
    controller.scorers = [Recovering(s, calls) for s in controller.scorers]
    controller.reference = Recovering(controller.reference, calls)
    controller.rollout = Recovering(controller.rollout, calls)
    return controller, learner


def test_retry_policy_backoff_doubles_and_is_capped():
    policy = RetryPolicy(retries=3, backoff_s=1.5, max_backoff_s=4.0)
    assert [policy.delay(k) for k in range(4)] == [1.5, 3.0, 4.0, 4.0]
    assert [policy.should_retry(k) for k in range(4)] == [True, True, True, False]


def test_dead_scorer_is_recovered_and_only_it_is_relaunched(tmp_path, no_sleep):
    clean, clean_learner = build(tmp_path / "clean", Calls())
    clean.run()
    calls = Calls()
    controller, learner = build(tmp_path / "faulty", calls)
    fact = controller.scorers[0].inner
    fact.score = Flaky(fact.score, {2}, ActorDied("scorer process exited"))
    controller.run()
    assert controller.step == 3
    step2 = calls[calls.index("sync:v1") + 1:calls.index("sync:v2")]
    # the first attempt of step 2 ran everything; after recovery only the scorer is relaunched
    assert step2 == ["generate", "score:comp", "reference", "values", "recover:fact:died", "score:fact", "learn"]
    [event] = controller.fault_events
    assert event["participants"] == ["score:fact"] and event["kind"] == "died" and event["step"] == 2
    assert event["outcome"] == "retried" and "recovered_after_s" in event
    assert no_sleep == [controller.retry.delay(0)]
    # nothing was lost: the same experience as a run without the fault
    for a, b in zip(clean_learner.experiences, learner.experiences, strict=True):
        assert torch.equal(a.rewards, b.rewards) and torch.equal(a.advantages, b.advantages)


def test_step_metrics_count_retries(tmp_path):
    calls = Calls()
    controller, _ = build(tmp_path, calls)
    ref = controller.reference.inner
    ref.logprobs = Flaky(ref.logprobs, {1}, TimeoutError("no result within 5 s"))
    results = controller.run(2)
    assert results[0].metrics["faults/retries"] == 1.0 and "time/recovery" in results[0].metrics
    assert results[1].metrics["faults/retries"] == 0.0
    assert "recover:FakeReference:timeout" in calls


def test_dead_engine_is_resynced_before_the_retry(tmp_path):
    calls = Calls()
    controller, _ = build(tmp_path, calls)
    rollout = controller.rollout.inner
    rollout.generate = Flaky(rollout.generate, {2}, ActorDied("engine died"), raise_it=True)
    controller.run(2)
    step2 = calls[calls.index("sync:v1") + 1:]
    # recovery, then the engines get the learner's current weights (v1) again, then generate
    assert step2[:3] == ["recover:FakeRollout:died", "sync:v1", "generate"]


def test_retries_are_bounded(tmp_path, no_sleep):
    controller, _ = build(tmp_path, Calls())
    comp = controller.scorers[1].inner
    comp.score = Flaky(comp.score, {1, 2, 3, 4}, ActorDied("keeps dying"))
    with pytest.raises(PhaseFailed, match="still failing after 2 retries") as info:
        controller.run(1)
    assert info.value.participant == "score:comp" and not info.value.learner
    assert no_sleep == [1.0, 2.0]  # backoff 1 s, doubled
    assert [e["outcome"] for e in controller.fault_events] == ["retried", "retried", "abandoned (retries exhausted)"]


def test_learner_failure_abandons_the_step_and_keeps_its_prompts(tmp_path):
    controller, learner = build(tmp_path, Calls())
    controller.run(1)
    position = controller.sampler.state_dict()
    learner.train = Flaky(learner.train, {1}, ActorDied("learner rank 0 died"))
    with pytest.raises(PhaseFailed, match="a learner rank failed") as info:
        controller.train_step()
    assert info.value.learner and controller.step == 1
    assert controller.sampler.state_dict() == position  # the abandoned step's prompts are not consumed


def test_a_bug_is_not_retried(tmp_path, no_sleep):
    controller, _ = build(tmp_path, Calls())
    fact = controller.scorers[0].inner
    fact.score = Flaky(fact.score, {1}, ValueError("scorer returned 3 results for 4 responses"), raise_it=True)
    with pytest.raises(ValueError, match="3 results"):
        controller.run(1)
    assert controller.fault_events == [] and no_sleep == []


def test_phase_timeouts_come_from_config(tmp_path):
    controller, _ = build(tmp_path, Calls())
    controller.config.ray.phase_timeouts = {"score": 12.0}
    assert controller.phase_timeout("score") == 12.0
    assert controller.phase_timeout("learn") == controller.config.ray.get_timeout_s


def test_fakes_still_satisfy_the_plain_protocols():
    # The recover hook is optional: services without it are relaunched as they are.
    calls = Calls()
    for fake in (FakeRollout(calls), FakeSentenceScorer(calls), FakeSequenceScorer(calls), FakeReference(calls),
                 FakeLearner(calls)):
        assert not hasattr(fake, "recover")


def test_first_ctrl_c_finishes_the_step_second_abandons_it(tmp_path):
    import signal

    from fgrlhf_ray.launch.trainer import Trainer

    trainer = Trainer(build(tmp_path, Calls())[0].config)
    trainer._request_stop(signal.SIGTERM, None)
    assert trainer._stop_requested
    trainer = Trainer(build(tmp_path, Calls())[0].config)
    trainer._request_stop(signal.SIGINT, None)
    assert trainer._stop_requested
    with pytest.raises(KeyboardInterrupt):
        trainer._request_stop(signal.SIGINT, None)


def test_run_failure_message_names_the_checkpoint_and_the_resume_command(tmp_path):
    from fgrlhf_ray.infra import checkpoint
    from fgrlhf_ray.launch.trainer import Trainer

    config = build(tmp_path, Calls())[0].config
    config.logging.dir = str(tmp_path / "run")
    trainer = Trainer(config, config_path="qa.yaml")
    exc = PhaseFailed("step 3, phase learn: a learner rank failed", participant="learn", learner=True)
    assert "no checkpoint was written yet" in trainer._failure_message(exc)
    tmp = checkpoint.begin(config.checkpoint_dir(), 2)
    checkpoint.commit(config.checkpoint_dir(), tmp, 2, controller_state={"step": 2}, config_yaml="", keep_last=2)
    message = trainer._failure_message(exc)
    assert "step_000002" in message and "fgrlhf train --config qa.yaml --resume auto" in message


def test_step_hooks_add_to_the_logged_metrics(tmp_path):
    from fgrlhf_ray.infra.metrics import read_metrics

    controller, _ = build(tmp_path, Calls())
    controller.step_hooks.append(lambda step: {"memory/over_limit": float(step)})
    controller.run(2)
    assert [r["memory/over_limit"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 2.0]
