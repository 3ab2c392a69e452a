"""Reward-model losses: pure functions of tensors, returning (loss, stats).

No model, config or tokenizer in here; each function documents its tensors' shapes and
the formula. Plain-loop references live in tests/unit/test_rm_losses.py.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def segment_classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the labelled (separator) positions only.

    Args:
        logits: (B, T, C) per-token class logits (C = 2: 0 = no error, 1 = error).
        labels: (B, T) long; the class at each segment's separator, -100 elsewhere.
        class_weights: (C,) optional per-class weights w.

    Returns:
        loss = Σ_{labelled i} w_{y_i} · (−log softmax(logits_i)[y_i]) / Σ_{labelled i} w_{y_i}
        (0 when nothing is labelled), and stats {accuracy, n_labelled}.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    mask = flat_labels != IGNORE_INDEX
    n = int(mask.sum())
    if n == 0:
        return flat_logits.sum() * 0.0, {"accuracy": float("nan"), "n_labelled": 0}
    loss = F.cross_entropy(flat_logits[mask], flat_labels[mask], weight=class_weights)
    with torch.no_grad():
        acc = (flat_logits[mask].argmax(-1) == flat_labels[mask]).float().mean().item()
    return loss, {"accuracy": acc, "n_labelled": n}


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley–Terry pairwise loss.

    Args:
        chosen: (B,) scores s_preferred.
        rejected: (B,) scores s_other.

    Returns:
        loss = mean_b −log σ(s_preferred − s_other), and stats {accuracy (s_p > s_o), margin}.
    """
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    return loss, {
        "accuracy": (margin > 0).float().mean().item(),
        "margin": margin.mean().item(),
    }


def token_edit_loss(
    original_rewards: torch.Tensor,
    original_mask: torch.Tensor,
    edited_rewards: torch.Tensor,
    edited_mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Paper B's token-level loss on (original, edited) pairs (our formulation, DESIGN.md).

    Args:
        original_rewards: (B, To) per-token rewards r(original)_t.
        original_mask: (B, To) 1 on original tokens deleted or replaced by the edit, else 0.
        edited_rewards: (B, Te) per-token rewards r(edited)_t.
        edited_mask: (B, Te) 1 on edited tokens inserted or replacing, else 0.

    Returns:
        margin_b = Σ_t edited_mask·r(edited)_t − Σ_t original_mask·r(original)_t,
        loss = mean_b −log σ(margin_b); stats {accuracy (margin > 0), margin}.
        Positions with mask 0 (padding, unchanged tokens) do not affect the loss.
    """
    margin = (edited_rewards * edited_mask).sum(-1) - (original_rewards * original_mask).sum(-1)
    loss = -F.logsigmoid(margin).mean()
    return loss, {
        "accuracy": (margin > 0).float().mean().item(),
        "margin": margin.mean().item(),
    }


def edit_masks(original: Sequence, edited: Sequence) -> tuple[list[int], list[int]]:
    """Which tokens an edit touched, from difflib opcodes over the two token sequences.

    Returns (original_mask, edited_mask): original_mask[i] = 1 if original token i is in
    a 'delete' or 'replace' block; edited_mask[j] = 1 if edited token j is in an 'insert'
    or 'replace' block. `autojunk=False`: no token is treated as junk (popular tokens
    such as "the" must still align).
    """
    om, em = [0] * len(original), [0] * len(edited)
    matcher = difflib.SequenceMatcher(a=list(original), b=list(edited), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            om[i1:i2] = [1] * (i2 - i1)
        if tag in ("insert", "replace"):
            em[j1:j2] = [1] * (j2 - j1)
    return om, em


def changed_token_loss(
    rewards: torch.Tensor,
    added: torch.Tensor,
    changed: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense auxiliary loss for the token-level RM: every token an edit touched is
    classified on its own, its reward r_t being the logit of "the editor wrote this
    token" (inserted / replacing in the edited response) against "the editor removed it"
    (deleted / replaced in the original).

    The pairwise edit loss only constrains one *sum* per pair; with a few hundred pairs
    that leaves the per-token rewards free to fit noise. Unchanged tokens are not
    labelled (they cancel in the pairwise margin), and the classes are not re-weighted,
    so the reward's base rate keeps what the data says: editors remove more than they
    write.

    Args:
        rewards: (B, T) per-token rewards r_t (used as logits).
        added: (B, T) 1 where a changed token was written by the editor, 0 where removed.
        changed: (B, T) 1 on changed tokens, 0 elsewhere (unchanged, prompt, padding).

    Returns:
        loss = Σ_t changed·BCE(r_t, added_t) / Σ_t changed (0 when nothing changed), and
        stats {accuracy (sign of r_t matches), added_fraction}.
    """
    changed = changed.float()
    n = changed.sum()
    if float(n) == 0:
        return rewards.sum() * 0.0, {"accuracy": float("nan"), "added_fraction": float("nan")}
    added = added.float() * changed
    bce = F.binary_cross_entropy_with_logits(rewards, added, reduction="none")  # (B, T)
    loss = (bce * changed).sum() / n
    with torch.no_grad():
        right = (((rewards > 0).float() == added).float() * changed).sum() / n
    return loss, {"accuracy": right.item(), "added_fraction": (added.sum() / n).item()}
