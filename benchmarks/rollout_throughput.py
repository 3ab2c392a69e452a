"""Rollout throughput: vLLM engine (`fgrlhf_ray.workers.rollout.VLLMRolloutEngine`) vs Hugging Face
`generate` (batched, KV cache on) on the same random Llama-style policy, the same prompts
and the same sampling (temperature 0.7, top-k 20, exactly L new tokens: vLLM
`ignore_eos=True`, HF `min_new_tokens=L`).

Two phases, each vLLM setting in its own subprocess (one engine per process, torn down
after), and in every subprocess HF is measured on the same points *just before* the
engine starts (vLLM's scheduler process polls even when idle, so HF is not timed beside a
live engine). Ratios are therefore side by side, within seconds, on the same noisy box.

1. settings sweep at one point (default 256 prompts × 64 tokens): OpenMP thread binding
   (`VLLM_CPU_OMP_THREADS_BIND`; vLLM's "auto" reserves one core per rank for its
   scheduler process, i.e. 1 of 2 cores here), eager vs compiled, float32 vs bfloat16,
   KV-cache size (`VLLM_CPU_KVCACHE_SPACE`);
2. grid (batch sizes × response lengths) with the best setting of phase 1 (or `--grid-setting`).

    .venv/bin/python benchmarks/rollout_throughput.py                        # defaults below
    .venv/bin/python benchmarks/rollout_throughput.py --size 1M --batch-sizes 1,16 --lengths 32 \
        --settings eager-fp32-auto,eager-fp32-all

Writes benchmarks/results/rollout_throughput.json and prints tables. vLLM timings include
its sampled-token logprobs (what PPO needs); HF's do not (generate returns tokens only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_llama, machine, prompts, table, write_result  # noqa: E402

# name → engine settings. bind: VLLM_CPU_OMP_THREADS_BIND ("auto" reserves a core for the
# scheduler: on this 2-core box the model then runs on ONE OpenMP thread; "all" = every CPU).
SETTINGS: dict[str, dict] = {
    "eager-fp32-auto": {"enforce_eager": True, "dtype": "float32", "bind": "auto", "kv_gib": 1},
    "eager-fp32-all": {"enforce_eager": True, "dtype": "float32", "bind": "all", "kv_gib": 1},
    "eager-fp32-all-kv4": {"enforce_eager": True, "dtype": "float32", "bind": "all", "kv_gib": 4},
    "compiled-fp32-all-kv4": {"enforce_eager": False, "dtype": "float32", "bind": "all", "kv_gib": 4},
    "eager-bf16-all-kv4": {"enforce_eager": True, "dtype": "bfloat16", "bind": "all", "kv_gib": 4},
    "compiled-bf16-all-kv4": {"enforce_eager": False, "dtype": "bfloat16", "bind": "all", "kv_gib": 4},
    "eager-fp32-auto-kv4": {"enforce_eager": True, "dtype": "float32", "bind": "auto", "kv_gib": 4},
    "compiled-fp32-auto-kv4": {"enforce_eager": False, "dtype": "float32", "bind": "auto", "kv_gib": 4},
    "compiled-bf16-auto-kv4": {"enforce_eager": False, "dtype": "bfloat16", "bind": "auto", "kv_gib": 4},
    "eager-bf16-auto-kv4": {"enforce_eager": True, "dtype": "bfloat16", "bind": "auto", "kv_gib": 4},
}
DEFAULT_SWEEP = ["eager-fp32-auto", "eager-fp32-all-kv4", "compiled-fp32-auto-kv4", "compiled-bf16-auto-kv4",
                 "eager-fp32-auto-kv4"]


# ----------------------------------------------------------------------------- worker
def hf_generate_fn(model_dir: str, dtype: str, threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()

    def run(texts: list[str], length: int, seed: int) -> int:
        enc = tok(texts, return_tensors="pt", padding=True)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=0.7, top_k=20, top_p=1.0,
                                 max_new_tokens=length, min_new_tokens=length, use_cache=True,
                                 pad_token_id=tok.pad_token_id)
        return int((out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0])

    return run


def worker(spec: dict) -> dict:
    """Measure HF then vLLM on `spec["points"]` for one setting; returns rows."""
    setting = SETTINGS[spec["setting"]]
    threads = spec.get("hf_threads") or len(os.sched_getaffinity(0))
    rows: list[dict] = []
    hf = hf_generate_fn(spec["model"], setting["dtype"], threads) if spec.get("hf", True) else None
    for b, length in spec["points"]:
        if hf is None:
            rows.append({"batch": b, "length": length})
            continue
        texts = prompts(b, seed=b)
        hf(texts[: min(b, 4)], min(length, 16), 0)  # warm-up
        t0 = time.perf_counter()
        ntok = hf(texts, length, 1)
        dt = time.perf_counter() - t0
        rows.append({"batch": b, "length": length, "hf_s": dt, "hf_tokens": ntok, "hf_tok_s": ntok / dt})
        print(f"  HF  {b:4d}×{length:<4d} {ntok / dt:9.1f} tok/s", flush=True)
    del hf
    import gc

    gc.collect()

    bind = setting["bind"]
    if bind == "all":
        bind = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    from vllm import SamplingParams

    from fgrlhf_ray.workers.rollout import VLLMRolloutEngine

    engine = VLLMRolloutEngine(model_path=spec["model"], dtype=setting["dtype"],
                               enforce_eager=setting["enforce_eager"], kv_cache_space_gib=setting["kv_gib"],
                               max_model_len=spec["max_model_len"], cpu_bind=bind, seed=0)
    startup = engine.startup_s
    print(f"  vLLM startup {startup:.1f}s", flush=True)

    def vgen(texts: list[str], length: int, seed: int) -> int:
        params = SamplingParams(n=1, temperature=0.7, top_k=20, top_p=1.0, max_tokens=length,
                                ignore_eos=True, logprobs=0, detokenize=False)
        outs = engine.llm.generate(texts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    vgen(prompts(8), 8, 0)  # warm-up
    for row in rows:
        b, length = row["batch"], row["length"]
        texts = prompts(b, seed=b)
        vgen(texts[: min(b, 4)], 4, 0)
        t0 = time.perf_counter()
        ntok = vgen(texts, length, 1)
        dt = time.perf_counter() - t0
        row.update(vllm_s=dt, vllm_tokens=ntok, vllm_tok_s=ntok / dt)
        if "hf_tok_s" in row:
            row["ratio"] = (ntok / dt) / row["hf_tok_s"]
        print(f"  vLLM {b:4d}×{length:<4d} {ntok / dt:9.1f} tok/s", flush=True)
    engine.shutdown()
    return {"setting": spec["setting"], **setting, "startup_s": startup, "rows": rows}


def calibrate(spec: dict) -> dict:
    """HF tokens/s at 64 prompts × 32 tokens with 1 thread and with every CPU."""
    out: dict[str, list[float]] = {}
    for threads in [1, len(os.sched_getaffinity(0))]:
        hf = hf_generate_fn(spec["model"], "float32", threads)
        hf(prompts(4), 8, 0)
        t0 = time.perf_counter()
        n = hf(prompts(64), 32, 1)
        out.setdefault(str(threads), []).append(n / (time.perf_counter() - t0))
    best = max(out, key=lambda k: max(out[k]))
    return {"setting": "calibrate", "hf_tok_s_by_threads": out, "best_threads": int(best)}


def run_worker(spec: dict, timeout_s: float) -> dict | None:
    """Run `worker(spec)` in a fresh process (own process group, killed on timeout)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", out]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"  setting {spec['setting']}: timed out after {timeout_s:.0f}s", flush=True)
        return None
    text = Path(out).read_text() if Path(out).exists() else ""
    Path(out).unlink(missing_ok=True)
    if proc.returncode != 0 or not text:
        print(f"  setting {spec['setting']}: worker failed (exit {proc.returncode})", flush=True)
        return None
    return json.loads(text)


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="25M", help="policy size: 1M, 10M, 25M, 50M, 100M (default 25M)")
    ap.add_argument("--batch-sizes", default="1,16,64,256")
    ap.add_argument("--lengths", default="32", help="grid response lengths, e.g. 32,128,256 (HF at batch 256 × 128 "
                    "takes ~10 min alone on a loaded 2-core box)")
    ap.add_argument("--settings", default=",".join(DEFAULT_SWEEP), help=f"sweep settings, of {list(SETTINGS)}")
    ap.add_argument("--sweep-point", default="256x64", help="BxL point for the settings sweep")
    ap.add_argument("--grid-setting", default="best", help="setting for the grid ('best' = fastest in the sweep)")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--worker-timeout", type=float, default=900)
    ap.add_argument("--hf-threads", default="auto",
                    help="torch threads for HF generate; 'auto' = the faster of 1 and all CPUs, measured first "
                         "(on a loaded box OpenMP barriers make 2 threads slower than 1)")
    ap.add_argument("--model-dir", default="/tmp/fgrlhf-bench/models")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        result = calibrate(spec) if spec.get("calibrate") else worker(spec)
        Path(args.worker_out).write_text(json.dumps(result))
        return 0

    batches = [int(x) for x in args.batch_sizes.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    sb, sl = (int(x) for x in args.sweep_point.lower().split("x"))
    model, nparams = build_llama(Path(args.model_dir) / f"llama-{args.size}", args.size)
    max_model_len = 64 + max(lengths + [sl])
    print(f"policy: random Llama {args.size} ({nparams / 1e6:.1f}M parameters) at {model}", flush=True)
    t_start = time.perf_counter()
    calibration = None
    if args.hf_threads == "auto":
        calibration = run_worker({"setting": "calibrate", "calibrate": True, "model": str(model)}, args.worker_timeout)
        hf_threads = calibration["best_threads"] if calibration else 1
        print(f"HF threads: {hf_threads} ({calibration})", flush=True)
    else:
        hf_threads = int(args.hf_threads)

    sweep: list[dict] = []
    grid: list[dict] = []
    grid_setting = args.grid_setting

    def save() -> None:
        write_result("rollout_throughput", {
            "description": "output tokens/s, vLLM engine vs HF generate, same random Llama, prompts, sampling "
                           "(T=0.7, top-k 20), exactly L new tokens; each setting in a fresh process, HF measured "
                           "in that process just before the engine starts",
            "policy": {"size": args.size, "parameters": nparams},
            "settings": {k: SETTINGS[k] for k in args.settings.split(",") if k in SETTINGS},
            "sweep_point": {"batch": sb, "length": sl},
            "hf_threads": hf_threads, "hf_thread_calibration": calibration,
            "sweep": sweep,
            "sweep_hf_fp32_tok_s": hf_ref,
            "sweep_note": "HF float32 measured in the first and last sweep process (same box, minutes apart); "
                          "every setting's ratio is against their mean",
            "grid_setting": grid_setting,
            "grid": grid,
            "wall_s": time.perf_counter() - t_start,
        }, args.out)

    names = [s for s in args.settings.split(",") if s]
    hf_ref: list[float] = []  # HF float32 at the sweep point, measured in the first and last sweep process
    for i, name in enumerate(names):
        with_hf = i in (0, len(names) - 1) and SETTINGS[name]["dtype"] == "float32"
        print(f"[sweep] {name} at {sb}×{sl}" + (" (+ HF)" if with_hf else ""), flush=True)
        res = run_worker({"setting": name, "model": str(model), "points": [[sb, sl]], "hf": with_hf,
                          "max_model_len": max_model_len, "hf_threads": hf_threads}, args.worker_timeout)
        if res:
            row = res["rows"][0]
            if "hf_tok_s" in row:
                hf_ref.append(row["hf_tok_s"])
            sweep.append({"setting": name, "bind": res["bind"], "eager": res["enforce_eager"],
                          "dtype": res["dtype"], "kv_gib": res["kv_gib"], "startup_s": res["startup_s"],
                          "hf_tok_s_here": row.get("hf_tok_s"), "vllm_tok_s": row["vllm_tok_s"]})
            hf_mean = sum(hf_ref) / len(hf_ref) if hf_ref else None
            for r in sweep:
                r["ratio_vs_hf_fp32"] = r["vllm_tok_s"] / hf_mean if hf_mean else None
            save()
    if sweep:
        table(sweep, ["setting", "bind", "eager", "dtype", "kv_gib", "startup_s", "vllm_tok_s", "hf_tok_s_here",
                      "ratio_vs_hf_fp32"],
              title=f"settings sweep at {sb} prompts × {sl} tokens (ratio = vLLM / HF float32 generate)")

    if sweep:
        save()
    if grid_setting == "best":
        grid_setting = max(sweep, key=lambda r: r["vllm_tok_s"])["setting"] if sweep else "eager-fp32-all-kv4"
    if not args.skip_grid:
        for n in lengths:  # one process per length, saved as it completes
            print(f"[grid] {grid_setting}: batches {batches} × length {n}", flush=True)
            res = run_worker({"setting": grid_setting, "model": str(model), "points": [[b, n] for b in batches],
                              "max_model_len": max_model_len, "hf_threads": hf_threads}, args.worker_timeout)
            if res:
                grid.extend(res["rows"])
                save()
        if grid:
            table(grid, ["batch", "length", "hf_tok_s", "vllm_tok_s", "ratio"],
                  title=f"grid, setting {grid_setting} (output tokens/s)")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
