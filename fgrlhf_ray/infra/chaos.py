"""Test-only chaos: a schedule of faults by step and phase, injected into a real run.

Off unless configured, like `fgrlhf_ray.infra.faults`. Two environment variables:

- `FGRLHF_CHAOS_DIR`: a folder every process of the run can see (set it on the cluster, or in
  the job's runtime env, so it reaches actors and Serve replicas). Inert on its own.
- `FGRLHF_CHAOS_SCHEDULE`: the driver's schedule, a JSON list such as
  `[{"step": 2, "phase": "generate", "fault": "kill", "target": "engine"}, ...]`.

Faults (`fault`), and where they come from:

- `kill`: SIGKILL of the target's process and its children (vLLM's engine core), sent by the
  driver — from outside, as an OOM killer or a lost node would. So that the kill lands while
  the target works on the step (between calls Ray would restart it unseen), the driver arms the
  target before the phase launches; the target's first call pauses at `chaos_point` and writes
  its pid, and the driver kills that pid.
- `hang`: the target pauses the same way but nobody kills it: only the phase timeout
  (`ray.phase_timeouts`) ends it — a hang can only come from inside.
- `enospc`: the driver's checkpoint write raises `OSError(ENOSPC)`, as on a full disk.

Targets: `engine`, `reference`, `learner`, `scorer:NAME` (a scorer actor replica),
`serve:NAME` (a replica of the served model NAME), `checkpoint` (for `enospc` only).
Each fault fires once per `FGRLHF_CHAOS_DIR` (a resumed run does not repeat it).
The killing driver must run on the target's host: this is a single-host test harness.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DIR_ENV = "FGRLHF_CHAOS_DIR"
SCHEDULE_ENV = "FGRLHF_CHAOS_SCHEDULE"
PHASES = ("generate", "score", "learn", "sync", "checkpoint")
FAULTS = ("kill", "hang", "enospc")
PAUSE_S = 3600.0  # a paused target waits this long for its kill (or its phase timeout)
STRIKE_WAIT_S = 120.0  # how long the driver waits for an armed target to pause


@dataclass(frozen=True)
class ChaosFault:
    step: int
    phase: str
    fault: str
    target: str

    @property
    def slot(self) -> str:
        return slot_of(self.target)


def slot_of(target: str) -> str:
    """File-name-safe target name (`scorer:brevity` → `scorer_brevity`)."""
    return target.replace(":", "_").replace("/", "_")


def parse_schedule(entries: list) -> list[ChaosFault]:
    """Validated faults; a bad entry raises ValueError naming its index and field."""
    if not isinstance(entries, list):
        raise ValueError(f"chaos schedule: expected a JSON list of faults, got {type(entries).__name__}")
    faults = []
    for i, entry in enumerate(entries):
        where = f"chaos schedule entry {i}"
        if not isinstance(entry, dict) or set(entry) != {"step", "phase", "fault", "target"}:
            raise ValueError(f"{where}: needs exactly the fields step, phase, fault, target; got {entry!r}")
        fault = ChaosFault(**entry)
        if not isinstance(fault.step, int) or fault.step < 1:
            raise ValueError(f"{where}: step must be an integer >= 1, got {fault.step!r}")
        if fault.phase not in PHASES:
            raise ValueError(f"{where}: phase must be one of {PHASES}, got {fault.phase!r}")
        if fault.fault not in FAULTS:
            raise ValueError(f"{where}: fault must be one of {FAULTS}, got {fault.fault!r}")
        if (fault.fault == "enospc") != (fault.target == "checkpoint" and fault.phase == "checkpoint"):
            raise ValueError(f"{where}: enospc goes with target 'checkpoint' in phase 'checkpoint', and only it")
        faults.append(fault)
    return faults


def _claim(path: Path) -> bool:
    """Create `path` exclusively: True for the one process that gets there first."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def chaos_point(target: str) -> None:
    """Called where a target starts its work: pause (to be killed or time out) or fail the
    write, if the driver armed this target; otherwise, and without `FGRLHF_CHAOS_DIR`, nothing."""
    folder = os.environ.get(DIR_ENV)
    if not folder:
        return
    slot = slot_of(target)
    armed = Path(folder) / f"armed.{slot}"
    claimed = Path(folder) / f"claimed.{slot}.{os.getpid()}"
    try:
        os.replace(armed, claimed)  # atomic: one call of one replica takes the fault
    except FileNotFoundError:
        return
    fault = claimed.read_text().strip()
    if fault == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected by the chaos harness at {target})")
    _write_atomically(Path(folder) / f"busy.{slot}", json.dumps({"pid": os.getpid(), "time": time.time()}))
    time.sleep(PAUSE_S)


def _write_atomically(path: Path, text: str) -> None:
    """Readers see all of `text` or no file (a temporary name of this process's own, then a rename)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ChaosMonkey:
    """The driver's side: arms the faults due at a step and phase, kills paused targets."""

    def __init__(self, folder: str | Path, schedule: list[ChaosFault]) -> None:
        self.folder = Path(folder)
        self.schedule = schedule

    @classmethod
    def from_env(cls) -> "ChaosMonkey | None":
        path, folder = os.environ.get(SCHEDULE_ENV), os.environ.get(DIR_ENV)
        if not path:
            return None
        if not folder:
            raise ValueError(f"{SCHEDULE_ENV} is set but {DIR_ENV} is not: the targets need a shared folder")
        return cls(folder, parse_schedule(json.loads(Path(path).read_text())))

    def inject(self, step: int, phase: str) -> list[dict]:
        """Arm every fault due at (step, phase) that has not fired yet; start killers for
        `kill` faults. Returns one event per fault (filled in as it happens: pid, injected_at)."""
        events = []
        for index, fault in enumerate(self.schedule):
            if (fault.step, fault.phase) != (step, phase) or not _claim(self.folder / f"fired.{index}"):
                continue
            event = {**asdict(fault), "injected": True, "armed_at": time.time()}
            (self.folder / f"busy.{fault.slot}").unlink(missing_ok=True)
            _write_atomically(self.folder / f"armed.{fault.slot}", fault.fault)
            if fault.fault == "enospc":  # fails the write as soon as it starts
                event["injected_at"] = event["armed_at"]
                self._record(event)
            else:
                threading.Thread(target=self._strike, args=(fault, event), daemon=True).start()
            events.append(event)
        return events

    def _strike(self, fault: ChaosFault, event: dict) -> None:
        """Wait for the target to pause; SIGKILL it (and its children) for `kill`."""
        busy = self.folder / f"busy.{fault.slot}"
        deadline = time.monotonic() + STRIKE_WAIT_S
        while not busy.is_file():
            if time.monotonic() > deadline:
                event["outcome"] = f"not injected: {fault.target} was not called within {STRIKE_WAIT_S:.0f} s"
                self._record(event)
                return
            time.sleep(0.05)
        paused = json.loads(busy.read_text())
        event.update(pid=paused["pid"], injected_at=time.time() if fault.fault == "kill" else paused["time"])
        if fault.fault == "kill":
            event["processes"] = kill_tree(paused["pid"])
        self._record(event)

    def _record(self, event: dict) -> None:
        """One line per fault in `injected.jsonl` (the harness's own account, next to the run's faults.jsonl)."""
        with (self.folder / "injected.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def kill_tree(pid: int) -> int:
    """SIGKILL a process and all its descendants; how many were signalled."""
    import psutil

    try:
        root = psutil.Process(pid)
        victims = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return 0
    for victim in victims:
        try:
            victim.kill()
        except psutil.Error:
            pass
    return len(victims)
