"""Explicit segment features (pure part) and the feature head's warm start."""

from __future__ import annotations

import pytest
import torch

from fgrlhf_ray.rewards.segment_features import (
    FEATURE_NAMES,
    feature_norm,
    fit_feature_head,
    segment_feature_rows,
    standardize,
)


def _unit(*v: float) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def test_feature_rows_on_hand_made_embeddings():
    q = _unit(1, 0, 0)
    segs = torch.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 1, 0)])  # the third repeats the second
    resp = _unit(1, 1, 0)
    texts = ["Who won the battle", "It rained a lot, says Bob", "It rained"]
    rows = segment_feature_rows("who won the battle?", texts, q, segs, resp)
    col = {n: [r[i] for r in rows] for i, n in enumerate(FEATURE_NAMES)}
    assert col["index"] == [0.0, 1.0, 2.0]
    assert col["relative_position"] == [0.0, 0.5, 1.0]
    assert col["n_segments"] == [3.0] * 3
    assert col["question_similarity"] == pytest.approx([1.0, 0.0, 0.0])
    assert col["max_similarity_previous"] == pytest.approx([0.0, 0.0, 1.0])
    assert col["max_similarity_next"] == pytest.approx([0.0, 1.0, 0.0])
    assert col["response_similarity"] == pytest.approx([2 ** -0.5] * 3, abs=1e-6)
    assert col["question_word_overlap"] == [1.0, 0.0, 0.0]  # case-folded words
    assert col["question_word_coverage"] == [1.0, 0.0, 0.0]
    assert col["n_words"] == [4.0, 6.0, 2.0]
    single = segment_feature_rows("q", ["Only one"], q, segs[:1], resp)
    assert single[0][1] == 0.0 and single[0][4] == 0.0 and single[0][5] == 0.0
    assert segment_feature_rows("q", [], q, segs[:0], resp) == []


def test_norm_and_standardize():
    rows = [[1.0, 5.0], [3.0, 5.0]]
    norm = feature_norm(rows)
    assert norm["mean"] == [2.0, 5.0] and norm["std"] == [1.0, 1.0]  # constant column: std 1
    assert standardize(rows, norm) == [[-1.0, 0.0], [1.0, 0.0]]


def test_fit_feature_head_finds_the_informative_feature():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    y = (x[:, 1] + 0.3 * torch.randn(400, generator=g) > 0).long()
    w, b = fit_feature_head(x.tolist(), y.tolist(), l2=1e-3)
    assert w[1] > 2.0 and abs(w[0]) < 0.5 and abs(w[2]) < 0.5 and abs(b) < 0.5
    acc = (((x @ w + b) > 0).long() == y).float().mean().item()
    assert acc > 0.85
    # a heavier error weight moves the boundary towards predicting errors
    _, b_heavy = fit_feature_head(x.tolist(), y.tolist(), l2=1e-3, error_weight=4.0)
    assert b_heavy > b + 0.5


# ------------------------------------------------------------------ feature sets and evidence
from fgrlhf_ray.rewards.segment_features import (  # noqa: E402
    BASE_FEATURES,
    FEATURES,
    evidence_match_stats,
    match_runs,
    match_runs_reference,
    resolve_feature_names,
    word_list,
)

PASSAGES = [
    "Biokom Conem works as a chemist.",
    "Biokom Conem was born in Brothin.",
    "Trebioth Fiobreth works as a weaver.",
]


def _ev(text: str) -> dict:
    return evidence_match_stats(word_list(text), [word_list(s) for s in PASSAGES])


def test_resolve_feature_names_expands_groups_in_order_and_rejects_unknown_names():
    assert resolve_feature_names(None) == BASE_FEATURES == tuple(list(FEATURES)[:10])
    names = resolve_feature_names(["base", "evidence_similarity", "index"])
    assert names[:10] == BASE_FEATURES and names[10:] == ("evidence_similarity",)
    assert set(resolve_feature_names(["all"])) == set(FEATURES)
    with pytest.raises(ValueError, match="unknown segment feature 'nope'; use a group"):
        resolve_feature_names(["base", "nope"])


@pytest.mark.parametrize("seed", range(20))
def test_match_runs_agree_with_the_plain_loop_reference(seed):
    import random

    rng = random.Random(seed)
    vocab = "a b c d e".split()
    sents = [[rng.choice(vocab) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 4))]
    seg = [rng.choice(vocab + ["z"]) for _ in range(rng.randint(1, 10))]
    assert match_runs(seg, sents) == match_runs_reference(seg, sents)
    assert match_runs([], sents) == [] and match_runs(seg, []) == [0] * len(seg)


def test_a_copied_claim_matches_completely():
    ev = _ev("Biokom Conem works as a chemist.")
    assert ev["evidence_longest_match"] == 1.0 and ev["evidence_trigram_coverage"] == 1.0
    assert ev["evidence_divergences"] == 0 and ev["evidence_complete_matches"] == 1
    # two copied clauses in one sentence: two complete matches, no divergence
    ev2 = _ev("Biokom Conem works as a chemist, and Biokom Conem was born in Brothin.")
    assert ev2["evidence_divergences"] == 0 and ev2["evidence_complete_matches"] == 2
    assert ev2["evidence_word_share"] == pytest.approx(12 / 13)  # "and" is in no passage


def test_a_swapped_value_diverges_from_its_evidence():
    # every word and even every trigram occurs in the passages, but "Biokom Conem works as a"
    # continues with "chemist" there, not "weaver"
    ev = _ev("Biokom Conem works as a weaver.")
    assert ev["evidence_word_share"] == 1.0 and ev["evidence_trigram_coverage"] == 1.0
    assert ev["evidence_divergences"] == 1 and ev["evidence_longest_divergent"] == 5
    assert ev["evidence_longest_match"] == pytest.approx(5 / 6)
    assert ev["evidence_containment"] == pytest.approx(5 / 6)
    # an unsupported claim: only the name matches, then the passages go on differently
    un = _ev("Biokom Conem is married to Dana Fell.")
    assert un["evidence_divergences"] == 1 and un["evidence_longest_divergent"] == 2
    assert un["evidence_word_share"] == pytest.approx(2 / 7)
    empty = evidence_match_stats(word_list("x y"), [])
    assert set(empty.values()) == {0.0}


def test_new_feature_columns_on_hand_made_embeddings():
    q = _unit(1, 0, 0)
    segs = torch.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(1, 1, 0)])
    resp = _unit(1, 1, 0)
    texts = ["Biokom Conem works as a chemist,", "and Biokom Conem works as a weaver,", "and Biokom Conem works as a chemist."]
    names = ["question_similarity_gap", "previous_word_containment", "previous_trigram_share", "evidence_similarity",
             "evidence_divergences", "has_evidence"]
    p_emb = torch.stack([_unit(1, 0, 0), _unit(0, 0, 1), _unit(0, 1, 0)])
    rows = segment_feature_rows("What does Biokom Conem do?", texts, q, segs, resp, names=names,
                                passage_sentences=PASSAGES, passage_embeddings=p_emb)
    col = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    assert col["question_similarity_gap"] == pytest.approx([0.0, -1.0, 2 ** -0.5 - 1.0], abs=1e-6)
    assert col["previous_word_containment"] == pytest.approx([0.0, 5 / 7, 6 / 7])
    assert col["previous_trigram_share"] == pytest.approx([0.0, 3 / 5, 1.0])
    assert col["evidence_similarity"] == pytest.approx([1.0, 1.0, 2 ** -0.5], abs=1e-6)
    assert col["evidence_divergences"] == [0.0, 1.0, 0.0]
    assert col["has_evidence"] == [1.0] * 3
    # without passages every evidence column is 0, and the base columns are unchanged
    bare = segment_feature_rows("q", texts, q, segs, resp, names=list(BASE_FEATURES) + ["evidence_divergences"])
    assert [r[-1] for r in bare] == [0.0] * 3
    assert [r[:-1] for r in bare] == segment_feature_rows("q", texts, q, segs, resp)
    with pytest.raises(ValueError, match="one passage embedding per passage sentence"):
        segment_feature_rows("q", texts, q, segs, resp, names=["evidence_similarity"], passage_sentences=PASSAGES)
