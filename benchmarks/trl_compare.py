"""Peer comparison: our trainer (`fgrlhf train`, holistic and fine-grained rewards) vs TRL's
`GRPOTrainer` (TRL 1.16 has no PPO trainer), on this machine, same everything we can hold
equal:

- policy: the demo's tiny Llama after a short SFT ("tiny") and a larger one built and SFT'd
  the same way ("large", ~40M parameters by default) — same folder for both trainers;
- prompts: the synthetic fact-QA training prompts (`demo.stage_data`), same order source;
- reward: `bench_rewards.grounded_holistic` — one number per response — for ours-holistic and
  TRL; ours-fine-grained gets the same signal per sentence
  (`fgrlhf_ray.rewards.builtin.prompt_grounded_sentences`);
- samples per prompt, response length, sampling (T 0.7, top-k 20), learning rate, KL coefficient,
  one optimisation pass per batch in minibatches of 16, and the episode budget.

TRL is used as its documentation shows: `GRPOConfig` + `GRPOTrainer(model=<folder>,
reward_funcs=<callable>, train_dataset=<datasets.Dataset with "prompt">)`, generation with
HF `generate` on CPU (`use_vllm=False`). Ours runs its full Ray stack (vLLM-CPU engine, scorer
actors, reference actor, DeepSpeed learner): `ours-holistic` / `ours-fine_grained` are PPO with a
critic (GAE); `ours-grpo` is GRPO on TRL's holistic reward with no critic — the same algorithm as
TRL, so the like-for-like speed row; `ours-grpo_fine_grained` is GRPO on the per-sentence reward.

Reported per (policy, length): wall seconds per 1k episodes in steady state (first
generation batch dropped for both), total wall time including start-up, and the final
policy's mean reward on 32 held-out prompts (HF sampling, same settings, same scorer).

    .venv/bin/python benchmarks/trl_compare.py                              # defaults below
    .venv/bin/python benchmarks/trl_compare.py --policies tiny,large --lengths 64,256 --episodes 256
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, count_params, run_worker_process, table, write_result  # noqa: E402

LARGE = {"vocab_size": 2048, "hidden_size": 640, "num_layers": 8, "num_heads": 10, "intermediate_size": 1728,
         "max_position_embeddings": 768, "tie_word_embeddings": False}


# Our systems: (reward, advantage estimator). `ours-grpo` is TRL's algorithm on TRL's reward (one
# number per response, group-normalised, no critic): the like-for-like speed comparison.
SYSTEMS = {"ours-holistic": ("holistic", "gae"), "ours-fine_grained": ("fine_grained", "gae"),
           "ours-grpo": ("holistic", "grpo"), "ours-grpo_fine_grained": ("fine_grained", "grpo")}
REWARDS = {
    "holistic": {"name": "grounded", "kind": "function", "density": "sequence", "weight": 1.0,
                 "target": "bench_rewards:grounded_holistic", "num_cpus": 0.5},
    # The same signal per sentence.
    "fine_grained": {"name": "grounded", "kind": "function", "density": "sentence", "weight": 1.0,
                     "target": "fgrlhf_ray.rewards.builtin:prompt_grounded_sentences", "num_cpus": 0.5},
}


def prepare(work: Path, *, policies: list[str], sft_steps: int, seed: int, n_questions: int) -> tuple[Path, dict]:
    from fgrlhf_ray.pipelines.demo import Stages, stage_data, stage_sft
    from fgrlhf_ray.pipelines.sft import SFTConfig, SFTEvalConfig, run_sft

    stages = Stages(work, fresh=False)
    stages.run("data", {"n": n_questions, "seed": seed}, lambda d: stage_data(d, n=n_questions, seed=seed))
    data_dir = stages.dir("data")
    out = {}
    if "tiny" in policies:
        _, sft = stages.run("sft", {"steps": sft_steps, "seed": seed},
                            lambda d: stage_sft(d, data_dir=data_dir, steps=sft_steps, seed=seed, num_threads=1))
        out["tiny"] = sft["policy"]
    if "large" in policies:
        def large(d: Path) -> dict:
            cfg = SFTConfig(data_dir=str(data_dir), output_dir=str(d / "policy"), synthesize_if_missing=False,
                            seed=seed, epochs=1000, max_steps=sft_steps, batch_size=16, lr=1e-3,
                            warmup_steps=min(30, sft_steps // 4), prompt_loss_weight=0.3, max_answer_tokens=96,
                            num_threads=1, policy=LARGE, eval=SFTEvalConfig(n_prompts=0))
            return {"policy": str(run_sft(cfg).output_dir)}

        _, sft = stages.run("sft_large", {"steps": sft_steps, "seed": seed, "shape": LARGE}, large)
        out["large"] = sft["policy"]
    return data_dir, out


# ----------------------------------------------------------------------------- ours
def run_ours(work: Path, *, method: str, policy: str, data_dir: Path, prompts: int, samples: int, length: int,
             steps: int, lr: float, kl: float, seed: int, timeout_s: float) -> dict:
    import shutil

    import yaml

    from fgrlhf_ray.pipelines.demo import PRESETS, DemoBudget, DemoPPOSettings, ppo_run_config

    run_dir = work / "runs" / f"ours-{method}-{Path(policy).parent.name}-L{length}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    budget = DemoBudget(**{**PRESETS["default"].model_dump(), "ppo_steps": steps, "eval_every": steps,
                           "prompts_per_step": prompts, "samples_per_prompt": samples, "max_new_tokens": length})
    dummy = {n: {"path": ""} for n in ("relevance", "factuality", "completeness", "holistic")}
    cfg = ppo_run_config("learned", "fine_grained", run_dir=run_dir, policy=policy, rms=dummy, data_dir=data_dir,
                         budget=budget, seed=seed,
                         ppo=DemoPPOSettings(lr=lr, critic_lr=lr, kl_coef=kl, ppo_epochs=1, minibatch_size=16))
    reward, estimator = SYSTEMS[f"ours-{method}"]
    cfg["reward_models"] = [REWARDS[reward]]
    cfg["ppo"]["advantage_estimator"] = estimator
    max_pos = json.loads((Path(policy) / "config.json").read_text())["max_position_embeddings"]
    cfg["rollout"]["max_model_len"] = max_pos
    cfg["data"]["max_prompt_tokens"] = max_pos - length
    cfg["logging"]["tensorboard"] = False
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "fgrlhf"), "train", "--config", str(run_dir / "config.yaml")],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    (run_dir / "train.log").write_text(proc.stdout + proc.stderr)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (run_dir / "metrics.jsonl").exists() else []
    res = {"system": f"ours-{method}", "total_wall_s": wall, "exit": proc.returncode, "steps": len(rows)}
    if proc.returncode != 0 or not rows:
        res["error"] = (proc.stderr or proc.stdout)[-1500:]
        return res
    steady = rows[1:] or rows
    eps = prompts * samples
    res["s_per_1k_episodes"] = 1000 * sum(r["time/step"] for r in steady) / (eps * len(steady))
    res["train_reward_first"] = rows[0].get("reward/grounded_mean", rows[0].get("reward/total_mean"))
    res["train_reward_last"] = rows[-1].get("reward/grounded_mean", rows[-1].get("reward/total_mean"))
    ckpts = sorted((run_dir / "checkpoints").glob("step_*/policy"))
    res["final_policy"] = str(ckpts[-1]) if ckpts else None
    return res


# ----------------------------------------------------------------------------- TRL
def trl_worker(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench_rewards import trl_reward
    from fgrlhf_ray.data.prompts import load_prompts

    torch.set_num_threads(spec["threads"])
    prompts = load_prompts(spec["train_file"])
    tok = AutoTokenizer.from_pretrained(spec["policy"])
    ds = Dataset.from_dict({"prompt": prompts})
    batch = spec["prompts"] * spec["samples"]
    mb = min(16, batch)
    kwargs = dict(output_dir=spec["out"], per_device_train_batch_size=mb, steps_per_generation=batch // mb,
                  num_generations=spec["samples"], max_completion_length=spec["length"], temperature=0.7, top_k=20,
                  top_p=1.0, learning_rate=spec["lr"], beta=spec["kl"], num_iterations=1,
                  max_steps=spec["optimizer_steps"], logging_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, bf16=False, seed=spec["seed"], dataloader_num_workers=0,
                  lr_scheduler_type="constant")
    cfg = GRPOConfig(**{k: v for k, v in kwargs.items() if k in GRPOConfig.__dataclass_fields__})

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=spec["policy"], reward_funcs=trl_reward, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[Stamp()])
    t_init = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    trainer.save_model(spec["out"] + "/final")
    tok.save_pretrained(spec["out"] + "/final")
    per_gen = batch // mb  # optimizer steps per generation batch
    steady = stamps[per_gen - 1:]  # drop the first generation batch (warm-up)
    n_steady = len(steady) - 1
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"init_s": t_init, "train_s": train_s, "optimizer_steps": len(stamps),
            "s_per_1k_episodes": 1000 * (steady[-1] - steady[0]) / (n_steady * mb) if n_steady > 0 else None,
            "train_reward_first": logs[0]["reward"] if logs else None,
            "train_reward_last": logs[-1]["reward"] if logs else None,
            "final_policy": spec["out"] + "/final"}


def run_trl(work: Path, *, policy: str, data_dir: Path, prompts: int, samples: int, length: int, episodes: int,
            lr: float, kl: float, seed: int, timeout_s: float, threads: int) -> dict:
    out = work / "runs" / f"trl-grpo-{Path(policy).parent.name}-L{length}-t{threads}"  # one folder per thread count
    spec = {"policy": policy, "train_file": str(data_dir / "train.json"), "prompts": prompts, "samples": samples,
            "length": length, "optimizer_steps": episodes // min(16, prompts * samples), "lr": lr, "kl": kl,
            "seed": seed, "out": str(out), "threads": threads}
    res = _subprocess_worker("--trl-worker", spec, timeout_s)
    res["system"] = "trl-grpo"
    if "train_s" in res:
        res["total_wall_s"] = res.pop("wall_s")
    return res


def _subprocess_worker(flag: str, spec: dict, timeout_s: float) -> dict:
    return run_worker_process(__file__, flag, spec, timeout_s=timeout_s)


# ----------------------------------------------------------------------------- evaluation
def eval_worker(spec: dict) -> dict:
    """Mean grounded_holistic reward of each policy on held-out prompts (HF sampling)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench_rewards import grounded_holistic
    from fgrlhf_ray.data.prompts import load_prompts

    torch.set_num_threads(1)
    prompts = load_prompts(spec["dev_file"])[: spec["n"]]
    out = {}
    for name, path in spec["policies"].items():
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        enc = tok(prompts, return_tensors="pt", padding=True)
        torch.manual_seed(spec["seed"])
        with torch.inference_mode():
            gen = model.generate(**enc, do_sample=True, temperature=0.7, top_k=20, max_new_tokens=spec["length"],
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out[name] = statistics.mean(grounded_holistic(prompts, texts))
    return out


def finish(rows: list[dict], args, t_start: float) -> None:
    table(rows, ["policy", "parameters", "length", "key", "s_per_1k_episodes", "speedup_vs_trl", "total_wall_s",
                 "train_reward_first", "train_reward_last", "final_reward_eval"],
          title=f"ours vs TRL GRPO: {args.prompts} prompts × {args.samples} samples per batch, "
                f"{args.episodes} episodes per run")
    write_result("trl_compare", {
        "description": "wall time per 1k episodes (steady state, first generation batch dropped) and final reward "
                       "(grounded_holistic on held-out prompts), ours (fgrlhf train: vLLM + PPO with critic, or GRPO "
                       "without one for ours-grpo*) vs "
                       "TRL GRPOTrainer (HF generate on CPU), same policy/prompts/reward/sampling/budget",
        "settings": {k: getattr(args, k) for k in ("prompts", "samples", "episodes", "lr", "kl", "sft_steps", "seed",
                                                    "trl_threads")},
        "large_policy_shape": LARGE, "rows": rows, "wall_s": time.perf_counter() - t_start,
    }, args.out)


def run_setting(rows: list[dict], args, *, work: Path, data_dir: Path, policy: str, name: str, length: int,
                steps: int, t_start: float) -> None:
    """Every system on one (policy, length), then their final policies' held-out reward, and
    each of our rows' speed-up against TRL's fastest thread count (stated in the row)."""
    nparams = count_params(policy)
    common = dict(policy=policy, data_dir=data_dir, prompts=args.prompts, samples=args.samples, length=length,
                  lr=args.lr, kl=args.kl, seed=args.seed)
    runs = [(s, None) for s in args.systems.split(",") if s != "trl-grpo"]
    if "trl-grpo" in args.systems.split(","):
        runs += [("trl-grpo", int(t)) for t in str(args.trl_threads).split(",")]
    here, finals = [], {"initial": policy}
    for system, threads in runs:
        key = system if threads is None else f"{system}@{threads}"
        print(f"[{name} {nparams / 1e6:.1f}M, L={length}] {key}", flush=True)
        try:
            if system == "trl-grpo":
                r = run_trl(work, episodes=args.episodes, timeout_s=args.run_timeout, threads=threads, **common)
                r["threads"] = threads
            else:
                r = run_ours(work, method=system.removeprefix("ours-"), steps=steps, timeout_s=args.run_timeout,
                             **common)
        except subprocess.TimeoutExpired:
            r = {"system": system, "error": f"timed out after {args.run_timeout}s"}
        r.update(policy=name, parameters=nparams, length=length, episodes=args.episodes, key=key)
        rows.append(r)
        here.append(r)
        print({k: v for k, v in r.items() if k != "error"}, r.get("error", ""), flush=True)
        finish(rows, args, t_start)
        if r.get("final_policy"):
            finals[key] = r["final_policy"]
    ev = _subprocess_worker("--eval-worker", {"dev_file": str(data_dir / "dev.json"), "n": args.eval_prompts,
                                              "policies": finals, "length": length, "seed": args.seed},
                            args.run_timeout)
    for r in here:
        if r["key"] in ev:
            r["final_reward_eval"] = ev[r["key"]]
    rows.append({"system": "initial (no RL)", "policy": name, "parameters": nparams, "length": length,
                 "final_reward_eval": ev.get("initial")})
    trl = [r for r in here if r["system"] == "trl-grpo" and r.get("s_per_1k_episodes")]
    if trl:
        fastest = min(trl, key=lambda r: r["s_per_1k_episodes"])
        for r in here:
            if r.get("s_per_1k_episodes") and r["system"] != "trl-grpo":
                r["speedup_vs_trl"] = fastest["s_per_1k_episodes"] / r["s_per_1k_episodes"]
                r["trl_threads_compared"] = fastest["threads"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/fgrlhf-bench/ppo")
    ap.add_argument("--policies", default="tiny,large")
    ap.add_argument("--lengths", default="64")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per generation batch")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (GRPO group size)")
    ap.add_argument("--episodes", type=int, default=128, help="episode budget (responses) per run")
    ap.add_argument("--systems", default="ours-holistic,ours-fine_grained,ours-grpo,trl-grpo",
                    help=f"comma list of {', '.join(SYSTEMS)}, trl-grpo")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kl", type=float, default=0.05)
    ap.add_argument("--sft-steps", type=int, default=10)
    ap.add_argument("--n-questions", type=int, default=200)
    ap.add_argument("--eval-prompts", type=int, default=32)
    ap.add_argument("--trl-threads", default="1,2",
                    help="torch thread counts for TRL, comma list: each runs, and our speed-up is against the "
                         "fastest (ours uses the whole machine: 2 cores here)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-timeout", type=float, default=1500)
    ap.add_argument("--out", default=None)
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    ap.add_argument("--eval-worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker or args.eval_worker:
        fn = trl_worker if args.trl_worker else eval_worker
        Path(args.worker_out).write_text(json.dumps(fn(json.loads(args.trl_worker or args.eval_worker))))
        return 0

    t_start = time.perf_counter()
    work = Path(args.work)
    policies = args.policies.split(",")
    data_dir, paths = prepare(work, policies=policies, sft_steps=args.sft_steps, seed=args.seed,
                              n_questions=args.n_questions)
    batch = args.prompts * args.samples
    if args.episodes % batch or args.episodes // batch < 2:
        raise SystemExit(f"--episodes {args.episodes} must be a multiple of prompts×samples={batch}, at least 2×")
    steps = args.episodes // batch
    rows: list[dict] = []
    for pol in policies:
        for length in (int(x) for x in args.lengths.split(",")):
            run_setting(rows, args, work=work, data_dir=data_dir, policy=paths[pol], name=pol, length=length,
                        steps=steps, t_start=t_start)
    finish(rows, args, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
