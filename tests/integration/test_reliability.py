"""Reliability of `fgrlhf train` on real Ray (vLLM-CPU engine, DeepSpeed learner, function scorers).

- A real local cluster (`ray start --head` on loopback, its own temp dir, stopped after)
  runs `fgrlhf train` submitted as a Ray job (Jobs SDK, working_dir + env_vars runtime
  env), syncing weights by broadcast (gloo). Two faults: once step 1 is logged, the test SIGKILLs the vLLM engine actor's
  processes from outside (as an OOM killer would); during step 2 a scorer actor's process
  dies (`os._exit` inside it, injected by `fgrlhf_ray.infra.faults`). The job must
  SUCCEED, its log must name each fault and restart (and a second broadcast group formed
  for the restarted engine), and the metrics it wrote must hold every step once.
- The driver is SIGKILLed after step 2 of 4 (plus a corrupt and a half-written
  checkpoint 3 planted); `--resume auto` warns, uses checkpoint 2, runs steps 3-4, and
  steps 1-3 match the job's (same seed; faults that lose no data leave the numbers
  unchanged). The resumed run joins two simulated nodes (`ray.cluster_utils.Cluster`,
  custom resources `rollout_node` / `learner_node`) and pins the engine to one and the
  learner to the other (node ids asserted), so its data crosses nodes through the object
  store; its memory limit is tiny, so the memory guard must report every actor.

Three training processes in all; the assertions share them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fgrlhf_ray.infra.ports import free_port
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
QUESTIONS = [
    "question: who founded the river school? context: the river school was founded by ada in 1901.",
    "question: where does bob live? context: bob lives in a small town by the sea.",
    "question: what colour is the door? context: the door of the old mill is painted red.",
    "question: when did the bridge open? context: the stone bridge opened in the spring of 1875.",
]
COMPARED = ("reward/total_mean", "reward/grounded/mean", "reward/brevity/mean", "kl", "policy_loss", "value_loss",
            "response_length/mean")


def write_config(folder: Path, policy: Path, *, total_steps: int, run_dir: Path, ray: dict | None = None,
                 learner: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUESTIONS))
    config = {
        "seed": 3,
        "policy": {"model_path": str(policy)},
        "rollout": {"num_engines": 1, "max_model_len": 256, "kv_cache_space_gib": 1,
                    "sampling": {"max_new_tokens": 12, "n_samples_per_prompt": 2, "temperature": 1.0}},
        "reward_models": [
            {"name": "grounded", "kind": "function", "density": "sentence", "weight": 0.5,
             "target": "fgrlhf_ray.rewards.builtin:prompt_grounded_sentences", "num_cpus": 0.5},
            # brevity, but its actor process exits once (FGRLHF_FAULT_DIR / FGRLHF_FAULT_AT_CALL)
            {"name": "brevity", "kind": "function", "density": "sequence", "weight": 0.3,
             "target": "fgrlhf_ray.testing:crashing_brevity", "num_cpus": 0.5},
        ],
        "ppo": {"total_steps": total_steps, "prompts_per_step": 2, "ppo_epochs": 1, "minibatch_size": 4,
                "lr": 1e-4, "critic_lr": 1e-4},
        "learner": {"micro_batch_size": 2, "zero_stage": 2, **(learner or {})},
        "data": {"train_file": str(prompts), "format": "jsonl", "max_prompt_tokens": 64},
        "logging": {"dir": str(run_dir), "tensorboard": False},
        "checkpoint": {"every": 1, "keep_last": 2},
        "ray": {"retry_backoff_s": 0.5, "phase_timeouts": {"score": 300, "generate": 600}, **(ray or {})},
    }
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]



def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and not k.startswith("FGRLHF_FAULT")}
    env.update({"FGRLHF_TEST": "1", "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", **extra})
    return env


# ------------------------------------------------------------------ scenario 1: a Ray job with a scorer crash


@pytest.fixture(scope="module")
def local_cluster():
    """`ray start --head` on 127.0.0.1 in a short temp dir (unix-socket paths), stopped after.

    Stopped by signalling only the processes this fixture started (its own session and
    anything using its temp dir), never `ray stop`, which would stop every cluster here.
    """
    temp_dir = tempfile.mkdtemp(prefix="fgr", dir="/tmp")
    gcs_port, dashboard_port = free_port(), free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           "--include-dashboard=true", "--num-cpus=4", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    # Loopback-only test cluster without token auth (Ray >= 2.5x turns it on when ~/.ray/auth_token
    # exists; a real cluster keeps it and clients pass RAY_AUTH_TOKEN).
    proc = subprocess.Popen(cmd, env=clean_env(RAY_AUTH_MODE="disabled"), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        client = None
        while client is None:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                client = JobSubmissionClient(address)
            except Exception:  # noqa: BLE001 - the dashboard is still starting
                if time.time() > deadline:
                    raise
                time.sleep(2)
        yield {"address": address, "client": client, "gcs": f"127.0.0.1:{gcs_port}", "temp_dir": temp_dir}
    finally:
        _stop_own_cluster(proc, temp_dir)


def _stop_own_cluster(proc: subprocess.Popen, temp_dir: str) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Ray daemons and workers of *this* cluster carry its temp dir or its session on the command line.
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or []):
            try:
                p.kill()
            except psutil.Error:
                pass
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def job_run(local_cluster, tiny_llama_factory, tmp_path_factory):
    """`fgrlhf train` (3 steps) as a Ray job; the brevity scorer's process dies on its 2nd call."""
    policy = tiny_llama_factory(tie_word_embeddings=False)
    root = tmp_path_factory.mktemp("job_run")
    fault_dir = root / "fault"
    fault_dir.mkdir()
    run_dir = root / "run"
    # Weights travel by broadcast here (gloo), so the engine kill also proves that a restarted
    # engine makes the next sync form a new group; the resume scenario below syncs through
    # the object store and must reproduce these numbers.
    write_config(root / "job", policy, total_steps=3, run_dir=run_dir,
                 learner={"weight_sync": "broadcast", "broadcast_timeout_s": 60})
    client = local_cluster["client"]
    started = time.time()
    job_id = client.submit_job(
        entrypoint="fgrlhf train --config train.yaml",
        runtime_env={"working_dir": str(root / "job"),
                     "env_vars": {"FGRLHF_FAULT_DIR": str(fault_dir), "FGRLHF_FAULT_AT_CALL": "2"}},
    )
    from ray.job_submission import JobStatus

    deadline = time.time() + 1200
    engine_kill = None
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                             JobStatus.STOPPED):
        assert time.time() < deadline, "job did not finish in 20 min"
        if engine_kill is None and (run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir):
            engine_kill = kill_engine(local_cluster["address"])
        time.sleep(1)
    return {"status": status, "logs": client.get_job_logs(job_id), "run_dir": run_dir, "fault_dir": fault_dir,
            "wall_s": time.time() - started, "engine_kill": engine_kill}


def kill_engine(dashboard: str) -> dict:
    """SIGKILL the vLLM engine actor's process and its children (vLLM's engine-core process)."""
    import psutil
    from ray.util.state import list_actors

    [actor] = list_actors(address=dashboard, filters=[("class_name", "=", "RolloutActor"), ("state", "=", "ALIVE")])
    proc = psutil.Process(actor.pid)
    victims = proc.children(recursive=True) + [proc]
    for victim in victims:
        try:
            victim.kill()
        except psutil.Error:
            pass
    return {"pid": actor.pid, "time": time.time(), "processes": len(victims)}


def test_job_succeeds_despite_a_scorer_crash(job_run):
    logs = job_run["logs"]
    assert job_run["status"] == "SUCCEEDED", logs[-6000:]
    crash = json.loads((job_run["fault_dir"] / "crashed").read_text())  # the fault really happened
    assert crash["call"] == 2
    kill = job_run["engine_kill"]
    assert kill is not None, "the job finished before step 1 was logged?"
    # The log names each fault and the restart of the actor.
    assert "fault at step 2, phase score: score:brevity died" in logs, logs[-6000:]
    assert "scorer 'brevity': replica 0 restarted by Ray" in logs, logs[-6000:]
    assert "recovered: step 2, phase score" in logs
    assert "rollout: engine 0 restarted by Ray" in logs, logs[-6000:]
    rows = read_metrics(job_run["run_dir"])
    assert rows[0]["sync/group_formed"] == 1.0 and all("sync/broadcast_s" in r for r in rows)
    assert "weight broadcast: group" in logs and logs.count("formed (gloo") >= 2, logs[-6000:]  # re-formed
    faults = [json.loads(line) for line in (job_run["run_dir"] / "faults.jsonl").read_text().splitlines()]
    assert all(f["outcome"] == "retried" for f in faults), faults
    by_part = {("engine" if f["participants"][0] in ("generate", "sync", "engine") else f["participants"][0]): f
               for f in faults}
    assert sorted(by_part) == ["engine", "score:brevity"] and len(faults) == 2, faults
    # The killed engine came back with the initial weights: it was re-synced (the probe check passed after).
    assert by_part["engine"]["participants"] == ["sync"] or "engines re-synced" in by_part["engine"]["recovery"]
    print(f"\nscorer os._exit: detected {by_part['score:brevity']['detected_at'] - crash['time']:.1f} s after the "
          f"crash, phase done {by_part['score:brevity']['recovered_after_s']:.1f} s after detection; "
          f"engine SIGKILL ({kill['processes']} processes, phase {by_part['engine']['phase']}): detected "
          f"{by_part['engine']['detected_at'] - kill['time']:.1f} s after the kill, phase done "
          f"{by_part['engine']['recovered_after_s']:.1f} s after detection; "
          f"job wall {job_run['wall_s']:.0f} s")


def test_job_wrote_every_step_once(job_run):
    rows = read_metrics(job_run["run_dir"])
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sum(r["faults/retries"] for r in rows) == 2.0 and rows[0]["faults/retries"] == 0.0
    for row in rows:
        assert row["rollout/samples"] == 4 and all(math.isfinite(row[k]) for k in COMPARED)
    ckpts = job_run["run_dir"] / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000003"


# ------------------------------------------------------------------ scenario 2: kill the driver, resume


def fgrlhf(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=1200)


TWO_NODES = """
import json, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"rollout_node": 1},
                                                        "include_dashboard": False})
learner_node = cluster.add_node(num_cpus=3, resources={"learner_node": 1})
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "rollout_node": cluster.head_node.node_id,
                  "learner_node": learner_node.node_id}), flush=True)
sys.stdin.read()  # until the test closes our stdin
cluster.shutdown()
"""


@pytest.fixture
def two_nodes(tmp_path):
    """Two simulated Ray nodes (own processes) with custom resources; shut down after."""
    proc = subprocess.Popen([sys.executable, "-c", TWO_NODES], env=clean_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        info = json.loads(proc.stdout.readline())
        yield info
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_killed_driver_resumes_to_the_same_numbers_on_two_nodes(job_run, tiny_llama_factory, tmp_path, two_nodes):
    policy = tiny_llama_factory(tie_word_embeddings=False)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, policy, total_steps=4, run_dir=run_dir)
    ckpts = run_dir / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "fgrlhf_ray.cli", "train", "--config", str(config)], cwd=tmp_path,
                            env=clean_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while not ((ckpts / "latest").is_file() and (ckpts / "latest").read_text().strip() == "step_000002"):
        assert proc.poll() is None, f"run ended early: {proc.stderr.read()[-4000:]}"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, without warning
    proc.wait(timeout=60)
    killed_at = time.time()

    # A half-written save of step 3 and a corrupt step-3 folder that `latest` points at.
    shutil.rmtree(ckpts / "step_000003", ignore_errors=True)
    shutil.copytree(ckpts / "step_000002", ckpts / "step_000003")
    controller = json.loads((ckpts / "step_000003" / "controller.json").read_text())
    (ckpts / "step_000003" / "controller.json").write_text(json.dumps({**controller, "step": 3}))
    weights = next((ckpts / "step_000003" / "policy").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    (ckpts / "latest").write_text("step_000003\n")
    (ckpts / "step_000004.tmp").mkdir(exist_ok=True)

    # Resume on the two-node cluster, engine and learner pinned to different nodes.
    resumed = fgrlhf("train", "--config", str(config), "--resume", "auto",
                     "--set", f"ray.address={two_nodes['address']}",
                     "--set", "ray.rollout_resources={rollout_node: 0.01}",
                     "--set", "ray.learner_resources={learner_node: 0.01}",
                     "--set", "ray.memory_limit_gib=0.01", cwd=tmp_path)  # every actor is over 10 MiB
    resume_s = time.time() - killed_at
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    placement = json.loads(next(line for line in resumed.stderr.splitlines()
                                if "placement (actor: node id): " in line).split("placement (actor: node id): ")[1])
    assert two_nodes["rollout_node"] != two_nodes["learner_node"]
    assert placement["rollout/0"] == two_nodes["rollout_node"], placement
    assert placement["learner/0"] == two_nodes["learner_node"], placement
    assert "memory: actor learner/0" in resumed.stderr and "over ray.memory_limit_gib=0.01" in resumed.stderr
    assert "step_000003" in resumed.stderr and "is not usable" in resumed.stderr and "truncated" in resumed.stderr
    assert "resumed from" in resumed.stderr and "step_000002 at step 2" in resumed.stderr
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # nothing seen twice, nothing skipped
    assert [r["memory/over_limit"] for r in rows[2:]] == [float(len(placement))] * 2
    assert (ckpts / "latest").read_text().strip() == "step_000004"

    # Same seed: the interrupted+resumed run equals the job's run (which lost no data to its fault).
    reference = {r["step"]: r for r in read_metrics(job_run["run_dir"])}
    for row in rows[:3]:
        for key in COMPARED:
            assert row[key] == pytest.approx(reference[row["step"]][key], rel=1e-4, abs=1e-5), (row["step"], key)
    print(f"\nplacement of the resumed run: {placement}")
    print(f"\ndriver SIGKILL after step 2: resume process (start-up + steps 3-4) took {resume_s:.0f} s; "
          f"step 3 reward {rows[2]['reward/total_mean']:.5f} vs uninterrupted {reference[3]['reward/total_mean']:.5f}")
