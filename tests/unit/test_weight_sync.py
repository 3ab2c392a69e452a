"""Fast CPU tests of weight-sync logic: safetensors round trip, the tied-lm_head rule,
bucket planning/packing, the gloo broadcast path (2 ranks in threads), probe check."""

from __future__ import annotations

import math
import random
import threading
import time

import pytest
import torch

from fgrlhf_ray.infra.ports import free_port
from fgrlhf_ray.weight_sync import (
    EMBED_KEY,
    LM_HEAD_KEY,
    NcclWeightBroadcaster,
    ProbeGapError,
    TensorMeta,
    check_probe_gap,
    deserialize_state_dict,
    pack_bucket,
    plan_buckets,
    prepare_state_dict,
    receive_buckets,
    serialize_state_dict,
    stateless_process_group,
    tensor_meta,
)


def _state_dict(tied: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(11, 4, generator=g)
    sd = {
        EMBED_KEY: embed,
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g),
        "model.norm.weight": torch.ones(4),
    }
    # HF's state_dict() of a tied model holds lm_head.weight as the SAME tensor.
    sd[LM_HEAD_KEY] = embed if tied else torch.randn(11, 4, generator=g)
    return sd


def test_round_trip_untied_keeps_names_values_dtypes():
    sd = _state_dict(tied=False)
    sd["model.layers.0.step"] = torch.tensor([3], dtype=torch.int64)
    back = deserialize_state_dict(serialize_state_dict(sd, tie_word_embeddings=False))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_tied_state_dict_gets_separate_lm_head_copy():
    sd = _state_dict(tied=True)
    out = prepare_state_dict(sd, tie_word_embeddings=True)
    assert torch.equal(out[LM_HEAD_KEY], out[EMBED_KEY])
    assert (
        out[LM_HEAD_KEY].untyped_storage().data_ptr() != out[EMBED_KEY].untyped_storage().data_ptr()
    )
    # Input untouched: still shares storage, no keys added/removed.
    assert sd[LM_HEAD_KEY] is sd[EMBED_KEY] and len(sd) == 4
    back = deserialize_state_dict(serialize_state_dict(sd, tie_word_embeddings=True))
    assert torch.equal(back[LM_HEAD_KEY], sd[EMBED_KEY])


def test_tied_state_dict_without_lm_head_gets_one_added():
    sd = _state_dict(tied=True)
    del sd[LM_HEAD_KEY]
    back = deserialize_state_dict(serialize_state_dict(sd, tie_word_embeddings=True))
    assert LM_HEAD_KEY in back and torch.equal(back[LM_HEAD_KEY], sd[EMBED_KEY])


def test_tied_flag_with_different_lm_head_is_an_error():
    sd = _state_dict(tied=False)
    with pytest.raises(ValueError, match="not actually tied"):
        prepare_state_dict(sd, tie_word_embeddings=True)


def test_untied_without_lm_head_and_missing_embed_are_errors():
    sd = _state_dict(tied=False)
    del sd[LM_HEAD_KEY]
    with pytest.raises(KeyError, match="lm_head.weight"):
        prepare_state_dict(sd, tie_word_embeddings=False)
    with pytest.raises(KeyError, match="embed_tokens"):
        prepare_state_dict(
            {"module." + k: v for k, v in _state_dict(False).items()}, tie_word_embeddings=False
        )


def test_dtype_cast_only_touches_floats_and_shared_storage_is_saved():
    sd = _state_dict(tied=False)
    base = torch.randn(8)
    sd["x.a"], sd["x.b"] = (
        base[:4],
        base[4:],
    )  # views of one storage (safetensors rejects these raw)
    sd["x.int"] = torch.arange(3)
    out = deserialize_state_dict(
        serialize_state_dict(sd, tie_word_embeddings=False, dtype=torch.bfloat16)
    )
    assert out[EMBED_KEY].dtype == torch.bfloat16 and out["x.int"].dtype == torch.int64
    assert torch.equal(out["x.b"], base[4:].bfloat16())


def _reference_buckets(sizes: list[int], cap: int) -> list[list[int]]:
    """Plain-loop reference: greedy, in order, oversized tensors alone."""
    out, cur, tot = [], [], 0
    for i, s in enumerate(sizes):
        if cur and tot + s > cap:
            out.append(cur)
            cur, tot = [], 0
        cur.append(i)
        tot += s
    if cur:
        out.append(cur)
    return out


def test_plan_buckets_matches_reference_and_respects_cap():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        metas = [
            TensorMeta(f"t{i}", rng.choice(["float32", "bfloat16", "int8"]), (rng.randint(1, 40),))
            for i in range(n)
        ]
        cap = rng.randint(1, 400)
        buckets = plan_buckets(metas, cap)
        assert [m for b in buckets for m in b] == metas  # order kept, each exactly once
        for b in buckets:
            assert len(b) == 1 or sum(m.padded_nbytes for m in b) <= cap
        index = {m.name: i for i, m in enumerate(metas)}
        assert [[index[m.name] for m in b] for b in buckets] == _reference_buckets(
            [m.padded_nbytes for m in metas], cap
        )
    with pytest.raises(ValueError):
        plan_buckets(metas, 0)


def test_pack_unpack_mixed_dtypes_round_trip():
    from fgrlhf_ray.weight_sync import unpack_bucket

    ts = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).bfloat16(),
        "c": torch.arange(4, dtype=torch.int32),
        "d": torch.randn(4, 6).t(),
    }  # non-contiguous
    metas = [tensor_meta(k, v) for k, v in ts.items()]
    buf = pack_bucket(list(ts.values()))
    assert buf.dtype == torch.uint8 and buf.numel() == sum(m.padded_nbytes for m in metas)
    assert all(m.padded_nbytes % 16 == 0 and m.padded_nbytes - m.nbytes < 16 for m in metas)
    back = dict(unpack_bucket(buf, metas))
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with pytest.raises(ValueError, match="plans differ"):
        unpack_bucket(buf[:-16], metas)
    assert TensorMeta.from_wire(metas[1].as_wire()) == metas[1]


@pytest.mark.parametrize("tied", [False, True])
def test_gloo_bucketed_broadcast_delivers_state_dict(tied):
    """The NCCL code path with the gloo backend: learner rank 0 + one receiver rank."""
    port = free_port()
    sd = _state_dict(tied)
    sender = NcclWeightBroadcaster(
        host="127.0.0.1",
        port=port,
        world_size=2,
        backend="gloo",
        bucket_bytes=100,
        timeout_s=20,
        tie_word_embeddings=tied,
    )
    plan_ready, box = threading.Event(), {}

    def receiver():
        try:
            group = stateless_process_group(
                host="127.0.0.1", port=port, rank=1, world_size=2, backend="gloo", timeout_s=20
            )
            plan_ready.wait(20)
            box["got"] = receive_buckets(group, box["plan"], device="cpu", timeout_s=20)
        except Exception as e:  # surfaced by the assert below
            box["error"] = e

    t = threading.Thread(target=receiver)
    t.start()
    sender.connect()
    box["plan"] = sender.plan(sd)
    plan_ready.set()
    stats = sender.broadcast(sd, box["plan"])
    t.join(30)
    assert "error" not in box, box.get("error")
    got = dict(box["got"])
    assert stats["sync/buckets"] == len(box["plan"]) > 1
    assert set(got) == set(sd) | {LM_HEAD_KEY}
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    if tied:
        assert torch.equal(got[LM_HEAD_KEY], sd[EMBED_KEY])


def test_broadcast_receive_times_out_instead_of_hanging():
    port = free_port()
    groups = {}

    def join(rank):
        groups[rank] = stateless_process_group(
            host="127.0.0.1", port=port, rank=rank, world_size=2, backend="gloo", timeout_s=20
        )

    threads = [threading.Thread(target=join, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    plan = [[("w", "float32", [4])]]
    start = time.perf_counter()
    with pytest.raises((RuntimeError, TimeoutError)):
        receive_buckets(groups[1], plan, device="cpu", timeout_s=1.0)  # rank 0 never sends
    assert time.perf_counter() - start < 15


def test_check_probe_gap_passes_and_raises():
    a = [-1.0, -2.0, -0.5]
    assert check_probe_gap(a, [-1.0, -2.0005, -0.5], tolerance=1e-3) == pytest.approx(5e-4)
    with pytest.raises(ProbeGapError, match="exceeds tolerance"):
        check_probe_gap(a, [-1.0, -2.5, -0.5], tolerance=1e-3)
    with pytest.raises(ProbeGapError):
        check_probe_gap(a, [-1.0, math.nan, -0.5], tolerance=1e-3)
    with pytest.raises(ValueError, match="same non-empty length"):
        check_probe_gap(a, a[:2], tolerance=1e-3)


def test_check_probe_gaps_takes_the_worst_engine_and_names_the_setting():
    from fgrlhf_ray.weight_sync.probe import check_probe_gaps

    a = [-1.0, -2.0]
    assert check_probe_gaps(a, [[-1.0, -2.0], [-1.0, -2.0005]], tolerance=1e-3) == pytest.approx(5e-4)
    with pytest.raises(ProbeGapError, match=r"failed at step 3: .* by 5\.000e-01 .*tolerance learner\.tol=0\.001"):
        check_probe_gaps(a, [[-1.0, -2.0], [-1.5, -2.0]], tolerance=1e-3, when=" at step 3", setting="learner.tol")
