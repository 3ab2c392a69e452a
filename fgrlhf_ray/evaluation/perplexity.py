"""Perplexity of responses under a reference LM that has its own tokenizer.

`ReferenceLM.nll(prompts, responses)` returns, per sample, (−Σ_t log p(r_t | prompt, r_<t),
number of response tokens) with the response tokenised by the *reference LM's*
tokenizer (the policy's token ids are not reused: the reference LM may be any causal LM,
e.g. GPT-2 XL as in the detoxification literature). The prompt is tokenised with the
tokenizer's default special tokens, the response without; the prompt is cut from the
left when prompt + response exceed `max_length` (the response is never cut unless it
alone is longer). `fgrlhf_ray.evaluation.metrics.perplexity` aggregates the pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ReferenceLM:
    """Frozen HF causal LM for perplexity (keyword-only arguments).

    Args:
        model_path: HF folder of the reference LM (with its tokenizer).
        device: torch device (default CUDA if visible, else CPU).
        batch_size: samples per forward pass.
        max_length: most tokens per sequence (default: the model's max positions).
        dtype: "float32" | "bfloat16" | "float16".
    """

    def __init__(self, *, model_path: str, device: str | None = None, batch_size: int = 8,
                 max_length: int | None = None, dtype: str = "float32") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval().requires_grad_(False)
        self.batch_size = int(batch_size)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 1024
        self.max_length = int(min(max_length or limit, limit))
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def _layout(self, prompt: str, response: str) -> tuple[list[int], int]:
        """(ids, number of response tokens at the end of ids)."""
        p = self.tokenizer(prompt)["input_ids"]
        r = self.tokenizer(response, add_special_tokens=False)["input_ids"][: self.max_length - 1]
        keep = self.max_length - len(r)
        p = p[-keep:] if keep > 0 else []
        if not p:  # the first token has no prediction: score the response from its 2nd token
            return r, max(len(r) - 1, 0)
        return p + r, len(r)

    @torch.inference_mode()
    def nll(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[float, int]]:
        """[(NLL sum, token count)] per (prompt, response); (0.0, 0) for an empty response."""
        if len(prompts) != len(responses):
            raise ValueError(f"ReferenceLM.nll: {len(prompts)} prompts but {len(responses)} responses")
        layouts = [self._layout(p, r) for p, r in zip(prompts, responses)]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(layouts)
        order = [i for i in sorted(range(len(layouts)), key=lambda i: -len(layouts[i][0])) if layouts[i][1] > 0]
        for k in range(0, len(order), self.batch_size):
            batch = order[k : k + self.batch_size]
            width = max(len(layouts[i][0]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = layouts[i][0]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, W-1): predicts ids[:, 1:]
            token_logp = logp.gather(-1, ids[:, 1:, None].to(self.device)).squeeze(-1).cpu()  # (B, W-1)
            for row, i in enumerate(batch):
                seq, n = layouts[i]
                # response tokens are ids[len(seq)-n : len(seq)], predicted at positions one earlier
                lp = token_logp[row, len(seq) - n - 1 : len(seq) - 1]
                out[i] = (float(-lp.sum()), n)
        return out


def reference_lm_nll(model_path: str, prompts: list[str], responses: list[str], *, batch_size: int = 8,
                     max_length: int | None = None, num_threads: int | None = None) -> list[tuple[float, int]]:
    """One-shot helper (what the eval runs as a Ray task): load the LM, score, return."""
    if num_threads:
        torch.set_num_threads(num_threads)
    return ReferenceLM(model_path=model_path, batch_size=batch_size, max_length=max_length).nll(prompts, responses)
