"""The demo's RM-data choice measured: reward models trained on the SFT policy's own annotated
samples vs on perturbed gold answers vs both, judged on held-out policy answers of test
questions (and on perturbed test answers) — issue 16's "perturbations as an option with a
measured effect".

Reuses a finished demo's data, SFT and samples stages (`--demo outputs/demo`), trains the chosen
RMs once per data choice with the demo's settings (`fgrlhf_ray.pipelines.demo.rm_train_config`) and writes
benchmarks/results/demo_rm_data.json with the machine's load.

    .venv/bin/python benchmarks/demo_rm_data.py --demo outputs/demo --rms relevance factuality
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from fgrlhf_ray.pipelines import demo as D


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="outputs/demo", help="a demo output folder with data/, samples/ finished")
    ap.add_argument("--rms", nargs="+", default=list(D.RM_TASKS), choices=list(D.RM_TASKS))
    ap.add_argument("--choices", nargs="+", default=["policy", "perturbations", "mixed"])
    ap.add_argument("--work", default="outputs/bench_rm_data")
    ap.add_argument("--out", default="benchmarks/results/demo_rm_data.json")
    args = ap.parse_args()
    demo, work = Path(args.demo), Path(args.work)
    samples = json.loads((demo / "samples" / "stage.json").read_text())["result"]
    budget = D.DemoConfig().sizes()
    results: dict = {"load_before": os.getloadavg(), "budget": budget.model_dump(), "choices": {}}
    for choice in args.choices:
        d = work / choice
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        train, dev = D.rm_data_files(d, rm_data=choice, samples=samples, data_dir=demo / "data")
        rms = D.stage_reward_models(d, train_path=train, dev_path=dev, budget=budget, seed=0, num_threads=None,
                                    names=args.rms)
        quality = D.stage_rm_quality(d, rms=rms, policy_test=samples["files"]["test"],
                                     perturbation_test=str(demo / "data" / "test_feedback.json"))
        results["choices"][choice] = {"seconds": time.perf_counter() - t0, "quality": quality}
        for name, q in quality.items():
            m = q["metric"]
            print(f"{choice:14s} {name:12s} {m} policy samples {q['policy_samples'].get(m, float('nan')):.3f} "
                  f"perturbations {q['perturbations'].get(m, float('nan')):.3f}", flush=True)
    results["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
