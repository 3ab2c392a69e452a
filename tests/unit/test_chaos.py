"""The chaos harness (`fgrlhf_ray.infra.chaos`) without Ray: schedule validation, a target
process paused and SIGKILLed from outside, a hang, ENOSPC at a checkpoint and how the
trainer handles it, and the controller counting injected faults as recovered."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_controller import Calls
from test_controller import build as build_controller

from fgrlhf_ray.errors import RunFailed
from fgrlhf_ray.infra import checkpoint
from fgrlhf_ray.infra.chaos import DIR_ENV, SCHEDULE_ENV, ChaosFault, ChaosMonkey, chaos_point, parse_schedule

TARGET = "import sys; from fgrlhf_ray.infra.chaos import chaos_point; chaos_point(sys.argv[1]); print('passed')"


@pytest.mark.parametrize("entry, field", [
    ({"step": 0, "phase": "score", "fault": "kill", "target": "engine"}, "step must be"),
    ({"step": 1, "phase": "rollout", "fault": "kill", "target": "engine"}, "phase must be"),
    ({"step": 1, "phase": "score", "fault": "explode", "target": "engine"}, "fault must be"),
    ({"step": 1, "phase": "score", "fault": "enospc", "target": "engine"}, "enospc goes with target 'checkpoint'"),
    ({"step": 1, "phase": "checkpoint", "fault": "kill", "target": "checkpoint"}, "enospc goes with"),
    ({"step": 1, "phase": "score", "fault": "kill"}, "needs exactly the fields"),
])
def test_bad_schedule_entries_are_named(entry, field):
    with pytest.raises(ValueError, match=f"chaos schedule entry 1: {field}"):
        parse_schedule([{"step": 1, "phase": "generate", "fault": "kill", "target": "engine"}, entry])


def test_off_unless_configured(tmp_path, monkeypatch):
    monkeypatch.delenv(DIR_ENV, raising=False)
    monkeypatch.delenv(SCHEDULE_ENV, raising=False)
    assert ChaosMonkey.from_env() is None
    chaos_point("engine")  # returns at once
    monkeypatch.setenv(SCHEDULE_ENV, str(tmp_path / "schedule.json"))
    with pytest.raises(ValueError, match=f"{DIR_ENV} is not"):
        ChaosMonkey.from_env()


def _target(tmp_path, name: str) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", DIR_ENV: str(tmp_path)}
    return subprocess.Popen([sys.executable, "-c", TARGET, name], env=env, stdout=subprocess.PIPE, text=True)


def test_kill_lands_on_the_paused_target_once(tmp_path):
    monkey = ChaosMonkey(tmp_path, [ChaosFault(2, "score", "kill", "scorer:brevity")])
    assert monkey.inject(1, "score") == [] and monkey.inject(2, "generate") == []
    [event] = monkey.inject(2, "score")
    target = _target(tmp_path, "scorer:brevity")
    assert target.wait(timeout=60) == -signal.SIGKILL  # killed from outside while paused
    deadline = time.monotonic() + 10
    while "processes" not in event and time.monotonic() < deadline:
        time.sleep(0.05)
    assert event["pid"] == target.pid and event["processes"] == 1 and event["injected_at"] >= event["armed_at"]
    assert [json.loads(line)["pid"] for line in (tmp_path / "injected.jsonl").read_text().splitlines()] == [target.pid]
    # Fired once per folder: a resumed run meeting step 2 again does not repeat it, and the next call passes.
    assert ChaosMonkey(tmp_path, monkey.schedule).inject(2, "score") == []
    again = _target(tmp_path, "scorer:brevity")
    assert again.wait(timeout=60) == 0 and again.stdout.read().strip() == "passed"


def test_hang_is_left_to_the_phase_timeout(tmp_path):
    monkey = ChaosMonkey(tmp_path, [ChaosFault(1, "score", "hang", "serve:relevance")])
    [event] = monkey.inject(1, "score")
    target = _target(tmp_path, "serve:relevance")
    try:
        deadline = time.monotonic() + 30
        while "pid" not in event and time.monotonic() < deadline:
            time.sleep(0.05)
        assert event["pid"] == target.pid and "processes" not in event
        time.sleep(0.5)
        assert target.poll() is None  # still hanging: nobody kills a hang but the phase timeout
    finally:
        target.kill()
        target.wait()


class _Learner:
    def save_checkpoint(self, directory):
        (Path(directory) / "weights.bin").write_bytes(b"w")
        return directory


def _trainer(tmp_path, monkeypatch):
    import ray

    from fgrlhf_ray.launch.trainer import Trainer

    controller, _ = build_controller(tmp_path, Calls())
    controller.config.logging.dir = str(tmp_path / "run")
    trainer = Trainer(controller.config, config_path="qa.yaml")
    trainer.controller, trainer.learner = controller, _Learner()
    monkeypatch.setattr(ray, "get", lambda handle, timeout=None: handle)  # handles are values here
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "chaos"))
    (tmp_path / "chaos").mkdir()
    schedule = [{"step": s, "phase": "checkpoint", "fault": "enospc", "target": "checkpoint"} for s in (2, 3, 4)]
    controller.chaos = ChaosMonkey(tmp_path / "chaos", parse_schedule(schedule))
    return trainer, controller


def test_enospc_at_a_checkpoint_keeps_the_previous_one_and_says_what_failed(tmp_path, monkeypatch):
    trainer, controller = _trainer(tmp_path, monkeypatch)
    root = Path(controller.config.checkpoint_dir())
    controller.step = 1
    assert trainer.save_checkpoint().name == "step_000001"
    controller.step = 2
    assert trainer.save_checkpoint() is None  # ENOSPC: the run goes on
    assert (root / "latest").read_text().strip() == "step_000001"
    assert checkpoint.latest_checkpoint(root).name == "step_000001" and not (root / "step_000002.tmp").exists()
    [event] = controller.fault_events
    assert event["phase"] == "checkpoint" and f"[Errno {errno.ENOSPC}] No space left on device" in event["error"]
    assert "step_000001 stays valid" in event["outcome"]
    controller.step = 3
    assert trainer.save_checkpoint() is None  # a second failure in a row: still within ray.phase_retries (2)
    controller.step = 4
    with pytest.raises(RunFailed, match=r"3 checkpoint saves in a row failed, the last at step 4 .*No space left.*"
                                        r"step_000001 stays valid.*--config qa.yaml --resume auto"):
        trainer.save_checkpoint()


def test_a_good_save_closes_the_failed_ones_and_the_last_save_must_succeed(tmp_path, monkeypatch):
    trainer, controller = _trainer(tmp_path, monkeypatch)
    controller.step = 2
    assert trainer.save_checkpoint() is None
    controller.step = 3
    with pytest.raises(RunFailed, match="the run's last checkpoint save failed, the last at step 3.*no complete "
                                        "checkpoint exists yet"):
        trainer.save_checkpoint(last=True)
    controller.chaos = None
    controller.step = 5
    assert trainer.save_checkpoint().name == "step_000005"
    # Recovered at the next good save: the failures the trainer saw and the ENOSPCs injected behind them.
    assert len(controller.fault_events) == len(controller.injected_faults) == 2
    assert all(e["recovered_after_s"] >= 0 for e in controller.fault_events + controller.injected_faults)


def test_injected_faults_count_as_recovered_when_their_phase_completes(tmp_path):
    class Monkey:
        def inject(self, step, phase):
            if (step, phase) != (2, "score"):
                return []
            return [{"step": step, "phase": phase, "target": "reference", "armed_at": time.time(),
                     "injected_at": time.time()}]

    controller, _ = build_controller(tmp_path, Calls())
    controller.chaos = Monkey()
    controller.run(3)
    [event] = controller.injected_faults
    assert event["recovered_after_s"] >= 0 and controller.fault_events == []
