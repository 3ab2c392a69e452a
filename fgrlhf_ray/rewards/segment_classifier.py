"""`SegmentClassifierRM` — paper A's relevance (C1, sub-sentence) and factuality (C2,
sentence) reward models: token classification at separator tokens.

Input: ``[CLS] question: Q [context: passages] answer: <sep> seg1 <sep> seg2 … [SEP]``;
the label of segment k sits on the separator before it, every other token is ignored
(-100). The head gives 2 logits per token; P(error) = softmax(logits at sep)[1].
With `segment_features` the logit at each separator also gets a linear term in that
segment's explicit features (position, similarity to the question and to the other
segments, support by the passages; `fgrlhf_ray.rewards.segment_features`; the columns
are the metadata's `feature_names`), standardised by training statistics.

`score` returns, per response, one `Segment` per sentence / sub-sentence with
value +1 (no error) or −1 (error), label "no_error" / "error" and the probability of
that label. The trainer multiplies the value by the RM's weight (w_rel, w_fact);
the RM itself never weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from fgrlhf_ray.data.rm_data import SegmentExample, segment_splitter
from fgrlhf_ray.rewards.base import check_pair_lengths
from fgrlhf_ray.rewards.hf_model import HFRewardModel
from fgrlhf_ray.rewards.inputs import InputStats, SegmentWindow, split_prompt
from fgrlhf_ray.rewards.segment_features import BASE_FEATURES, segment_feature_table, standardize
from fgrlhf_ray.rewards.losses import IGNORE_INDEX, segment_classification_loss
from fgrlhf_ray.types import Segment, SegmentRewards

logger = logging.getLogger(__name__)

ERROR_LABEL, NO_ERROR_LABEL = "error", "no_error"


class SegmentClassifierRM(HFRewardModel):
    """Per-segment error / no-error classifier (relevance, factuality)."""

    kind = "segment_classifier"
    out_dim = 2

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._split = segment_splitter(self.metadata.density, min_words=self.metadata.min_words)
        # Only used in training (`compute_loss`); set by the trainer.
        self.class_weights: torch.Tensor | None = None

    def segments_of(self, response: str) -> list[tuple[int, int]]:
        """The response's segments as the RM sees them (sentences or sub-sentences)."""
        return self._split(response)

    # ------------------------------------------------------------- explicit features
    @property
    def feature_names(self) -> tuple[str, ...]:
        """The explicit feature columns (models saved before names were stored: the base ten)."""
        return tuple(self.metadata.feature_names or BASE_FEATURES)

    def raw_segment_features(
        self, prompts: Sequence[str], responses: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> list[list[list[float]]] | None:
        """Unstandardised feature rows per segment (None without `segment_features`).
        Evidence features read the passages after the prompt's `context_marker`, whether
        or not the encoder input includes them (`use_context`)."""
        if not self.metadata.segment_features:
            return None
        parts = [split_prompt(p, self.metadata.context_marker) for p in prompts]
        return segment_feature_table([q for q, _ in parts], responses, spans, names=self.feature_names,
                                     contexts=[c for _, c in parts], encoder=self.feature_encoder)

    def _feature_tensor(self, shape: tuple[int, int], placed: list[list[tuple[int, list[float]]]]) -> torch.Tensor:
        """(B, T, F): each (position, raw row) of row b standardised at [b, position], zeros elsewhere."""
        feats = torch.zeros((*shape, len(self.feature_names)), dtype=torch.float32)
        norm = self.metadata.feature_norm
        for b, items in enumerate(placed):
            if not items:
                continue
            rows = [r for _, r in items]
            rows = standardize(rows, norm) if norm else rows
            feats[b, [p for p, _ in items]] = torch.tensor(rows, dtype=torch.float32)
        return feats.to(self.device)

    # ------------------------------------------------------------------ training
    def features(self, example: SegmentExample) -> list[dict]:
        """One feature dict per window: `input_ids` (T,) and `labels` (T,) with the
        segment label (1 error / 0 no error) at its separator and -100 elsewhere; with
        explicit features also `seg_features`: (separator position, raw row) pairs."""
        raw = self.raw_segment_features([example.prompt], [example.response], [example.spans])
        out = []
        for win in self.inputs.segment_windows(example.prompt, example.response, example.spans):
            labels = [IGNORE_INDEX] * len(win.input_ids)
            for pos, k in zip(win.sep_positions, win.segment_indices):
                lab = example.labels[k]
                if lab is not None:
                    labels[pos] = int(lab)
            f = {"input_ids": win.input_ids, "labels": labels, "stats": win.stats.as_dict()}
            if raw is not None:
                f["seg_features"] = [(pos, raw[0][k]) for pos, k in zip(win.sep_positions, win.segment_indices)]
            out.append(f)
        return out

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = self._pad([f["input_ids"] for f in features])
        labels = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels.to(self.device)}
        if self.metadata.segment_features:
            batch["features"] = self._feature_tensor(tuple(ids.shape), [f["seg_features"] for f in features])
        return batch

    def compute_loss(self, batch: dict[str, torch.Tensor], module=None) -> tuple[torch.Tensor, dict]:
        net = module if module is not None else self.network
        logits = net(batch["input_ids"], batch["attention_mask"], batch.get("features"))  # (B, T, 2)
        weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return segment_classification_loss(logits.float(), batch["labels"], class_weights=weights)

    # ------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def predict_proba(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
    ) -> tuple[list[list[float]], list[InputStats]]:
        """P(error) for each given segment span of each response, and each input's cut stats."""
        check_pair_lengths(prompts, responses)
        windows: list[tuple[int, SegmentWindow]] = []
        stats: list[InputStats] = []
        for i, (p, r, sp) in enumerate(zip(prompts, responses, spans)):
            st = InputStats(windows=0)
            if sp:
                wins = self.inputs.segment_windows(p, r, list(sp))
                for w in wins:
                    windows.append((i, w))
                    st.add(w.stats)
                st.windows = len(wins)
            stats.append(st)
        raw = self.raw_segment_features(prompts, responses, spans)
        probs: list[list[float]] = [[0.0] * len(sp) for sp in spans]
        for batch in self._batches([len(w.input_ids) for _, w in windows]):
            ids, mask = self._pad([windows[j][1].input_ids for j in batch])
            feats = None
            if raw is not None:
                placed = [[(pos, raw[windows[j][0]][k]) for pos, k in zip(windows[j][1].sep_positions,
                                                                       windows[j][1].segment_indices)] for j in batch]
                feats = self._feature_tensor(tuple(ids.shape), placed)
            p_err = torch.softmax(self.network(ids, mask, feats).float(), dim=-1)[..., 1].cpu()  # (B, T)
            for row, j in enumerate(batch):
                i, win = windows[j]
                for pos, k in zip(win.sep_positions, win.segment_indices):
                    probs[i][k] = float(p_err[row, pos])
        return probs, stats

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:
        """One `SegmentRewards` per response: each segment's value is +1 (no error) or
        −1 (error, P(error) >= threshold), with the label and its probability."""
        check_pair_lengths(prompts, responses)
        spans = [self.segments_of(r) for r in responses]
        probs, stats = self.predict_proba(prompts, responses, spans)
        thr = self.metadata.threshold
        out = []
        for sp, pr, st in zip(spans, probs, stats):
            segs = []
            for (a, b), p in zip(sp, pr):
                err = p >= thr
                segs.append(
                    Segment(
                        char_start=a,
                        char_end=b,
                        value=-1.0 if err else 1.0,
                        label=ERROR_LABEL if err else NO_ERROR_LABEL,
                        probability=p if err else 1.0 - p,
                    )
                )
            out.append(SegmentRewards(segs, self.density, self.name, extra={"input": st.as_dict()}))
        return out
