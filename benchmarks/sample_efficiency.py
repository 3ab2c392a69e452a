"""Sample efficiency (paper A's central claim) on the synthetic fact-QA world: the oracle's
error rate vs PPO steps and vs wall time, fine-grained vs holistic rewards, several seeds.

Drives the demo pipeline (`fgrlhf_ray.pipelines.demo.run_demo`; stages are cached, so data, SFT and
reward models are built once and shared by every seed and method) with `--seeds` PPO
seeds, then reads each run's oracle curve (`results.json` → curves) and its per-step
wall times (`ppo/<method>/seed<k>/stage.json` → `time/step`).

Reported per method: mean ± std over seeds of the oracle error rate (default metric
`frac_with_any_error`: share of test answers with at least one error) at every evaluated
step; the holistic run's final mean error as the target; the first step (and wall time)
at which each method's mean reaches it. Plot: error vs steps and vs wall seconds.

    .venv/bin/python benchmarks/sample_efficiency.py                       # small: see --help
    .venv/bin/python benchmarks/sample_efficiency.py --preset default --seeds 0,1,2   # the demo's sizes (hours)

`--from-demo DIR` analyses a finished `fgrlhf demo --seeds 0 1 2` folder without training.
`--reuse DIR` points at an existing demo output folder whose data/sft/rm stages match the
chosen preset (e.g. outputs/demo after `make demo`); they are copied, not modified.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, table, write_result  # noqa: E402


def curves_with_time(out: Path, results: dict, metric: str) -> dict[str, dict[str, list[dict]]]:
    """method → seed → [{step, value, wall_s}] (wall_s = cumulative PPO seconds at that step)."""
    res: dict[str, dict[str, list[dict]]] = {}
    for method, by_seed in results["curves"].items():
        res[method] = {}
        for seed, points in by_seed.items():
            stage = json.loads((out / "ppo" / method / f"seed{seed}" / "stage.json").read_text())
            step_times = {int(m["step"]): m["time/step"] for m in stage["result"]["train_metrics"]}
            cum, acc = {0: 0.0}, 0.0
            for s in sorted(step_times):
                acc += step_times[s]
                cum[s] = acc
            res[method][seed] = [{"step": p["step"], "value": p[metric], "wall_s": cum.get(p["step"])}
                                 for p in points]
    return res


def aggregate(curves: dict[str, dict[str, list[dict]]]) -> dict[str, list[dict]]:
    agg = {}
    for method, by_seed in curves.items():
        steps = sorted({p["step"] for pts in by_seed.values() for p in pts})
        rows = []
        for s in steps:
            vals = [p["value"] for pts in by_seed.values() for p in pts if p["step"] == s]
            walls = [p["wall_s"] for pts in by_seed.values() for p in pts if p["step"] == s and p["wall_s"] is not None]
            rows.append({"step": s, "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                         "n": len(vals), "wall_s": statistics.fmean(walls) if walls else None})
        agg[method] = rows
    return agg


def plot(agg: dict[str, list[dict]], target: float, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, rows in agg.items():
        for ax, x in zip(axes, ("step", "wall_s")):
            xs = [r[x] for r in rows if r[x] is not None]
            ms = [r["mean"] for r in rows if r[x] is not None]
            ss = [r["std"] for r in rows if r[x] is not None]
            ax.plot(xs, ms, "o-", label=method)
            ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)], alpha=0.2)
    for ax, xl in zip(axes, ("PPO steps", "PPO wall seconds (mean over seeds)")):
        ax.axhline(target, color="grey", ls="--", lw=1, label="holistic final (target)")
        ax.set_xlabel(xl)
        ax.set_ylabel(f"oracle {metric} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"fine-grained vs holistic PPO, mean ± std over {agg[next(iter(agg))][-1]['n']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def train(out: Path, args: argparse.Namespace) -> tuple[dict, dict, list[int], float]:
    """Run the demo pipeline with `args`' preset, budget and seeds into `out`.
    Returns (results.json content, budget, seeds, wall seconds)."""
    from fgrlhf_ray.pipelines.demo import PRESETS, DemoConfig, run_demo

    if args.reuse:
        for stage in ("data", "sft", "rm"):
            src, dst = Path(args.reuse) / stage, out / stage
            if (src / "stage.json").exists() and not dst.exists():
                shutil.copytree(src, dst)
    budget = PRESETS[args.preset].model_dump()
    for kv in args.budget:
        k, v = kv.split("=", 1)
        budget[k] = type(budget[k])(v)
    config = DemoConfig.model_validate({"out": str(out), "preset": args.preset, "budget": budget,
                                        "ppo_seeds": [int(s) for s in args.seeds.split(",")],
                                        "num_threads": args.num_threads})
    t0 = time.perf_counter()
    results = run_demo(config)
    return results, budget, config.ppo_seeds, time.perf_counter() - t0


def from_demo(out: Path) -> tuple[dict, dict, list[int], str]:
    """A finished `fgrlhf demo --seeds ...` folder: (results, budget, seeds, preset); nothing runs."""
    from fgrlhf_ray.pipelines.demo import PRESETS

    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    preset = config.get("preset", "default")
    budget = results.get("budget") or config.get("budget") or PRESETS[preset].model_dump()
    return results, budget, list(config["ppo_seeds"]), preset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="/tmp/fgrlhf-bench/sample_efficiency")
    ap.add_argument("--preset", default="default", choices=["default", "quick"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", nargs="*", default=["ppo_steps=8", "eval_every=2", "prompts_per_step=8",
                                                    "n_eval_prompts=64"],
                    help="DemoBudget overrides key=value (default: a small run; [] = the preset's sizes)")
    ap.add_argument("--metric", default="frac_with_any_error")
    ap.add_argument("--reuse", default=None, help="copy data/sft/rm stages from this demo output folder")
    ap.add_argument("--from-demo", default=None,
                    help="analyse a finished `fgrlhf demo --seeds ...` output folder (its results.json and "
                         "per-run stage.json) instead of training")
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if args.from_demo:
        out = Path(args.from_demo)
        results, budget, seeds, preset = from_demo(out)
        wall = None
    else:
        out, preset = Path(args.out_dir), args.preset
        results, budget, seeds, wall = train(out, args)
    curves = curves_with_time(out, results, args.metric)
    agg = aggregate(curves)
    target = agg["holistic"][-1]["mean"]
    reach = {}
    for method, rows in agg.items():
        hit = next((r for r in rows if r["step"] > 0 and r["mean"] <= target), None)
        reach[method] = {"step": hit["step"] if hit else None, "wall_s": hit["wall_s"] if hit else None}
    table([{"method": m, "step": r["step"], "mean": r["mean"], "std": r["std"], "seeds": r["n"], "wall_s": r["wall_s"]}
           for m, rows in agg.items() for r in rows], title=f"oracle {args.metric} (mean ± std over seeds)")
    table([{"method": m, "target": target, **v} for m, v in reach.items()],
          title="first evaluated step where the mean reaches holistic's final value")
    png = RESULTS / "sample_efficiency.png" if not args.out else Path(args.out).with_suffix(".png")
    plot(agg, target, args.metric, png)
    write_result("sample_efficiency", {
        "description": "oracle error rate vs PPO steps / wall time, fine-grained vs holistic, demo pipeline",
        "source": str(out), "preset": preset, "budget": budget, "seeds": seeds, "metric": args.metric,
        "target_holistic_final": target, "steps_to_target": reach, "aggregate": agg, "curves": curves,
        "summary": results.get("summary"), "verdict": results.get("verdict"), "stage_seconds": results.get("stage_seconds"),
        "plot": png.name, "wall_s": wall,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
