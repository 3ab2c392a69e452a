"""Learner → vLLM weight sync, and the post-sync probe check.

Two transports, chosen by the config value `weight_sync`:

- "object_store" (CPU, and any cluster without a shared fast fabric): the learner's
  full state dict is serialised ONCE to safetensors bytes (`serialize_state_dict`),
  `ray.put` once, and every engine receives the same ObjectRef; inside the engine the
  bytes go to each vLLM worker through `LLM.collective_rpc("fgrlhf_load_safetensors")`
  (tensors must be serialised: passed raw through vLLM's RPC they arrive as lists).
- "broadcast" (NCCL on GPU clusters, gloo on CPU): learner rank 0 and every vLLM worker
  form one extra process group (stateless: a private TCPStore, not the default
  torch.distributed group); the learner broadcasts the weights in flat byte buckets
  (`plan_buckets`, `pack_bucket`, `unpack_bucket`) and the workers load them.
  `NcclWeightBroadcaster` is the learner side; `FgrlhfWorkerExtension.fgrlhf_*_broadcast*`
  the vLLM side; `fgrlhf_ray.actors.weight_broadcast.BroadcastWeightSync` drives both from
  the PPO loop (forming the group, re-forming it after engine restarts). The same code runs
  with backend="gloo", which is how it is tested on CPU; the NCCL backend itself has
  NOT been exercised here (no GPU on the development machine).

The tied-embedding trap: vLLM's in-place reload restores every layer that receives no
weights from its old tensors. With `tie_word_embeddings=True`, a state dict without
`lm_head.weight` leaves vLLM's lm_head at the OLD values — no error, just wrong
logprobs. `serialize_state_dict(..., tie_word_embeddings=True)` therefore always
writes `lm_head.weight` as a separate copy of the input embedding.

After each sync, `check_probe_gap` compares vLLM's logprobs of a fixed probe sequence
with the learner's and raises past a tolerance.
"""

from __future__ import annotations

# One import place for callers; each mechanism lives in its own module.
from fgrlhf_ray.weight_sync.broadcast import NcclWeightBroadcaster, SyncGroup, receive_buckets, stateless_process_group
from fgrlhf_ray.weight_sync.buckets import (
    TensorMeta, bucket_nbytes, pack_bucket, plan_buckets, tensor_meta, unpack_bucket,
)
from fgrlhf_ray.weight_sync.probe import ProbeGapError, check_probe_gap, probe_gap
from fgrlhf_ray.weight_sync.state_dict import (
    EMBED_KEY, LM_HEAD_KEY, WeightSyncMode, deserialize_state_dict, prepare_state_dict, serialize_state_dict,
)
from fgrlhf_ray.weight_sync.vllm_extension import FgrlhfWorkerExtension

__all__ = [
    "EMBED_KEY", "LM_HEAD_KEY", "FgrlhfWorkerExtension", "NcclWeightBroadcaster", "ProbeGapError", "SyncGroup",
    "TensorMeta", "WeightSyncMode", "bucket_nbytes", "check_probe_gap", "deserialize_state_dict", "pack_bucket",
    "plan_buckets", "prepare_state_dict", "probe_gap", "receive_buckets", "serialize_state_dict",
    "stateless_process_group", "tensor_meta", "unpack_bucket",
]
