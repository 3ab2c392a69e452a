"""Audit-judge overhead, and the reward diagnostics on a real run, from `fgrlhf train`.

The demo's SFT policy (copied, so a concurrent demo cannot change it mid-run) answers the
demo's synthetic questions; three reward models score it: `blind` (the builtin
`every_sentence_fine`, every sentence "no_error": a blind RM on purpose), the oracle's own
`factuality` (a perfect sentence RM) and the oracle's `completeness` (sequence), as function
scorers (`fgrlhf_ray.data.oracle_scorers`). The audit judge is the oracle's factuality.

Three runs, same seed and settings:

    off        no audit
    on         audit 25% of every step's samples (the issue's setting)
    alternate  audit 25% of every second step: audited and unaudited steps of one run side by side

The overhead is measured three ways: mean step time of `on` vs `off` (steps 2.., the first is
warm-up); audited vs unaudited steps within `alternate`; and the controller's own critical-path
time for the audit (`time/audit`: sampling, submit, poll, agreement). On a busy 2-core box the
first two carry the noise of everything else running; the third does not.

    .venv/bin/python benchmarks/audit_overhead.py [--steps 10 --prompts 32 --samples 2]

Writes benchmarks/results/audit_overhead.json; the `on` run (metrics.jsonl, warnings.jsonl,
audit.jsonl) stays in --out-dir for `scripts/plot_reward_diagnostics.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, table, write_result  # noqa: E402

ORACLE = "fgrlhf_ray.data.oracle_scorers"


def run_config(args, run_dir: Path, policy: Path, audit: dict | None) -> dict:
    def fn(name, target, density, weight):
        return {"name": name, "kind": "function", "target": target, "density": density, "weight": weight,
                "num_cpus": 0.25}

    config = {
        "seed": 0,
        "policy": {"model_path": str(policy)},
        "rollout": {"num_engines": 1, "max_model_len": 512, "kv_cache_space_gib": 1,
                    "sampling": {"max_new_tokens": args.max_new_tokens, "n_samples_per_prompt": args.samples}},
        "reward_models": [fn("blind", "fgrlhf_ray.rewards.builtin:every_sentence_fine", "sentence", 0.3),
                          fn("factuality", f"{ORACLE}:factuality", "sentence", 0.5),
                          fn("completeness", f"{ORACLE}:completeness", "sequence", 0.3)],
        "ppo": {"total_steps": args.steps, "prompts_per_step": args.prompts, "ppo_epochs": 2,
                "minibatch_size": min(16, args.prompts * args.samples), "lr": 2e-5, "critic_lr": 1e-4},
        "learner": {"micro_batch_size": 8},
        "data": {"train_file": str(args.data)},
        "logging": {"dir": str(run_dir), "tensorboard": False},
    }
    if audit is not None:
        config["audit"] = {"judge": fn("oracle", f"{ORACLE}:factuality", "sentence", 0.0), **audit}
    return config


def train(config: dict, run_dir: Path) -> list[dict]:
    import yaml

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "train", "--config", str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    (run_dir.parent / f"{run_dir.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{run_dir.name}: fgrlhf train failed ({proc.returncode}); see {run_dir}.log\n"
                         + proc.stderr[-3000:])
    print(f"{run_dir.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def mean(xs):
    return statistics.fmean(xs) if xs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default=str(ROOT / "outputs/demo/sft/policy"))
    p.add_argument("--data", default=str(ROOT / "outputs/demo/data/train.json"))
    p.add_argument("--out-dir", default=str(ROOT / "outputs/audit_bench"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample-rate", type=float, default=0.25)
    p.add_argument("--variants", default="off,on,alternate")
    args = p.parse_args()
    out = Path(args.out_dir)
    policy = out / "policy"
    if not policy.exists():
        shutil.copytree(args.policy, policy)
    audits = {"off": None, "on": {"sample_rate": args.sample_rate, "every": 1},
              "alternate": {"sample_rate": args.sample_rate, "every": 2}}
    runs = {v: train(run_config(args, out / v, policy, audits[v]), out / v) for v in args.variants.split(",")}

    rows, summary = [], {}
    for name, metrics in runs.items():
        steady = [m for m in metrics if m["step"] > 1]
        row = {"run": name, "steps": len(metrics), "step_s": mean([m["time/step"] for m in steady]),
               "step_s_std": statistics.pstdev([m["time/step"] for m in steady]),
               "audit_critical_path_s": mean([m.get("time/audit", 0.0) for m in steady]),
               "judge_s": mean([m["audit/judge_s"] for m in metrics if "audit/judge_s" in m]),
               "judge_latency_s": mean([m["audit/latency_s"] for m in metrics if "audit/latency_s" in m]),
               "lag_steps": mean([m["audit/lag_steps"] for m in metrics if "audit/lag_steps" in m]),
               "skipped": sum(m.get("audit/skipped", 0.0) for m in metrics)}
        rows.append(row)
        summary[name] = row
    if "off" in summary and "on" in summary:
        off, on = summary["off"]["step_s"], summary["on"]["step_s"]
        summary["overhead_on_vs_off_pct"] = 100 * (on - off) / off
        summary["critical_path_pct_of_step"] = 100 * summary["on"]["audit_critical_path_s"] / on
    if "alternate" in runs:
        steady = [m for m in runs["alternate"] if m["step"] > 1]
        audited = mean([m["time/step"] for m in steady if m.get("audit/submitted")])
        plain = mean([m["time/step"] for m in steady if not m.get("audit/submitted")])
        summary["alternate_audited_step_s"], summary["alternate_plain_step_s"] = audited, plain
        if audited and plain:
            summary["overhead_audited_vs_plain_pct"] = 100 * (audited - plain) / plain
    table(rows, title=f"audit overhead at sample rate {args.sample_rate} ({args.prompts}×{args.samples} samples, "
                      f"{args.max_new_tokens} new tokens)")
    print({k: v for k, v in summary.items() if not isinstance(v, dict)})
    write_result("audit_overhead", {"settings": vars(args), "runs": rows, "summary": summary})


if __name__ == "__main__":
    main()
