"""Shared helpers for the benchmark scripts: machine description, results JSON, tables,
tiny local Llama models of a chosen size, fixed prompts.

Nothing here is downloaded: models are random Llama-style networks with a locally trained
BPE tokenizer (`fgrlhf_ray.testing.build_tiny_llama`). Throughput and timing depend on the
architecture and sizes only, not on what the weights learned.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Llama shapes by (approximate) parameter count; head_dim 64 (vLLM-CPU needs >= 64),
# intermediate = 2·hidden (build_tiny_llama's default), ~500-token vocabulary.
LLAMA_SIZES: dict[str, dict[str, int]] = {
    "1M": {"hidden_size": 128, "num_layers": 6, "num_heads": 2},
    "10M": {"hidden_size": 384, "num_layers": 7, "num_heads": 6},
    "25M": {"hidden_size": 512, "num_layers": 10, "num_heads": 8},
    "50M": {"hidden_size": 768, "num_layers": 8, "num_heads": 12},
    "100M": {"hidden_size": 1024, "num_layers": 10, "num_heads": 16},
}


def machine() -> dict[str, Any]:
    """Hardware and software this run used (goes into every results JSON)."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    for mod in ("torch", "transformers", "vllm", "ray", "deepspeed", "trl"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    return info


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_result(name: str, payload: dict[str, Any], out: str | os.PathLike | None = None) -> Path:
    """Write `payload` (plus date, machine) to benchmarks/results/<name>.json or `out`."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date_utc": now(), **payload}
    payload.setdefault("machine", machine())
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path}")
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """Plain-text table (also valid Markdown)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    text = (f"\n{title}\n" if title else "\n") + "\n".join(lines)
    print(text, flush=True)
    return text


def timed(fn: Callable[[], Any], *, repeats: int = 1) -> tuple[float, Any]:
    """Median wall time of `repeats` calls of `fn` (and the last result)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def build_llama(out_dir: str | os.PathLike, size: str | dict[str, int], *, seed: int = 0,
                max_position_embeddings: int = 1024, tie_word_embeddings: bool = False) -> tuple[Path, int]:
    """Build (or reuse) a random Llama of `size` (a LLAMA_SIZES key or explicit shape).
    Returns (folder, parameter count)."""
    from fgrlhf_ray.testing import build_tiny_llama

    shape = LLAMA_SIZES[size] if isinstance(size, str) else dict(size)
    out = Path(out_dir)
    if not (out / "config.json").exists():
        build_tiny_llama(out, seed=seed, max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=tie_word_embeddings, **shape)
    return out, count_params(out)


def count_params(model_dir: str | os.PathLike) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                total += _prod(st.get_slice(k).get_shape())
    return total


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


_SUBJECTS = ["the river school", "the stone bridge", "the old mill", "the red team", "anna's book",
             "the mountain", "the capital", "the harbour", "the museum", "the long war"]
_ASKS = ["who founded", "when was", "where is", "what is known about", "why did people visit"]


def prompts(n: int, *, seed: int = 0) -> list[str]:
    """`n` short QA-style prompts (~15-25 tokens with the tiny BPE), deterministic."""
    import random

    rng = random.Random(seed)
    return [f"question: {rng.choice(_ASKS)} {rng.choice(_SUBJECTS)}? passage: {rng.choice(_SUBJECTS)} "
            f"was built in {1700 + rng.randrange(300)}. answer:" for _ in range(n)]


def run_worker_process(script: str | os.PathLike, flag: str, spec: dict, *, timeout_s: float,
                       env: dict[str, str] | None = None) -> dict:
    """Run `python script flag <spec JSON> --worker-out FILE` in its own process group and return
    the JSON it wrote, plus `wall_s`; `{"error": ...}` when it fails or outlives `timeout_s` (then
    the whole group is killed). A fresh process per measurement: no state carries between them."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out = Path(f.name)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), flag, json.dumps(spec), "--worker-out", str(out)],
                            start_new_session=True, env={"TOKENIZERS_PARALLELISM": "false", **(env or os.environ)})
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out.unlink(missing_ok=True)
        return {"error": f"timed out after {timeout_s:.0f}s"}
    text = out.read_text() if out.exists() else ""
    out.unlink(missing_ok=True)
    if proc.returncode != 0 or not text:
        return {"error": f"worker exit {proc.returncode}"}
    return {**json.loads(text), "wall_s": time.perf_counter() - t0}
