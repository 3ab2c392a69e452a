"""Test-only fault injection: crash the calling actor process, once.

`maybe_crash()` backs the crashing function scorers of `fgrlhf_ray.testing`, used as
`kind: function` targets in the reliability tests (a real scorer actor dies;
the recovery under test is the trainer's real one). Controlled by environment
variables, which reach actor processes through the cluster or the job's runtime_env:

- `FGRLHF_FAULT_DIR`: a folder; the crash happens once per folder — the process that
  crashes first creates `FGRLHF_FAULT_DIR/crashed` (atomically, O_EXCL), with its pid
  and the time, so a restarted actor (or another replica) does not crash again.
- `FGRLHF_FAULT_AT_CALL`: crash on this call (1-based) of the function in a process.

Without `FGRLHF_FAULT_DIR` nothing happens.
"""

from __future__ import annotations

import json
import os
import time

_calls = 0


def maybe_crash() -> None:
    """Kill this process on the configured call, once per `FGRLHF_FAULT_DIR` (module docstring)."""
    global _calls
    _calls += 1
    folder = os.environ.get("FGRLHF_FAULT_DIR")
    if not folder or _calls != int(os.environ.get("FGRLHF_FAULT_AT_CALL", "1")):
        return
    try:
        fd = os.open(os.path.join(folder, "crashed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "time": time.time(), "call": _calls}))
        f.flush()
        os.fsync(f.fileno())
    os._exit(1)  # the actor process dies mid-task, as on a segfault or an OOM kill
