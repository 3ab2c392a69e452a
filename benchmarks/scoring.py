"""Scoring throughput of one segment reward model (relevance classifier on the offline
all-MiniLM-L6-v2 backbone, untrained head — cost is what matters), responses/s, three ways:

1. in-process: `load_reward_model(path).score(prompts, responses)` — batched (the model's
   `batch_size`) and unbatched (one response per call);
2. ScorerActor (`fgrlhf_ray.actors.scorer.ScorerGroup`, 1 and 2 replicas): the whole batch
   as one object-store `RolloutBatch`, sharded over replicas, as the trainer does;
3. Ray Serve (`benchmarks/serve_load.py`'s deployment over HTTP): C concurrent clients,
   one response per request, `max_batch_size` 16 (batched) vs 1 (unbatched).

Torch runs one thread everywhere (Ray gives a 1-CPU actor / replica OMP_NUM_THREADS=1; the
in-process case sets it), so the modes get the same compute per replica.

    .venv/bin/python benchmarks/scoring.py                         # 128 responses, 16 clients
    .venv/bin/python benchmarks/scoring.py --responses 512 --clients 32 --requests 16
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402
from serve_load import PROMPT, RESPONSES, build_model, load, run_mode  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--responses", type=int, default=128, help="responses per batch (in-process, actor)")
    ap.add_argument("--batch-size", type=int, default=32, help="RM forward batch size (in-process, actor)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (Serve)")
    ap.add_argument("--requests", type=int, default=8, help="requests per client (Serve)")
    ap.add_argument("--backbone", choices=["minilm", "tiny"], default="minilm")
    ap.add_argument("--port", type=int, default=8472)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import ray
    import torch

    from fgrlhf_ray.actors.scorer import ScorerGroup
    from fgrlhf_ray.config import RewardModelConfig
    from fgrlhf_ray.rewards import load_reward_model
    from fgrlhf_ray.types import RolloutBatch

    torch.set_num_threads(1)
    n = args.responses
    prompts = [PROMPT] * n
    responses = [RESPONSES[i % len(RESPONSES)] for i in range(n)]
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(args.backbone, Path(tmp))

        # 1. in-process
        rm = load_reward_model(path, batch_size=args.batch_size)
        rm.score(prompts[:4], responses[:4])  # warm-up
        t0 = time.perf_counter()
        rm.score(prompts, responses)
        dt = time.perf_counter() - t0
        rows.append({"mode": f"in-process, batch {args.batch_size}", "responses": n, "seconds": dt,
                     "responses_per_s": n / dt})
        m = min(n, 32)
        t0 = time.perf_counter()
        for p, r in zip(prompts[:m], responses[:m]):
            rm.score([p], [r])
        dt = time.perf_counter() - t0
        rows.append({"mode": "in-process, one per call", "responses": m, "seconds": dt, "responses_per_s": m / dt})
        del rm
        print(rows, flush=True)

        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            rollout = RolloutBatch(prompts=prompts, prompt_ids=[[0]] * n, responses=responses,
                                   response_ids=[[0]] * n, logprobs=[[0.0]] * n, prompt_index=list(range(n)),
                                   finish_reasons=["stop"] * n)
            ref = ray.put(rollout)
            # 2. ScorerActor group
            for replicas in (1, 2):
                cfg = RewardModelConfig.model_validate({
                    "name": "relevance", "kind": "segment_classifier", "path": path, "density": "sub_sentence",
                    "weight": 0.3, "num_cpus": 1, "num_replicas": replicas, "batch_size": args.batch_size})
                group = ScorerGroup(config=cfg)
                ray.get(group.score(ref, n))  # warm-up (model load)
                t0 = time.perf_counter()
                ray.get(group.score(ref, n))
                dt = time.perf_counter() - t0
                rows.append({"mode": f"ScorerActor × {replicas}, batch {args.batch_size}", "responses": n,
                             "seconds": dt, "responses_per_s": n / dt})
                for a in group.actors:
                    ray.kill(a)
                print(rows[-1], flush=True)
            # 3. Serve over HTTP
            from ray import serve

            for name, size in (("batched", 16), ("unbatched", 1)):
                mode = run_mode(name, path, port=args.port, max_batch_size=size, wait_s=0.01 if size > 1 else 0.0,
                                scenarios=[(args.clients, args.requests, 1)], num_cpus=1.0)
                sc = mode["scenarios"][0]
                rows.append({"mode": f"Serve HTTP, max_batch_size {size}, {args.clients} clients",
                             "responses": sc["requests"], "seconds": sc["wall_s"],
                             "responses_per_s": sc["items_per_s"], "errors": sc["errors"],
                             "p50_ms": sc["latency_ms"]["p50"],
                             "items_per_model_call": sc["mean_items_per_model_call"]})
                print(rows[-1], flush=True)
            serve.shutdown()
        finally:
            ray.shutdown()
    serve_rows = [r for r in rows if r["mode"].startswith("Serve")]
    ratio = serve_rows[0]["responses_per_s"] / serve_rows[1]["responses_per_s"] if len(serve_rows) == 2 else None
    table(rows, ["mode", "responses", "seconds", "responses_per_s", "items_per_model_call", "p50_ms"],
          title=f"scoring throughput, relevance RM ({args.backbone}); Serve batched/unbatched = "
                f"{ratio:.2f}×" if ratio else "scoring throughput")
    write_result("scoring", {
        "description": "segment RM responses/s: in-process vs ScorerActor group vs Ray Serve (HTTP) batched/unbatched",
        "backbone": args.backbone, "rows": rows, "serve_batched_over_unbatched": ratio,
        "wall_s": time.perf_counter() - t_start,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
