"""PPO step breakdown and scaling, from real `fgrlhf train` runs.

Builds the demo's pipeline at a small, fixed size with the demo's own stage functions
(`fgrlhf_ray.pipelines.demo`: synthetic data, the demo-shaped tiny policy after a short SFT, the
four MiniLM-based reward models after a few optimizer steps — step time depends on the
architectures, not on how well they are trained), then runs `fgrlhf train` on the
config `demo.ppo_run_config` writes (fine-grained: relevance + factuality +
completeness scorer actors; holistic: one) and reads the per-phase timings from
`metrics.jsonl`:

    generate | score (slowest scorer) | reference | values | learn | sync | step

score, reference and values run concurrently (the controller fans them out), so their
wall time is `score_reference_values`, not the sum. The first step is dropped (warm-up);
the rest are averaged.

Points: the demo config (16 prompts × 2 samples, 64 new tokens) for both methods, plus
the fine-grained run at other batch sizes and response lengths (the scaling plot).

    .venv/bin/python benchmarks/ppo_step.py                            # defaults below
    .venv/bin/python benchmarks/ppo_step.py --batches 8,16,32 --lengths 32,64,128 --steps 4

Writes benchmarks/results/ppo_step.json and ppo_step.png. The policy is SFT'd for only
`--sft-steps` steps, so it rarely stops early: responses run to the length cap, which
makes these times an upper bound for that cap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, table, write_result  # noqa: E402

PHASES = ["generate", "score", "reference", "values", "score_reference_values", "learn", "sync", "step"]


def prepare(work: Path, *, n_questions: int, sft_steps: int, rm_steps: int, seed: int,
            threads: int | None = None) -> tuple[Path, str, dict]:
    """Data, policy and RMs through the demo's stage functions (cached in `work`)."""
    from fgrlhf_ray.pipelines.demo import PRESETS, DemoBudget, Stages, stage_data, stage_reward_models, stage_sft

    budget = DemoBudget(**{**PRESETS["default"].model_dump(), "n_questions": n_questions,
                           "sft_steps": sft_steps, "rm_steps": rm_steps, "rm_train_examples": 64})
    stages = Stages(work, fresh=False)
    stages.run("data", {"n": n_questions, "seed": seed}, lambda d: stage_data(d, n=n_questions, seed=seed))
    data_dir = stages.dir("data")
    _, sft = stages.run("sft", {"steps": sft_steps, "seed": seed},
                        lambda d: stage_sft(d, data_dir=data_dir, steps=sft_steps, seed=seed, num_threads=threads))
    # RMs of the demo's kinds and settings (MiniLM-3, segment features, factuality without passages)
    # trained briefly on the world's perturbation feedback: their quality does not change the timing.
    _, rms = stages.run("rm", {"steps": rm_steps, "seed": seed, "version": 2},
                        lambda d: stage_reward_models(d, train_path=str(data_dir / "train_feedback.json"),
                                                      dev_path=str(data_dir / "dev_feedback.json"), budget=budget,
                                                      seed=seed, num_threads=threads))
    return data_dir, sft["policy"], rms


# Variants of the demo point (`--variants`): config changes on top of demo.ppo_run_config.
VARIANTS = {
    "gae": {},
    "gae_async1": {"rollout": {"async_steps": 1}},
    "grpo": {"ppo": {"advantage_estimator": "grpo"}},
    "dr_grpo": {"ppo": {"advantage_estimator": "dr_grpo"}},
    "rloo": {"ppo": {"advantage_estimator": "rloo"}},
    "reinforce_pp": {"ppo": {"advantage_estimator": "reinforce_pp"}},
    "grpo_async1": {"ppo": {"advantage_estimator": "grpo"}, "rollout": {"async_steps": 1}},
}


def run_point(work: Path, *, method: str, prompts: int, samples: int, length: int, steps: int,
              data_dir: Path, policy: str, rms: dict, seed: int, timeout_s: float, reuse: bool = False,
              variant: str | None = None) -> dict:
    import yaml

    from fgrlhf_ray.pipelines.demo import PRESETS, DemoBudget, DemoPPOSettings, ppo_run_config

    budget = DemoBudget(**{**PRESETS["default"].model_dump(), "ppo_steps": steps, "eval_every": steps,
                           "prompts_per_step": prompts, "samples_per_prompt": samples, "max_new_tokens": length})
    run_dir = work / "runs" / (f"{method}-p{prompts}x{samples}-L{length}" + (f"-{variant}" if variant else ""))
    if reuse and (run_dir / "point.json").exists():
        print(f"  reusing {run_dir}", flush=True)
        return json.loads((run_dir / "point.json").read_text())
    if reuse and (run_dir / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if len(rows) >= steps:  # a finished run whose driver did not record its wall time
            print(f"  reusing {run_dir} (metrics only)", flush=True)
            point = {"method": method, "prompts": prompts, "samples": samples, "batch": prompts * samples,
                     "length": length, "run_wall_s": None, "exit": 0}
            summarize(point, rows, None)
            (run_dir / "point.json").write_text(json.dumps(point))
            return point
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cfg = ppo_run_config("learned", method, run_dir=run_dir, policy=policy, rms=rms, data_dir=data_dir, budget=budget,
                         ppo=DemoPPOSettings(), seed=seed)
    cfg["logging"]["tensorboard"] = False
    for section, values in VARIANTS.get(variant, {}).items():
        cfg.setdefault(section, {}).update(values)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "fgrlhf"), "train", "--config", str(run_dir / "config.yaml")],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    (run_dir / "train.log").write_text(proc.stdout + proc.stderr)
    point = {"method": method, "prompts": prompts, "samples": samples, "batch": prompts * samples,
             "length": length, "run_wall_s": wall, "exit": proc.returncode, "variant": variant}
    metrics_file = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()] if metrics_file.exists() else []
    if proc.returncode != 0 or not rows:
        point["error"] = (proc.stderr or proc.stdout)[-1500:]
        return point
    summarize(point, rows, wall)
    (run_dir / "point.json").write_text(json.dumps(point))
    return point


def summarize(point: dict, rows: list[dict], wall: float | None) -> None:
    """Mean per-phase seconds over the steps after the first (warm-up) into `point`."""
    used = rows[1:] or rows  # drop the warm-up step
    for ph in PHASES:
        vals = [r[f"time/{ph}"] for r in used if f"time/{ph}" in r]
        if vals:
            point[ph] = statistics.mean(vals)
    point["steps_measured"] = len(used)
    point["response_tokens_mean"] = statistics.mean(r.get("response_length/mean", float("nan")) for r in used)
    point["truncated_fraction"] = statistics.mean(r.get("rollout/truncated_fraction", float("nan")) for r in used)
    point["probe_gap_max"] = max((r.get("sync/probe_gap", 0.0) for r in used), default=None)
    point["sync_share"] = point.get("sync", 0.0) / point["step"]
    point["startup_s"] = wall - sum(r["time/step"] for r in rows) if wall else None


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if "step" in p and p["method"] == "fine_grained"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for length in sorted({p["length"] for p in ok}):
        pts = sorted((p for p in ok if p["length"] == length), key=lambda p: p["batch"])
        ax1.plot([p["batch"] for p in pts], [p["step"] for p in pts], "o-", label=f"{length} new tokens")
    ax1.set_xlabel("samples per step (prompts × samples)")
    ax1.set_ylabel("seconds per PPO step")
    ax1.set_title("fine-grained PPO step time")
    ax1.legend()
    ax1.grid(alpha=0.3)
    bars = [p for p in points if "step" in p]
    labels = [f"{p['method'][:4]}\n{p['batch']}×{p['length']}" for p in bars]
    bottom = [0.0] * len(bars)
    for ph in ["generate", "score_reference_values", "learn", "sync"]:
        vals = [p.get(ph, 0.0) for p in bars]
        ax2.bar(labels, vals, bottom=bottom, label=ph)
        bottom = [b + v for b, v in zip(bottom, vals)]
    other = [p["step"] - b for p, b in zip(bars, bottom)]
    ax2.bar(labels, other, bottom=bottom, label="other (assemble, probe, …)")
    ax2.set_ylabel("seconds")
    ax2.set_title("step breakdown (method, batch × length)")
    ax2.tick_params(axis="x", labelsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def finish(points: list[dict], args, t_start: float) -> None:
    table([p for p in points if "step" in p],
          ["method", "batch", "length", "generate", "score", "reference", "values", "score_reference_values",
           "learn", "sync", "step", "sync_share"], title="seconds per PPO step (mean over measured steps)")
    out_png = Path(args.out).with_suffix(".png") if args.out else RESULTS / "ppo_step.png"
    if any("step" in p for p in points):
        plot(points, out_png)
    write_result("ppo_step", {
        "description": "per-phase seconds of real `fgrlhf train` steps on the demo pipeline (demo.ppo_run_config), "
                       "first step dropped; score/reference/values run concurrently",
        "setup": {"n_questions": args.n_questions, "sft_steps": args.sft_steps, "rm_steps": args.rm_steps,
                  "rm_backbone": "all-MiniLM-L6-v2 cut to 3 layers (demo default)",
                  "policy": "demo shape: Llama hidden 128, 4 layers, vocab 2048", "steps_per_run": args.steps},
        "points": points, "plot": str(out_png.name), "wall_s": time.perf_counter() - t_start,
    }, args.out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/fgrlhf-bench/ppo")
    ap.add_argument("--n-questions", type=int, default=200)
    ap.add_argument("--sft-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the SFT / RM preparation (1: on a loaded box 2 threads thrash)")
    ap.add_argument("--rm-steps", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2, help="samples per prompt (demo: 2)")
    ap.add_argument("--demo-prompts", type=int, default=16, help="prompts per step of the demo point (demo: 16)")
    ap.add_argument("--demo-length", type=int, default=64, help="max new tokens of the demo point (demo: 64)")
    ap.add_argument("--batches", default="8,32", help="extra prompts-per-step values (fine-grained, demo length)")
    ap.add_argument("--lengths", default="32,128", help="extra response lengths (fine-grained, demo batch)")
    ap.add_argument("--no-holistic", action="store_true")
    ap.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first is dropped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-timeout", type=float, default=900)
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs (point.json) in --work")
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", default=None,
                    help=f"only the fine-grained demo point, once per variant (comma list of {', '.join(VARIANTS)}); "
                         "e.g. --variants gae,grpo,gae_async1 --out benchmarks/results/ppo_step_estimators.json")
    args = ap.parse_args()

    t_start = time.perf_counter()
    work = Path(args.work)
    data_dir, policy, rms = prepare(work, n_questions=args.n_questions, sft_steps=args.sft_steps,
                                    rm_steps=args.rm_steps, seed=args.seed, threads=args.threads)
    print(f"prepared in {time.perf_counter() - t_start:.0f}s: policy {policy}", flush=True)
    if args.variants:
        return run_variants(work, args, data_dir, policy, rms, t_start)
    plan = [("fine_grained", args.demo_prompts, args.demo_length)]
    if not args.no_holistic:
        plan.append(("holistic", args.demo_prompts, args.demo_length))
    plan += [("fine_grained", int(b), args.demo_length) for b in args.batches.split(",") if b]
    plan += [("fine_grained", args.demo_prompts, int(n)) for n in args.lengths.split(",") if n]
    points = []
    for method, prompts, length in plan:
        print(f"[run] {method} {prompts} prompts × {args.samples} samples, {length} tokens", flush=True)
        try:
            p = run_point(work, method=method, prompts=prompts, samples=args.samples, length=length,
                          steps=args.steps, data_dir=data_dir, policy=policy, rms=rms, seed=args.seed,
                          timeout_s=args.run_timeout, reuse=args.reuse)
        except subprocess.TimeoutExpired:
            p = {"method": method, "prompts": prompts, "batch": prompts * args.samples, "length": length,
                 "error": f"timed out after {args.run_timeout}s"}
        points.append(p)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in p.items() if k != "error"},
              p.get("error", "")[-800:], flush=True)
        finish(points, args, t_start)
    finish(points, args, t_start)
    return 0


def run_variants(work: Path, args, data_dir: Path, policy: str, rms: dict, t_start: float) -> int:
    """The fine-grained demo point under each variant, one after the other on the same machine."""
    points = []
    for variant in args.variants.split(","):
        print(f"[run] fine_grained demo point, variant {variant}", flush=True)
        p = run_point(work, method="fine_grained", prompts=args.demo_prompts, samples=args.samples,
                      length=args.demo_length, steps=args.steps, data_dir=data_dir, policy=policy, rms=rms,
                      seed=args.seed, timeout_s=args.run_timeout, reuse=args.reuse, variant=variant)
        p["load_avg_1m_after"] = os.getloadavg()[0]
        points.append(p)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in p.items() if k != "error"},
              p.get("error", "")[-800:], flush=True)
    base = next((p for p in points if p.get("variant") == "gae" and "step" in p), None)
    for p in points:
        if base and "step" in p:
            p["speedup_vs_gae"] = base["step"] / p["step"]
    table([p for p in points if "step" in p],
          ["variant", "generate", "score_reference_values", "values", "learn", "sync", "step", "speedup_vs_gae"],
          title="seconds per fine-grained demo PPO step, by variant (mean over measured steps)")
    write_result("ppo_step_estimators", {
        "description": "fine-grained demo PPO step (demo.ppo_run_config) per advantage estimator and "
                       "rollout.async_steps, measured one after the other in one process on this machine; "
                       "first step dropped",
        "setup": {"n_questions": args.n_questions, "steps_per_run": args.steps, "prompts": args.demo_prompts,
                  "samples": args.samples, "length": args.demo_length, "variants": VARIANTS},
        "points": points, "wall_s": time.perf_counter() - t_start,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
