"""From reward models' character-keyed verdicts to a per-token score tensor.

Reward models see response *text* and answer in character offsets (see
`fgrlhf_ray.types.SegmentRewards`). This module maps those offsets to *policy* tokens
and builds the ``(B, T)`` score tensor PPO needs, then adds the per-token KL penalty:

    score_t = Σ_scorers Σ_{segments s of that scorer ending in token t}
                  w_scorer · (v_s − μ_scorer) / σ_scorer
    r_t     = score_t − β · kl_t                      (kl_t from `algo.kl.kl_penalty`)

Which token a segment ends in: the response token containing the segment's *last
character* (``char_end − 1``); a sequence-level scorer's value lands on the last
response token (t = L − 1, EOS if it was sampled). Shapes: B samples, T the padded
response length, L_i ≤ T the real length of sample i (``action_mask[i].sum()``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fgrlhf_ray.algo.kl import kl_penalty
from fgrlhf_ray.algo.losses import masked_mean
from fgrlhf_ray.algo.weighting import RewardSpec, weighted_values

__all__ = [
    "token_char_offsets",
    "char_ends_to_token_index",
    "ScorerOutput",
    "place_segment_rewards",
    "total_token_rewards",
    "detox_sentence_rewards",
    "detox_holistic_reward",
    "segment_rewards_from_labels",
]

_REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence

Offsets = Sequence[tuple[int, int]]


# --------------------------------------------------------------------------------------
# Token ↔ character alignment
# --------------------------------------------------------------------------------------


def _offsets_by_prefix_agreement(token_ids: Sequence[int], decode, text: str) -> list[tuple[int, int]]:
    """Quadratic but assumption-free fallback: token i ends where decode(ids[:i+1])
    (minus trailing U+FFFD) stops agreeing with ``text``; ends made non-decreasing."""
    offsets: list[tuple[int, int]] = []
    prev_end = 0
    for i in range(len(token_ids)):
        partial = decode(list(token_ids[: i + 1]))
        stable = partial.rstrip(_REPLACEMENT) if i < len(token_ids) - 1 else partial
        n = min(len(stable), len(text))
        lcp = 0
        while lcp < n and stable[lcp] == text[lcp]:
            lcp += 1
        end = max(prev_end, lcp)
        offsets.append((prev_end, end))
        prev_end = end
    return offsets


def token_char_offsets(
    token_ids: Sequence[int],
    decode: Callable[[list[int]], str],
    *,
    text: str | None = None,
) -> list[tuple[int, int]]:
    """Character span ``(start, end)`` in the decoded response for each response token.

    Use this when token ids come from vLLM (no offset mapping): it detokenizes
    incrementally, like vLLM's own detokenizer, so it works with any tokenizer whose
    ``decode`` is given (e.g. ``lambda ids: tok.decode(ids, skip_special_tokens=True)``).

    Byte-level BPE can split one character over several tokens; decoding such a
    prefix ends in U+FFFD. Those characters are withheld until the token that
    completes them, so: a token that only starts a character gets an *empty* span
    ``(s, s)``; the completing token's span contains the character; characters that
    were complete before the dangling bytes still belong to the earlier token.
    Special tokens that decode to nothing (EOS with ``skip_special_tokens``) get empty
    spans too. Spans are contiguous: ``offsets[i][0] == offsets[i-1][1]``.

    Args:
        token_ids: the response's policy token ids, length L.
        decode: list[int] -> str, the policy tokenizer's decode.
        text: the response text the scorers saw; default ``decode(token_ids)``. If the
            incremental pieces do not concatenate to it (tokenizers whose decode
            rewrites earlier text, e.g. clean-up of spaces), a slower per-prefix
            alignment against ``text`` is used instead.

    Returns:
        ``[(start, end)] * L`` character offsets into ``text``.
    """
    ids = list(token_ids)
    if text is None:
        text = decode(ids)
    offsets: list[tuple[int, int]] = []
    pieces: list[str] = []  # the characters each token added, to verify against `text`
    cursor = 0  # characters assigned so far
    prefix_offset = 0  # window start: decoding from here gives context-correct text
    read_offset = 0  # tokens before read_offset are fully emitted
    prefix_text = ""  # decode(ids[prefix_offset:read_offset]), all of it emitted
    emitted_in_window = 0  # characters past prefix_text already assigned (dangling case)
    dangling_start = None  # token holding the first byte of the unfinished character
    for i in range(len(ids)):
        new_text = decode(ids[prefix_offset : i + 1])
        dangling = new_text.endswith(_REPLACEMENT)
        stable_len = len(new_text.rstrip(_REPLACEMENT)) if dangling else len(new_text)
        lo = len(prefix_text) + emitted_in_window
        piece = new_text[lo:stable_len] if stable_len > lo else ""
        offsets.append((cursor, cursor + len(piece)))
        pieces.append(piece)
        cursor += len(piece)
        if dangling:
            emitted_in_window += len(piece)
            if dangling_start is None or piece:
                dangling_start = i
        else:
            # Slide the window, keeping one chunk of context behind (as vLLM does) so
            # that e.g. SentencePiece's leading-space rule sees what a full decode sees.
            prefix_offset, read_offset = read_offset, i + 1
            prefix_text = decode(ids[prefix_offset:read_offset])
            emitted_in_window = 0
            dangling_start = None
    if dangling_start is not None and cursor < len(text):
        # The response ends inside a character (cut mid-UTF-8), so `text` ends in
        # U+FFFD: give it to the token holding the character's first byte and shift the
        # (empty) spans after it.
        extra = text[cursor:]
        a, b = offsets[dangling_start]
        offsets[dangling_start] = (a, b + len(extra))
        pieces[dangling_start] += extra
        for j in range(dangling_start + 1, len(offsets)):
            a, b = offsets[j]
            offsets[j] = (a + len(extra), b + len(extra))
    if "".join(pieces) != text:
        return _offsets_by_prefix_agreement(ids, decode, text)
    return offsets


def char_ends_to_token_index(offsets: Offsets, char_ends: Sequence[int]) -> list[int]:
    """Map segment end characters to the response token that holds each one's last character.

    For ``char_end`` e the target character is ``c = e − 1``; the answer is the largest
    token index t with a non-empty span and ``offsets[t][0] ≤ c``. So:
      * the token containing c wins, also when it straddles into the next segment
        (the segment's reward then sits on that straddling token);
      * when several tokens share c (HF byte-level offsets give every byte-token of a
        multi-byte character the same span), the *last* one — the token that completes
        the character — wins;
      * empty spans (special tokens such as EOS, byte-tokens that only start a
        character) are never chosen;
      * c past the last token (a response cut short) clamps to the last non-empty
        token; c in leading whitespace before the first token maps to the first one.

    Args:
        offsets: ``[(start, end)] * L`` for the response tokens — from
            ``tokenizer(text, return_offsets_mapping=True)`` or
            :func:`token_char_offsets`.
        char_ends: exclusive segment ends in the same text, each ≥ 1.

    Returns:
        One token index in ``[0, L)`` per ``char_end``.
    """
    nonempty = [(a, t) for t, (a, b) in enumerate(offsets) if b > a]
    if char_ends and not nonempty:
        raise ValueError(
            "char_ends_to_token_index: no response token covers any character "
            f"(L={len(offsets)} tokens, all with empty spans) but {len(char_ends)} "
            "segment end(s) were given; check that the offsets come from the same text "
            "the scorers saw."
        )
    starts = [a for a, _ in nonempty]
    monotone = all(starts[k] <= starts[k + 1] for k in range(len(starts) - 1))
    result = []
    for e in char_ends:
        if e < 1:
            raise ValueError(f"char_ends_to_token_index: char_end must be >= 1, got {e}")
        c = e - 1
        if monotone:
            k = bisect.bisect_right(starts, c) - 1
        else:
            k = max((j for j, a in enumerate(starts) if a <= c), default=-1)
        result.append(nonempty[max(k, 0)][1])
    return result


# --------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScorerOutput:
    """One reward model's verdicts on a batch, plus how to weigh them.

    Fields:
        name: scorer name (key of the per-scorer tensors and stats).
        density: "sub_sentence" | "sentence" | "token" → placed by character end;
            "sequence" → the sum of the sample's values lands on its last token.
        rewards: per sample (length B) a list of ``(char_end, value)`` pairs. For
            density "token" a sample may instead be a plain list of L_i floats, one per
            *policy* response token (already aligned, no offsets needed).
        weight: w in ``w · (v − μ) / σ`` (`algo.weighting`, the one weighting rule).
        mean, std: μ, σ (e.g. the RM's training-score statistics; defaults leave v as is).
        batch_normalize: if True, μ and σ are instead computed over all of this
            scorer's values in the batch (population std; σ < 1e-8 → 1).
    """

    name: str
    density: str
    rewards: Sequence[Sequence]
    weight: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    batch_normalize: bool = False

    @classmethod
    def from_segment_rewards(cls, name: str, verdicts: Sequence, **kwargs) -> "ScorerOutput":
        """Build from one `fgrlhf_ray.types.SegmentRewards` per sample (same density)."""
        densities = {v.density for v in verdicts}
        if len(densities) > 1:
            raise ValueError(f"ScorerOutput {name!r}: mixed densities {sorted(densities)} in one batch")
        density = densities.pop() if densities else "sequence"
        return cls(name=name, density=density, rewards=[v.char_ends_and_values() for v in verdicts], **kwargs)

    @classmethod
    def from_spec(cls, spec: RewardSpec, verdicts: Sequence) -> "ScorerOutput":
        """`from_segment_rewards` weighed as `spec` says (its name, w, μ, σ)."""
        return cls.from_segment_rewards(spec.name, verdicts, weight=spec.weight, mean=spec.mean, std=spec.std)


_DENSITIES = ("sub_sentence", "sentence", "sequence", "token")


def _normalizer(scorer: ScorerOutput) -> tuple[float, float]:
    if not scorer.batch_normalize:
        if scorer.std <= 0:
            raise ValueError(f"ScorerOutput {scorer.name!r}: std must be > 0, got {scorer.std}")
        return scorer.mean, scorer.std
    values = []
    for sample in scorer.rewards:
        for item in sample:
            values.append(float(item[1]) if isinstance(item, (tuple, list)) else float(item))
    if not values:
        return 0.0, 1.0
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std(unbiased=False))
    return float(t.mean()), (std if std > 1e-8 else 1.0)


def place_segment_rewards(
    scorers: Sequence[ScorerOutput],
    *,
    token_offsets: Sequence[Offsets],
    action_mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Build the weighted per-token score tensor from several scorers.

    For sample i with L_i = action_mask[i].sum() real response tokens:

        contrib[name][i, t] = Σ_{(e, v) of that scorer with token(e) = t} w · (v − μ) / σ
        scores[i, t]        = Σ_name contrib[name][i, t]

    where token(e) = :func:`char_ends_to_token_index` for densities
    sub_sentence / sentence / token, and token(e) = L_i − 1 for "sequence". Several
    segments mapping to one token add up. Padding positions (t ≥ L_i) are 0.

    Args:
        scorers: the scorers' outputs, each with B samples.
        token_offsets: per sample ``[(start, end)] * L_i`` policy-token character
            offsets into the response text (see :func:`token_char_offsets`).
        action_mask: (B, T), 1 on real response tokens (right padding).

    Returns:
        scores: (B, T) float32, Σ of all contributions.
        per_scorer: name → (B, T) float32 contribution (weighted, normalised).
        stats: per scorer ``reward/<name>/mean`` (mean over samples of Σ_t contrib),
            ``reward/<name>/raw_mean`` (mean raw value over all its segments),
            ``reward/<name>/segments`` (mean segments per sample),
            ``reward/<name>/dropped`` (values that could not be placed: samples with
            L_i = 0), and ``reward/score_mean`` (mean over samples of Σ_t scores).
    """
    lengths = _response_lengths(scorers, token_offsets=token_offsets, action_mask=action_mask)
    B, T = action_mask.shape
    per_scorer: dict[str, torch.Tensor] = {}
    stats: dict[str, float] = {}
    scores = torch.zeros(B, T, dtype=torch.float64)
    for scorer in scorers:
        contrib, raw_values, dropped = _place_scorer(scorer, token_offsets=token_offsets, lengths=lengths, T=T)
        per_scorer[scorer.name] = contrib.float()
        scores += contrib
        key = f"reward/{scorer.name}"
        stats[f"{key}/mean"] = float(contrib.sum(dim=1).mean()) if B else 0.0
        stats[f"{key}/raw_mean"] = float(sum(raw_values) / len(raw_values)) if raw_values else 0.0
        stats[f"{key}/segments"] = float(len(raw_values) / B) if B else 0.0
        stats[f"{key}/dropped"] = float(dropped)
    stats["reward/score_mean"] = float(scores.sum(dim=1).mean()) if B else 0.0
    return scores.float(), per_scorer, stats


def _response_lengths(scorers: Sequence[ScorerOutput], *, token_offsets: Sequence[Offsets],
                      action_mask: torch.Tensor) -> list[int]:
    """L_i per sample, after checking that the batch's pieces fit together (mask (B, T), one
    offset list of L_i spans per sample, scorer names unique): a mismatch is a caller's bug,
    caught here with the numbers rather than as a wrong reward later."""
    if action_mask.dim() != 2:
        raise ValueError(f"place_segment_rewards: action_mask must be (B, T), got shape {tuple(action_mask.shape)}")
    B = action_mask.shape[0]
    if len(token_offsets) != B:
        raise ValueError(f"place_segment_rewards: {len(token_offsets)} offset lists for B={B} samples")
    lengths = action_mask.bool().sum(dim=1).tolist()
    for i, (offs, L) in enumerate(zip(token_offsets, lengths)):
        if len(offs) != L:
            raise ValueError(
                f"place_segment_rewards: sample {i} has {len(offs)} token offsets but "
                f"action_mask has {L} response tokens; pass offsets for exactly the masked tokens."
            )
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"place_segment_rewards: duplicate scorer names {names}")
    return lengths


def _place_scorer(scorer: ScorerOutput, *, token_offsets: Sequence[Offsets], lengths: Sequence[int],
                  T: int) -> tuple[torch.Tensor, list[float], int]:
    """One scorer's (B, T) float64 contribution w·(v − μ)/σ at each value's token, its raw
    values (for the stats) and how many values had no token to land on (L_i = 0)."""
    B = len(lengths)
    if scorer.density not in _DENSITIES:
        raise ValueError(f"ScorerOutput {scorer.name!r}: density {scorer.density!r} not in {_DENSITIES}")
    if len(scorer.rewards) != B:
        raise ValueError(f"ScorerOutput {scorer.name!r}: rewards for {len(scorer.rewards)} samples, batch has B={B}")
    mu, sigma = _normalizer(scorer)
    contrib = torch.zeros(B, T, dtype=torch.float64)
    raw_values: list[float] = []
    dropped = 0
    for i, sample in enumerate(scorer.rewards):
        idx, vals = _sample_positions(scorer, i, list(sample), L=lengths[i], offsets=token_offsets[i])
        raw_values.extend(vals)
        if idx is None:
            dropped += len(vals)
        elif vals:
            contrib[i].index_add_(0, torch.tensor(idx, dtype=torch.long),
                                  weighted_values(vals, weight=scorer.weight, mean=mu, std=sigma))
    return contrib, raw_values, dropped


def _sample_positions(scorer: ScorerOutput, i: int, sample: list, *, L: int,
                      offsets: Offsets) -> tuple[list[int] | None, list[float]]:
    """(token index per value, values) of sample i; index None when the sample has no response
    token (L = 0) to put its values on. Token-aligned values (a plain list of L floats) sit
    on tokens 0..L−1; a sequence scorer's on L − 1; the rest where their char_end falls."""
    if not sample:
        return [], []
    if scorer.density == "token" and not isinstance(sample[0], (tuple, list)):
        if len(sample) != L:
            raise ValueError(
                f"ScorerOutput {scorer.name!r}: sample {i} has {len(sample)} per-token values "
                f"but {L} response tokens"
            )
        return list(range(L)), [float(v) for v in sample]
    ends = [int(e) for e, _ in sample]
    vals = [float(v) for _, v in sample]
    if L == 0:
        return None, vals
    if scorer.density == "sequence":
        return [L - 1] * len(vals), vals
    return char_ends_to_token_index(offsets, ends), vals


def total_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token PPO reward: the placed scores minus the KL penalty.

        r_t = scores_t − β · kl_t,   β = kl_coef (`ppo.kl_coef`),   kl_t = kl_penalty(logprobs, ref_logprobs, mask, estimator)_t

    All tensors (B, T), ``mask`` 1 on real response tokens; r is 0 where mask is 0.
    ``logprobs`` should be the rollout policy's log π_old(a_t) (learner forward pass).

    Returns:
        rewards: (B, T).
        stats: ``kl`` (mean over samples of Σ_t kl_t — the quantity an adaptive KL
            controller targets), ``kl_token_mean`` (masked mean of kl_t),
            ``score`` (mean Σ_t scores_t), ``reward`` (mean Σ_t r_t). (β itself is logged once, as
            the controller's ``kl_coef``.)
    """
    m = mask.bool()
    kl = kl_penalty(logprobs, ref_logprobs, mask, estimator=estimator)
    scores = torch.where(m, scores, torch.zeros((), dtype=scores.dtype))
    rewards = torch.where(m, scores - kl_coef * kl, torch.zeros((), dtype=kl.dtype))
    stats = {
        "kl": float(kl.sum(dim=1).mean()) if kl.numel() else 0.0,
        "kl_token_mean": float(masked_mean(kl, mask)),
        "score": float(scores.sum(dim=1).mean()) if scores.numel() else 0.0,
        "reward": float(rewards.sum(dim=1).mean()) if rewards.numel() else 0.0,
    }
    return rewards, stats


# --------------------------------------------------------------------------------------
# Task-specific value rules
# --------------------------------------------------------------------------------------


def segment_rewards_from_labels(
    spans: Sequence[tuple[int, int]], has_error: Sequence[bool]
) -> list[tuple[int, float]]:
    """Paper A's classifier rule: ``(char_end, +1)`` for a no-error segment, ``−1`` for an error.

    Multiply by the scorer weight (w_rel, w_fact) through `ScorerOutput.weight`.
    """
    if len(spans) != len(has_error):
        raise ValueError(f"segment_rewards_from_labels: {len(spans)} spans but {len(has_error)} labels")
    return [(end, -1.0 if err else 1.0) for (_, end), err in zip(spans, has_error)]


def detox_sentence_rewards(cumulative_toxicity: Sequence[float], *, initial_toxicity: float = 0.0) -> list[float]:
    """Paper A's fine-grained detoxification reward, one value per sentence.

    With P_j = P(toxic | y_1..j) the toxicity of the response prefix ending after
    sentence j (``cumulative_toxicity[j-1]``) and P_0 = ``initial_toxicity``:

        reward_j = −(P_j − P_{j−1})

    The sum over sentences telescopes to P_0 − P(y). Pair the values with the sentence
    ends from `fgrlhf_ray.data.segments.split_sentences` to get ``(char_end, value)``s.
    """
    out = []
    prev = float(initial_toxicity)
    for p in cumulative_toxicity:
        p = float(p)
        out.append(-(p - prev))
        prev = p
    return out


def detox_holistic_reward(toxicity: float) -> float:
    """Holistic detoxification reward ``1 − P(toxic | y)`` (one value, on the last token)."""
    return 1.0 - float(toxicity)
