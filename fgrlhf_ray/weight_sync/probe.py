"""The post-sync probe check: vLLM's logprobs of a fixed sequence against the learner's."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ProbeGapError(RuntimeError):
    """vLLM's logprobs after a weight sync disagree with the learner's."""


def probe_gap(learner_logprobs: Iterable[float], vllm_logprobs: Iterable[float]) -> float:
    """max_t |learner_t − vllm_t| over one probe sequence (or a flattened batch)."""
    a = torch.as_tensor(list(learner_logprobs), dtype=torch.float64)
    b = torch.as_tensor(list(vllm_logprobs), dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(
            f"probe_gap: learner gave {tuple(a.shape)} logprobs, vLLM {tuple(b.shape)}; "
            "they must be the same non-empty length (same probe sequence)."
        )
    return float((a - b).abs().max())


def check_probe_gap(
    learner_logprobs: Iterable[float], vllm_logprobs: Iterable[float], tolerance: float, *,
    when: str = "", setting: str = "probe_tolerance",
) -> float:
    """Return the max abs logprob gap; raise ProbeGapError if it exceeds `tolerance`.

    A large gap right after a sync means the engines did not get the learner's weights
    (wrong names, a missing tied lm_head, a dtype mismatch, a stale prefix cache).
    `when` (e.g. " at step 3") and `setting` (the config field holding `tolerance`) go
    into the message.
    """
    return check_probe_gaps(learner_logprobs, [vllm_logprobs], tolerance, when=when, setting=setting)


def check_probe_gaps(
    learner_logprobs: Iterable[float], engine_logprobs: Iterable[Iterable[float]], tolerance: float, *,
    when: str = "", setting: str = "probe_tolerance",
) -> float:
    """`check_probe_gap` over several engines: the largest gap of any engine is checked."""
    learner = list(learner_logprobs)
    gap = max((probe_gap(learner, engine) for engine in engine_logprobs), default=0.0)
    if not gap <= tolerance:  # also catches NaN
        raise ProbeGapError(
            f"weight sync check failed{when}: vLLM's logprobs differ from the learner's by {gap:.3e} "
            f"(max |log π_learner − log π_vllm|) on the probe sequence, which exceeds tolerance "
            f"{setting}={tolerance:g}. The rollout engines are not running the learner's weights: check "
            "parameter names, tie_word_embeddings (lm_head.weight must be sent), dtypes (vLLM dtype vs "
            f"learner), or raise `{setting}` if the engines run in lower precision."
        )
    return gap
