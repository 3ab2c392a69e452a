"""Learn-phase profile: where the learner's time goes on the demo's PPO batch (one process, no Ray).

The learner (`fgrlhf_ray.workers.learner.PPOLearner`, DeepSpeed ZeRO-0 on CPU, gloo) is built
from `LearnerSettings` exactly as a rank of `fgrlhf train` is, with the demo's PPO settings
(`demo.DemoPPOSettings`: 1 epoch, minibatch 32, micro-batch 16), on a demo-shaped policy
(`TinyPolicyConfig`: Llama, hidden 128, 4 layers, BPE vocabulary of the synthetic world; its
weights are untrained, which does not change the time). The batch is the demo's: `--prompts`
synthetic-world prompts × `--samples` responses of random tokens, lengths uniform in
[`--min-len`, `--length`]. Per variant it reports the seconds of the two learner phases of a PPO
step — `compute_logprobs_and_values` (the "values" phase: no-grad policy + critic forwards) and
`train_step` (the "learn" phase) — as the median of `--repeats` runs, the padding share of the
batch, and, for the first variant, the top operators of one `train_step` (torch.profiler).

Each (code tree, variant) runs in its own process. `--before-tree DIR` (a `git worktree` of an
older commit) also runs every variant on that tree's `fgrlhf_ray` (via PYTHONPATH), one after the
other with the current tree's, on the same batch: the before/after rows of a learner change.

    .venv/bin/python benchmarks/learn_profile.py                       # all variants
    .venv/bin/python benchmarks/learn_profile.py --variants baseline,no_critic --repeats 3
    git worktree add /tmp/before <rev> && .venv/bin/python benchmarks/learn_profile.py --before-tree /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import run_worker_process, table, write_result  # noqa: E402

# Learner settings changed per variant, on top of the demo's (`settings_for`).
VARIANTS = {
    "baseline": {},  # the demo's: fp32, critic (GAE), micro-batch 16, torch threads = 2
    "no_critic": {"use_critic": False},  # the critic-free estimators (grpo, rloo, ...)
    "bf16": {"bf16": True},
    "micro_32": {"micro_batch_size": 32},
    "threads_1": {"threads": 1},
}


def prepare(work: Path, *, seed: int) -> tuple[str, list[str]]:
    """Synthetic-world prompts and an untrained demo-shaped policy saved in `work`."""
    from fgrlhf_ray.data.prompts import load_prompts
    from fgrlhf_ray.pipelines.demo import Stages, stage_data
    from fgrlhf_ray.pipelines.tiny_policy import TinyPolicyConfig, build_tiny_policy, save_policy, train_tokenizer

    stages = Stages(work, fresh=False)
    stages.run("data", {"n": 400, "seed": seed}, lambda d: stage_data(d, n=400, seed=seed))
    prompts = load_prompts(str(stages.dir("data") / "train.json"))
    policy = work / "policy"
    if not (policy / "config.json").is_file():
        config = TinyPolicyConfig()
        tokenizer = train_tokenizer(prompts, vocab_size=config.vocab_size,
                                    model_max_length=config.max_position_embeddings)
        save_policy(build_tiny_policy(tokenizer=tokenizer, config=config, seed=seed), tokenizer, policy)
    return str(policy), prompts


def demo_batch(policy: str, prompts: list[str], *, n_prompts: int, samples: int, length: int, min_len: int,
               seed: int):
    """The demo's PPO batch as an `Experience` (B = n_prompts × samples) and its padding share."""
    import torch
    from transformers import AutoTokenizer

    from fgrlhf_ray.algo.experience import pad_rollout
    from fgrlhf_ray.types import Experience, RolloutBatch

    tok = AutoTokenizer.from_pretrained(policy)
    rng = random.Random(seed)
    chosen = rng.sample(prompts, n_prompts)
    prompt_ids = [ids for p in chosen for ids in [tok(p)["input_ids"]] * samples]
    response_ids = [[rng.randrange(4, len(tok)) for _ in range(rng.randint(min_len, length))] for _ in prompt_ids]
    rb = RolloutBatch(prompts=[""] * len(prompt_ids), prompt_ids=prompt_ids, responses=[""] * len(prompt_ids),
                      response_ids=response_ids, logprobs=[[-2.0] * len(r) for r in response_ids],
                      prompt_index=[i // samples for i in range(len(prompt_ids))])
    pr = pad_rollout(rb, pad_token_id=tok.pad_token_id)
    B, T = pr.action_mask.shape
    g = torch.Generator().manual_seed(seed)
    per_token = {name: torch.randn(B, T, generator=g) * pr.action_mask
                 for name in ("ref_logprobs", "old_values", "rewards", "advantages", "returns")}
    exp = Experience(sequences=pr.sequences, attention_mask=pr.attention_mask, action_mask=pr.action_mask,
                     old_logprobs=pr.logprobs, **per_token)
    padding = 1.0 - float(pr.attention_mask.sum()) / pr.attention_mask.numel()
    return exp, {"B": B, "P": pr.sequences.shape[1] - T, "T": T, "padding_share": padding}


def settings_for(variant: str, policy: str):
    from fgrlhf_ray.pipelines.demo import DemoPPOSettings
    from fgrlhf_ray.workers.learner import LearnerSettings

    demo = DemoPPOSettings()
    changes = {k: v for k, v in VARIANTS[variant].items() if k != "threads"}
    base = dict(policy_path=policy, lr=demo.lr, critic_lr=demo.critic_lr, minibatch_size=demo.minibatch_size,
                micro_batch_size=16, ppo_epochs=demo.ppo_epochs, seed=0)
    return LearnerSettings(**{**base, **changes}), VARIANTS[variant].get("threads", demo.learner_cpus)


def measure(variant: str, policy: str, exp, *, repeats: int, profile: bool) -> dict:
    """Median seconds of the values and learn phases of one variant; top ops if `profile`."""
    import torch

    from fgrlhf_ray.workers.learner import PPOLearner

    settings, threads = settings_for(variant, policy)
    torch.set_num_threads(threads)
    learner = PPOLearner(settings=settings)
    values_s, learn_s = [], []
    for _ in range(repeats + 1):  # the first run warms up allocator and kernels: dropped
        t0 = time.perf_counter()
        learner.compute_logprobs_and_values(exp)
        values_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        learner.train_step(exp)
        learn_s.append(time.perf_counter() - t0)
    row = {"variant": variant, "threads": threads, "values_s": statistics.median(values_s[1:]),
           "learn_s": statistics.median(learn_s[1:])}
    row["values_plus_learn_s"] = row["values_s"] + row["learn_s"]
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            learner.train_step(exp)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        row["top_ops_learn"] = [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count}
                                for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]
    return row


def worker(spec: dict) -> dict:
    """One (tree, variant) measurement in this process (the tree is whatever `fgrlhf_ray` imports)."""
    import fgrlhf_ray

    policy, prompts = prepare(Path(spec["work"]), seed=spec["seed"])
    exp, shape = demo_batch(policy, prompts, n_prompts=spec["prompts"], samples=spec["samples"],
                            length=spec["length"], min_len=spec["min_len"], seed=spec["seed"])
    row = measure(spec["variant"], policy, exp, repeats=spec["repeats"], profile=spec["profile"])
    row.update(shape=shape, fgrlhf_ray=str(Path(fgrlhf_ray.__file__).parent))
    return row


def run_worker(spec: dict, tree: str | None) -> dict:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    row = run_worker_process(__file__, "--worker", spec, timeout_s=1800, env=env)
    row.pop("wall_s", None)
    return {"variant": spec["variant"], **row}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/fgrlhf-bench/learn")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--before-tree", default=None, help="also measure every variant on this checkout's code")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per step (demo: 64)")
    ap.add_argument("--samples", type=int, default=2, help="samples per prompt (demo: 2)")
    ap.add_argument("--length", type=int, default=64, help="max new tokens (demo: 64)")
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return 0
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    t_start = time.perf_counter()
    prepare(Path(args.work), seed=args.seed)  # once, before any timing
    trees = [("current", None)] + ([("before", str(Path(args.before_tree).resolve()))] if args.before_tree else [])
    rows = []
    for variant in variants:
        for label, tree in trees:
            spec = {"work": args.work, "seed": args.seed, "prompts": args.prompts, "samples": args.samples,
                    "length": args.length, "min_len": args.min_len, "repeats": args.repeats, "variant": variant,
                    "profile": not rows}
            row = {"tree": label, **run_worker(spec, tree), "load_avg_1m_after": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "top_ops_learn"}), flush=True)
    base = next((r for r in rows if "values_plus_learn_s" in r), None)
    for row in rows:
        if base and "values_plus_learn_s" in row:
            row["speedup_vs_first"] = base["values_plus_learn_s"] / row["values_plus_learn_s"]
    shape = base["shape"] if base else {}
    table(rows, ["tree", "variant", "threads", "values_s", "learn_s", "values_plus_learn_s", "speedup_vs_first"],
          title=f"learner phases of one demo PPO step (B={shape.get('B')}, P={shape.get('P')}, T={shape.get('T')})")
    if base and "top_ops_learn" in base:
        table(base["top_ops_learn"], ["op", "self_cpu_share", "calls"], title=f"top ops of train_step ({base['variant']})")
    write_result("learn_profile", {
        "description": "seconds of the learner's values phase (compute_logprobs_and_values) and learn phase "
                       "(train_step) on the demo's PPO batch, one process per (code tree, variant), median of "
                       "repeats after a warm-up, measured one after the other",
        "batch": shape, "before_tree": args.before_tree,
        "settings": {"prompts": args.prompts, "samples": args.samples, "length": args.length,
                     "min_len": args.min_len, "repeats": args.repeats}, "variants": VARIANTS,
        "rows": rows, "wall_s": time.perf_counter() - t_start,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
