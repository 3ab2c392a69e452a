"""The frozen reference policy π_ref for the per-token KL penalty.

`ReferencePolicy` is a plain HF causal LM in eval mode without gradients (no DeepSpeed:
it never trains). It computes log π_ref(a_t) for every response token with exactly the
same padding, positions and logit alignment as the learner
(`fgrlhf_ray.workers.learner.causal_lm_response_logprobs`), so that log π − log π_ref is 0 for
an untrained policy. Ray wrapping: `fgrlhf_ray.actors.reference.ReferenceActor`.
"""

from __future__ import annotations

from typing import Any

import torch

from fgrlhf_ray.workers.learner import (
    as_forward_batch,
    causal_lm_response_logprobs,
    default_pad_token_id,
    pad_right,
    trimmed_micro_batches,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ReferencePolicy:
    """Frozen causal LM computing (B, T) reference log-probs.

    Keyword-only args:
        model_path: HF folder of the reference (usually the SFT policy).
        dtype: "float32" | "bfloat16" | "float16" (or a torch dtype).
        micro_batch_size: samples per forward pass.
        device: torch device; default CUDA if visible, else CPU.
        pad_token_id: pad id for `RolloutBatch` inputs; None = the model config's pad
            id (or EOS, or 0) — must equal what the controller pads with.
    """

    def __init__(
        self,
        *,
        model_path: str,
        dtype: str | torch.dtype = "float32",
        micro_batch_size: int = 16,
        device: str | None = None,
        pad_token_id: int | None = None,
        logprob_temperature: float = 1.0,
    ) -> None:
        from transformers import AutoModelForCausalLM

        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"ReferencePolicy: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
            dtype = _DTYPES[dtype]
        if micro_batch_size < 1:
            raise ValueError(f"ReferencePolicy: micro_batch_size must be >= 1, got {micro_batch_size}.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        if pad_token_id is None:
            pad_token_id = default_pad_token_id(self.model.config)
        self.pad_token_id = pad_token_id
        if logprob_temperature <= 0:
            raise ValueError(f"ReferencePolicy: logprob_temperature must be > 0, got {logprob_temperature}.")
        self.logprob_temperature = logprob_temperature  # the sampling τ, as the learner's (KL of like to like)

    @torch.no_grad()
    def logprobs(self, batch: Any) -> torch.Tensor:
        """log π_ref(a_t): (B, T) float32 on CPU, 0 where action_mask is 0.

        batch: RolloutBatch / PaddedRollout / Experience / mapping with sequences
        (B, P+T), attention_mask (B, P+T), action_mask (B, T).
        """
        fb = as_forward_batch(batch, pad_token_id=self.pad_token_id)
        T = fb.action_mask.shape[1]
        parts = []
        for seq, attn, t in trimmed_micro_batches(fb, self.micro_batch_size):
            lp, _ = causal_lm_response_logprobs(self.model, seq.to(self.device), attn.to(self.device), t,
                                                temperature=self.logprob_temperature)
            parts.append(pad_right(lp.float().cpu(), T))
        return torch.cat(parts) * fb.action_mask
