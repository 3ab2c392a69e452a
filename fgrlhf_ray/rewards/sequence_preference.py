"""`SequencePreferenceRM` — one scalar per response (paper A's completeness C3 and the
holistic preference RM; also edited ≻ original on minimal-edit pairs).

Score s(prompt, response) = head(pool(hidden states of ``question: Q [context: C]
answer: R``)), pooling "mean" (masked mean; default for encoders), "cls" (first token)
or "last" (last real token; default for causal LMs). Trained with the Bradley–Terry
loss −log σ(s_preferred − s_other). After training, μ/σ of the scores of the training
responses are stored in the metadata; `normalization` exposes them and the trainer
applies (R − μ)/σ (or the config's mean/std). `score` returns the raw score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fgrlhf_ray.data.rm_data import PreferencePair
from fgrlhf_ray.rewards.base import check_pair_lengths
from fgrlhf_ray.rewards.hf_model import HFRewardModel
from fgrlhf_ray.rewards.losses import bradley_terry_loss
from fgrlhf_ray.types import Segment, SegmentRewards


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) right-padded mask → (B, H) pooled vectors.

    mean: Σ_t mask·h_t / Σ_t mask; cls: h_0; last: h at the last position with mask 1.
    """
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = (mask.sum(1) - 1).clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; use mean, cls or last")


class SequencePreferenceRM(HFRewardModel):
    """Scalar sequence reward trained on preference pairs."""

    kind = "sequence_preference"
    out_dim = 1

    def _forward_scores(self, ids: torch.Tensor, mask: torch.Tensor, module=None) -> torch.Tensor:
        """(B, T) ids, mask → (B,) scores.

        The head runs on every token and the outputs are then pooled: all poolings are
        linear, so pool(head(h)) == head(pool(h)), and this way a DDP / DeepSpeed
        wrapper's own forward (which syncs gradients) is the one called.
        """
        net = module if module is not None else self.network
        per_token = net(ids, mask)  # (B, T, 1)
        return pool_hidden(per_token, mask, self.metadata.pooling or "mean").squeeze(-1)

    # ------------------------------------------------------------------ training
    def features(self, pair: PreferencePair) -> list[dict]:
        c = self.inputs.token_layout(pair.prompt, pair.chosen)
        r = self.inputs.token_layout(pair.prompt, pair.rejected)
        return [{"chosen_ids": c.input_ids, "rejected_ids": r.input_ids}]

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = self._pad([f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features])
        return {"input_ids": ids, "attention_mask": mask}

    def compute_loss(self, batch: dict[str, torch.Tensor], module=None) -> tuple[torch.Tensor, dict]:
        scores = self._forward_scores(batch["input_ids"], batch["attention_mask"], module).float()
        b = scores.shape[0] // 2
        return bradley_terry_loss(scores[:b], scores[b:])

    # ------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Raw scores s(prompt, response), one per pair (un-normalised)."""
        check_pair_lengths(prompts, responses)
        layouts = [self.inputs.token_layout(p, r) for p, r in zip(prompts, responses)]
        out = [0.0] * len(layouts)
        for batch in self._batches([len(x.input_ids) for x in layouts]):
            ids, mask = self._pad([layouts[j].input_ids for j in batch])
            s = self._forward_scores(ids, mask).float().cpu()
            for row, j in enumerate(batch):
                out[j] = float(s[row])
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:
        """One segment spanning the whole response with the raw score as value
        (normalisation — `normalization` or the config's mean/std — is the trainer's)."""
        scores = self.score_texts(prompts, responses)
        return [
            SegmentRewards([Segment(0, len(r), s)], "sequence", self.name, extra={"normalization": self.metadata.normalization})
            for r, s in zip(responses, scores)
        ]
