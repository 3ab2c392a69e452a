"""`TokenLevelRM` — paper B's token-level reward model (our formulation, DESIGN.md).

r(y)_t = head(hidden state of response token t) for ``question: Q [context: C]
answer: y`` — any encoder or causal-LM backbone. Trained on minimal-edit pairs
(original, edited): with difflib opcodes over the two responses' RM tokens,

    loss = −log σ( Σ_{t ∈ inserted/replaced in edited} r(edited)_t
                 − Σ_{t ∈ deleted/replaced in original} r(original)_t ).

`score` returns one `Segment` per RM token of the response (its character span and
r_t); PPO maps these character offsets onto policy tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from fgrlhf_ray.data.rm_data import EditPair
from fgrlhf_ray.rewards.base import check_pair_lengths
from fgrlhf_ray.rewards.hf_model import HFRewardModel
from fgrlhf_ray.rewards.inputs import TokenLayout
from fgrlhf_ray.rewards.losses import changed_token_loss, edit_masks, token_edit_loss
from fgrlhf_ray.types import Segment, SegmentRewards

logger = logging.getLogger(__name__)


class TokenLevelRM(HFRewardModel):
    """Per-token scalar rewards learned from minimal edits."""

    kind = "token_level"
    out_dim = 1
    #: Weight α of the dense per-token loss (`changed_token_loss`) added to the pairwise
    #: edit loss in training; 0 = the pairwise loss alone. Set by the trainer.
    changed_token_loss_weight: float = 0.0

    # ------------------------------------------------------------------ training
    def edit_layouts(self, pair: EditPair) -> tuple[TokenLayout, TokenLayout, list[int], list[int]]:
        """Layouts of original and edited, and their edit masks over response tokens."""
        o = self.inputs.token_layout(pair.prompt, pair.original)
        e = self.inputs.token_layout(pair.prompt, pair.edited)
        om, em = edit_masks(o.response_token_ids, e.response_token_ids)
        return o, e, om, em

    def features(self, pair: EditPair) -> list[dict]:
        """Input ids of both responses and the input positions of changed tokens
        (`[]` when the edit changes no RM token, e.g. a whitespace-only edit)."""
        o, e, om, em = self.edit_layouts(pair)
        if not any(om) and not any(em):
            return []
        return [
            {
                "original_ids": o.input_ids,
                "original_changed": [p for p, m in zip(o.response_positions, om) if m],
                "edited_ids": e.input_ids,
                "edited_changed": [p for p, m in zip(e.response_positions, em) if m],
            }
        ]

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        b = len(features)
        ids, mask = self._pad([f["original_ids"] for f in features] + [f["edited_ids"] for f in features])
        changed = torch.zeros(ids.shape, dtype=torch.float32)  # (2B, T) 1 on changed response tokens
        for i, f in enumerate(features):
            changed[i, f["original_changed"]] = 1.0
            changed[b + i, f["edited_changed"]] = 1.0
        return {"input_ids": ids, "attention_mask": mask, "changed": changed.to(self.device)}

    def compute_loss(self, batch: dict[str, torch.Tensor], module=None) -> tuple[torch.Tensor, dict]:
        net = module if module is not None else self.network
        r = net(batch["input_ids"], batch["attention_mask"]).squeeze(-1).float()  # (2B, T)
        b = r.shape[0] // 2
        m = batch["changed"]
        loss, stats = token_edit_loss(r[:b], m[:b], r[b:], m[b:])
        if self.changed_token_loss_weight > 0:
            added = torch.cat([torch.zeros_like(m[:b]), torch.ones_like(m[b:])])  # (2B, T): edited side = written
            dense, dense_stats = changed_token_loss(r, added, m)
            loss = loss + self.changed_token_loss_weight * dense
            stats.update({f"changed_{k}": v for k, v in dense_stats.items()})
        return loss, stats

    # ------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def token_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[TokenLayout, list[float]]]:
        """For each response: its layout and r_t for each (kept) response token."""
        check_pair_lengths(prompts, responses)
        layouts = [self.inputs.token_layout(p, r) for p, r in zip(prompts, responses)]
        values: list[list[float]] = [[] for _ in layouts]
        for batch in self._batches([len(x.input_ids) for x in layouts]):
            ids, mask = self._pad([layouts[j].input_ids for j in batch])
            r = self.network(ids, mask).squeeze(-1).float().cpu()  # (B, T)
            for row, j in enumerate(batch):
                values[j] = [float(v) for v in r[row, layouts[j].response_positions]]
        return list(zip(layouts, values))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:
        """One `Segment` per RM token of each response: its characters and r_t."""
        out = []
        for layout, vals in self.token_rewards(prompts, responses):
            segs = [Segment(int(a), int(b), v) for (a, b), v in zip(layout.response_offsets, vals)]
            out.append(SegmentRewards(segs, "token", self.name, extra={"input": layout.stats.as_dict()}))
        return out
