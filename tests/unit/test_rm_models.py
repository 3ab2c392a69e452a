"""The three neural RMs on tiny local backbones: scoring API, save → load → identical
scores, padding invariance, metadata dispatch and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards import (
    RewardModel,
    SegmentClassifierRM,
    SequencePreferenceRM,
    TokenLevelRM,
    default_backbone_path,
    load_reward_model,
)
from fgrlhf_ray.rewards.base import METADATA_FILE
from fgrlhf_ray.rewards.sequence_preference import pool_hidden
from fgrlhf_ray.rewards.tiny import build_tiny_bert
from fgrlhf_ray.data.rm_data import SegmentExample
from fgrlhf_ray.data.segments import split_sentences, split_sub_sentences

PROMPT = ("question: who led the british at princeton? context: wikipage: Princeton text: "
          "Cornwallis left 1,400 troops under Mawhood. Washington attacked the garrison.")
RESPONSES = [
    "Cornwallis led the British, and Mawhood commanded 1,400 troops at Princeton. The battle was in 1777.",
    "Washington attacked.",
    "",
    "Café naïve 🙂 text, with unicode; it was cold that winter!",
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return str(build_tiny_bert(tmp_path_factory.mktemp("bert")))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    from fgrlhf_ray.testing import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("llama"), hidden_size=64, num_heads=1, num_layers=1))


def _perturb_head(rm, seed=1):
    # A random head far from the near-zero init makes score comparisons meaningful.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rm.network.head.weight.copy_(torch.randn(rm.network.head.weight.shape, generator=g))
        rm.network.head.bias.copy_(torch.randn(rm.network.head.bias.shape, generator=g))


def _scores(out):
    return [[(s.char_start, s.char_end, round(s.value, 5), s.label) for s in r.segments] for r in out]


@pytest.mark.parametrize(
    "cls, task, extra",
    [
        (SegmentClassifierRM, "relevance", {}),
        (SegmentClassifierRM, "factuality", {"use_context": True}),
        (SegmentClassifierRM, "relevance", {"segment_features": True}),
        (SequencePreferenceRM, "holistic", {}),
        (TokenLevelRM, "token_level", {}),
    ],
)
def test_save_load_gives_identical_scores(bert, tmp_path, cls, task, extra):
    rm = cls.from_backbone(bert, task=task, max_length=64, **extra)
    _perturb_head(rm)
    if rm.network.feature_head is not None:  # features must reach the scores
        rm.metadata.feature_norm = {"mean": [0.5] * 10, "std": [2.0] * 10}
        with torch.no_grad():
            rm.network.feature_head.weight.normal_(0.0, 3.0)
    prompts = [PROMPT] * len(RESPONSES)
    before = rm.score(prompts, RESPONSES)
    rm.save(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert type(loaded) is cls
    assert loaded.metadata == rm.metadata
    after = loaded.score(prompts, RESPONSES)
    assert _scores(after) == _scores(before)
    assert isinstance(loaded, RewardModel)
    assert (loaded.name, loaded.kind, loaded.density) == (task, cls.kind, rm.density)


def test_scores_do_not_depend_on_batching_or_padding(bert):
    for cls, task in [(SegmentClassifierRM, "relevance"), (SequencePreferenceRM, "completeness"),
                      (TokenLevelRM, "token_level")]:
        rm = cls.from_backbone(bert, task=task, max_length=128)
        _perturb_head(rm)
        prompts = [PROMPT] * len(RESPONSES)
        together = rm.score(prompts, RESPONSES)  # padded to the longest
        rm.batch_size = 1
        alone = [rm.score([p], [r])[0] for p, r in zip(prompts, RESPONSES)]
        for a, b in zip(together, alone):
            assert [s.char_end for s in a.segments] == [s.char_end for s in b.segments]
            for x, y in zip(a.segments, b.segments):
                assert x.value == pytest.approx(y.value, abs=1e-4)
                assert x.probability == pytest.approx(y.probability, abs=1e-4) if x.probability is not None else True


def test_segment_classifier_outputs(bert):
    rel = SegmentClassifierRM.from_backbone(bert, task="relevance", max_length=128)
    fact = SegmentClassifierRM.from_backbone(bert, task="factuality", max_length=128, use_context=True)
    _perturb_head(rel)
    r = RESPONSES[0]
    [out] = rel.score([PROMPT], [r])
    assert out.density == "sub_sentence" and out.model_name == "relevance"
    assert [(s.char_start, s.char_end) for s in out.segments] == split_sub_sentences(r)
    [fout] = fact.score([PROMPT], [r])
    assert [(s.char_start, s.char_end) for s in fout.segments] == split_sentences(r)
    probs, _ = rel.predict_proba([PROMPT], [r], [split_sub_sentences(r)])
    for s, p in zip(out.segments, probs[0]):
        assert s.value in (1.0, -1.0)
        assert (s.label == "error") == (p >= rel.metadata.threshold) == (s.value == -1.0)
        assert s.probability == pytest.approx(p if s.label == "error" else 1 - p)
    # The threshold stored with the model decides the labels.
    rel.metadata.threshold = 0.0
    assert all(s.label == "error" for s in rel.score([PROMPT], [r])[0].segments)
    rel.metadata.threshold = 1.01
    assert all(s.value == 1.0 for s in rel.score([PROMPT], [r])[0].segments)
    assert rel.score([PROMPT], [""])[0].segments == []


def test_sequence_rm_normalization_and_whole_response_segment(bert, tmp_path):
    rm = SequencePreferenceRM.from_backbone(bert, task="holistic", max_length=64)
    assert rm.normalization is None
    rm.metadata.normalization = {"mean": 0.25, "std": 2.0, "n": 10}
    rm.save(tmp_path / "seq")
    loaded = load_reward_model(tmp_path / "seq")
    assert loaded.normalization == (0.25, 2.0)
    out = loaded.score([PROMPT, PROMPT], RESPONSES[:2])
    for o, r, s in zip(out, RESPONSES[:2], loaded.score_texts([PROMPT, PROMPT], RESPONSES[:2])):
        [seg] = o.segments
        assert (seg.char_start, seg.char_end) == (0, len(r)) and seg.value == pytest.approx(s)
        assert o.density == "sequence"


def test_pooling_against_loop():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    mean = pool_hidden(h, mask, "mean")
    last = pool_hidden(h, mask, "last")
    for b in range(3):
        n = int(mask[b].sum())
        assert torch.allclose(mean[b], h[b, :n].mean(0), atol=1e-6)
        assert torch.equal(last[b], h[b, n - 1])
    assert torch.equal(pool_hidden(h, mask, "cls"), h[:, 0])
    h2 = h.clone()
    h2[mask == 0] = 1e4  # junk at padding changes nothing
    assert torch.allclose(pool_hidden(h2, mask, "mean"), mean) and torch.equal(pool_hidden(h2, mask, "last"), last)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_hidden(h, mask, "max")


def test_token_level_rm_segments_are_tokens(bert):
    rm = TokenLevelRM.from_backbone(bert, task="token_level", max_length=128)
    _perturb_head(rm)
    r = RESPONSES[3]
    [out] = rm.score([PROMPT], [r])
    [(layout, values)] = rm.token_rewards([PROMPT], [r])
    assert [(s.char_start, s.char_end) for s in out.segments] == [tuple(o) for o in layout.response_offsets]
    assert [s.value for s in out.segments] == pytest.approx(values)
    assert out.segments[-1].char_end == len(r) and out.density == "token"


@pytest.mark.parametrize("cls, task", [(SequencePreferenceRM, "edit_preference"), (TokenLevelRM, "token_level")])
def test_causal_lm_backbones(llama, tmp_path, cls, task):
    rm = cls.from_backbone(llama, task=task, max_length=96)
    assert rm.metadata.is_decoder
    if cls is SequencePreferenceRM:
        assert rm.metadata.pooling == "last"
    _perturb_head(rm)
    before = rm.score([PROMPT, PROMPT], RESPONSES[:2])
    rm.save(tmp_path / "m")
    after = load_reward_model(tmp_path / "m").score([PROMPT, PROMPT], RESPONSES[:2])
    assert _scores(after) == _scores(before)
    if cls is TokenLevelRM:
        assert [s.char_end for s in before[1].segments][-1] == len(RESPONSES[1])


def test_training_hooks_produce_finite_losses(bert):
    from fgrlhf_ray.data.rm_data import EditPair, PreferencePair, SegmentExample

    rel = SegmentClassifierRM.from_backbone(bert, task="relevance", max_length=128)
    r = RESPONSES[0]
    ex = SegmentExample(PROMPT, r, split_sub_sentences(r), [1, None, 0][: len(split_sub_sentences(r))])
    [feat] = rel.features(ex)
    labelled = [(i, l) for i, l in enumerate(feat["labels"]) if l != -100]
    assert all(feat["input_ids"][i] == rel.tokenizer.sep_token_id for i, _ in labelled)
    loss, _ = rel.compute_loss(rel.collate([feat]))
    assert torch.isfinite(loss)

    seq = SequencePreferenceRM.from_backbone(bert, task="completeness", max_length=128)
    loss, stats = seq.compute_loss(seq.collate(seq.features(PreferencePair(PROMPT, r, "Washington attacked."))))
    assert torch.isfinite(loss) and 0.0 <= stats["accuracy"] <= 1.0

    tok = TokenLevelRM.from_backbone(bert, task="token_level", max_length=128)
    assert tok.features(EditPair(PROMPT, "Same text.", "Same  text.")) == []  # no token changed
    [f] = tok.features(EditPair(PROMPT, "It was Cornwallis, and it was cold.", "It was Cornwallis."))
    assert f["original_changed"] and not f["edited_changed"]
    loss, _ = tok.compute_loss(tok.collate([f]))
    assert torch.isfinite(loss)


def test_bad_model_folders(tmp_path, bert):
    with pytest.raises(ConfigError, match="not found"):
        load_reward_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="fgrlhf_rm.json is missing"):
        load_reward_model(tmp_path / "empty")
    rm = SequencePreferenceRM.from_backbone(bert, task="holistic", max_length=64)
    rm.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / METADATA_FILE).read_text())
    meta["kind"] = "magic"
    (tmp_path / "m" / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="unknown reward-model kind 'magic'"):
        load_reward_model(tmp_path / "m")
    with pytest.raises(ConfigError, match="cannot learn task 'relevance'"):
        SequencePreferenceRM.from_backbone(bert, task="relevance")
    with pytest.raises(ConfigError, match="backbone folder not found"):
        TokenLevelRM.from_backbone(str(tmp_path / "nope"), task="token_level")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm.score(["a", "b"], ["c"])


def test_default_backbone_is_the_installed_minilm_package():
    path = Path(default_backbone_path())
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 384


def test_segment_features_change_the_logits_and_need_their_encoder(bert, tmp_path):
    plain = SegmentClassifierRM.from_backbone(bert, task="relevance", max_length=128)
    feat = SegmentClassifierRM.from_backbone(bert, task="relevance", max_length=128, segment_features=True)
    _perturb_head(plain)
    _perturb_head(feat)
    r = RESPONSES[0]
    spans = split_sub_sentences(r)
    # A zero feature head (the untrained state) leaves the classifier's probabilities as they are.
    assert feat.predict_proba([PROMPT], [r], [spans])[0][0] == pytest.approx(plain.predict_proba([PROMPT], [r], [spans])[0][0])
    with torch.no_grad():
        feat.network.feature_head.weight[1, 0] = 5.0  # "later segments are errors"
    p = feat.predict_proba([PROMPT], [r], [spans])[0][0]
    base = plain.predict_proba([PROMPT], [r], [spans])[0][0]
    assert p[0] == pytest.approx(base[0], abs=1e-6) and p[1] > base[1]  # index 0 vs 1
    [f] = feat.features(SegmentExample(PROMPT, r, spans, [0] * len(spans)))
    assert [pos for pos, _ in f["seg_features"]] == [i for i, t in enumerate(f["input_ids"]) if t == feat.tokenizer.sep_token_id][: len(spans)]
    assert torch.isfinite(feat.compute_loss(feat.collate([f]))[0])
    feat.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "feature_encoder" / "config.json").is_file()
    import shutil

    shutil.rmtree(tmp_path / "rm" / "feature_encoder")
    with pytest.raises(ConfigError, match="feature_encoder/ is missing"):
        load_reward_model(tmp_path / "rm")
    with pytest.raises(ConfigError, match="segment_features applies to segment RMs"):
        SequencePreferenceRM.from_backbone(bert, task="holistic", segment_features=True)


def test_token_level_changed_token_loss_is_added_when_weighted(bert):
    from fgrlhf_ray.data.rm_data import EditPair

    tok = TokenLevelRM.from_backbone(bert, task="token_level", max_length=128)
    _perturb_head(tok)
    [f] = tok.features(EditPair(PROMPT, "It was Cornwallis, and it was cold.", "It was Cornwallis, surely."))
    batch = tok.collate([f])
    plain, _ = tok.compute_loss(batch)
    tok.changed_token_loss_weight = 0.5
    both, stats = tok.compute_loss(batch)
    n_removed, n_written = len(f["original_changed"]), len(f["edited_changed"])
    assert both.item() > plain.item()
    assert stats["changed_added_fraction"] == pytest.approx(n_written / (n_removed + n_written))


def test_word_only_evidence_features_need_no_encoder_and_read_the_passages(bert, tmp_path):
    names = ["position", "evidence_words", "lexical_redundancy"]
    rm = SegmentClassifierRM.from_backbone(bert, task="factuality", max_length=128, segment_features=True,
                                           feature_names=names)
    assert rm.feature_encoder is None  # no embedding feature: no frozen encoder copy
    assert list(rm.feature_names) == rm.metadata.feature_names and len(rm.feature_names) == 13
    assert rm.network.feature_head.in_features == 13
    r = RESPONSES[0]
    spans = split_sentences(r)
    raw = rm.raw_segment_features([PROMPT], [r], [spans])[0]
    col = rm.feature_names.index("evidence_word_share")
    assert 0.0 < raw[0][col] < 1.0  # reads the passages after "context:" (use_context is off here)
    bare = rm.raw_segment_features(["question: who led the british at princeton?"], [r], [spans])[0]
    assert bare[0][col] == 0.0 and bare[0][rm.feature_names.index("has_evidence")] == 0.0
    _perturb_head(rm)
    rm.metadata.feature_norm = {"mean": [0.5] * 13, "std": [2.0] * 13}
    with torch.no_grad():
        rm.network.feature_head.weight.normal_(0.0, 3.0)
    before = rm.score([PROMPT] * len(RESPONSES), RESPONSES)
    rm.save(tmp_path / "rm")
    assert not (tmp_path / "rm" / "feature_encoder").exists()
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.metadata.feature_names == rm.metadata.feature_names
    assert _scores(loaded.score([PROMPT] * len(RESPONSES), RESPONSES)) == _scores(before)
    with pytest.raises(ConfigError, match="unknown segment feature 'nope'"):
        SegmentClassifierRM.from_backbone(bert, task="factuality", segment_features=True, feature_names=["nope"])
    with pytest.raises(ConfigError, match="need segment_features=True"):
        SegmentClassifierRM.from_backbone(bert, task="factuality", feature_names=["position"])


def test_models_saved_before_feature_names_load_with_the_base_ten(bert, tmp_path):
    rm = SegmentClassifierRM.from_backbone(bert, task="relevance", max_length=64, segment_features=True)
    assert rm.metadata.feature_names == list(rm.feature_names) and len(rm.feature_names) == 10
    rm.save(tmp_path / "rm")
    meta = json.loads((tmp_path / "rm" / METADATA_FILE).read_text())
    del meta["feature_names"]  # the metadata of an older model
    (tmp_path / "rm" / METADATA_FILE).write_text(json.dumps(meta))
    old = load_reward_model(tmp_path / "rm")
    assert old.metadata.feature_names is None and len(old.feature_names) == 10
    assert old.network.feature_head.in_features == 10 and old.feature_encoder is not None


def test_a_separate_feature_encoder_is_saved_with_its_tokenizer(bert, tmp_path):
    other = str(build_tiny_bert(tmp_path / "enc", seed=3))
    rm = SegmentClassifierRM.from_backbone(bert, task="relevance", max_length=64, segment_features=True,
                                           feature_names=["base"], feature_encoder=other)
    rm.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "feature_encoder" / "tokenizer_config.json").is_file()
    loaded = load_reward_model(tmp_path / "rm")
    r = RESPONSES[0]
    sp = split_sub_sentences(r)
    assert loaded.raw_segment_features([PROMPT], [r], [sp]) == rm.raw_segment_features([PROMPT], [r], [sp])
