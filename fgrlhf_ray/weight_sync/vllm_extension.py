"""The vLLM side of both transports: a worker extension (`worker_extension_cls`) that loads
safetensors bytes or receives broadcast buckets.
"""

from __future__ import annotations

import torch

from fgrlhf_ray.weight_sync.broadcast import receive_buckets, stateless_process_group
from fgrlhf_ray.weight_sync.state_dict import deserialize_state_dict


class FgrlhfWorkerExtension:
    """Mixed into every vLLM worker (`LLM(worker_extension_cls=...)`); its methods are
    called by name with `LLM.collective_rpc`, so nothing pickled crosses processes.

    `self` is the vLLM worker: it has `reload_weights`, `model_runner`, `device`.
    """

    def fgrlhf_load_safetensors(self, blob: bytes) -> int:
        """Object-store path: in-place reload of a full safetensors state dict."""
        state = deserialize_state_dict(blob)
        # reload_weights (layerwise) reprocesses every layer, so it also works for
        # quantized / repacked kernels; it wants the WHOLE state dict in one call.
        self.reload_weights(weights_iterator=iter(state.items()))
        return len(state)

    def fgrlhf_init_broadcast_group(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        backend: str,
        timeout_s: float,
    ) -> None:
        from vllm.distributed.parallel_state import get_tp_group

        rank = rank_offset + get_tp_group().rank_in_group
        self._fgrlhf_pg = stateless_process_group(
            host=host,
            port=port,
            rank=rank,
            world_size=world_size,
            backend=backend,
            timeout_s=timeout_s,
        )
        self._fgrlhf_backend, self._fgrlhf_timeout_s = backend, timeout_s

    def fgrlhf_receive_broadcast(self, plan: list) -> int:
        pg = getattr(self, "_fgrlhf_pg", None)
        if pg is None:
            raise RuntimeError("fgrlhf_receive_broadcast: call init_weight_broadcast first.")
        device = self.device if self._fgrlhf_backend == "nccl" else torch.device("cpu")
        received = receive_buckets(pg, plan, device=device, timeout_s=self._fgrlhf_timeout_s)
        # One reload with everything: layerwise reload needs each layer's full set of
        # weights within one call (a layer split over calls would be half restored).
        self.reload_weights(weights_iterator=iter(received))
        return len(received)

    def fgrlhf_close_broadcast_group(self) -> None:
        self._fgrlhf_pg = None
