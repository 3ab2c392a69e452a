"""FunctionScorer result formats and DetoxScorer's paper-A rewards."""

from __future__ import annotations

import pytest

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards import DetoxScorer, FunctionScorer, RewardModel
from fgrlhf_ray.data.segments import split_sentences
from fgrlhf_ray.types import Segment, SegmentRewards


def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def test_function_scorer_from_module_path_and_protocol():
    fs = FunctionScorer(target=f"{__name__}:length_reward", name="len", density="sequence")
    assert isinstance(fs, RewardModel)
    [out] = fs.score(["p"], ["hello"])
    assert out.segments == [Segment(0, 5, 5.0)] and out.density == "sequence" and out.model_name == "len"
    assert fs.normalization is None


def test_function_scorer_accepts_every_segment_form():
    response = "One. Two. Three."

    def fn(prompt, response):
        return [(4, 1.0), (5, 9, -1.0), {"char_end": 16, "value": 0.5, "label": "x"}]

    [out] = FunctionScorer(target=fn, density="sentence", batched=False).score(["p"], [response])
    assert [(s.char_start, s.char_end, s.value, s.label) for s in out.segments] == [
        (0, 4, 1.0, None), (5, 9, -1.0, None), (9, 16, 0.5, "x")]
    sr = SegmentRewards([Segment(0, 3, 2.0)], "token", "mine")
    assert FunctionScorer(target=lambda p, r: [sr], density="token").score(["p"], ["abc"]) == [sr]


@pytest.mark.parametrize(
    "result, density, message",
    [
        (1.0, "sentence", "returned a single number but the scorer's density is 'sentence'"),
        ([(99, 1.0)], "sentence", "outside the response"),
        ([(3, float("nan"))], "sentence", "is not finite"),
        ([(3, "high")], "sentence", "is not a number"),
        ("text", "sentence", "expected a number, SegmentRewards or a list"),
    ],
)
def test_function_scorer_bad_results(result, density, message):
    fs = FunctionScorer(target=lambda p, r: result, density=density, batched=False, name="f")
    with pytest.raises(ValueError, match=message):
        fs.score(["p"], ["abcde"])


def test_function_scorer_bad_targets():
    with pytest.raises(ConfigError, match="must look like 'package.module:function'"):
        FunctionScorer(target="no_colon")
    with pytest.raises(ConfigError, match="cannot import module"):
        FunctionScorer(target="surely_not_a_module_xyz:f")
    with pytest.raises(ConfigError, match="has no attribute"):
        FunctionScorer(target=f"{__name__}:missing_fn")
    with pytest.raises(ConfigError, match="density must be one of"):
        FunctionScorer(target=length_reward, density="paragraph")
    with pytest.raises(ValueError, match="returned 1 results for 2 responses"):
        FunctionScorer(target=lambda p, r: [1.0]).score(["a", "b"], ["c", "d"])


def toy_toxicity(text: str) -> float:
    return min(1.0, text.lower().count("awful") / 4)


def test_detox_fine_grained_is_minus_delta_p_per_sentence():
    response = "You are nice. That was awful. Awful, awful day."
    ds = DetoxScorer(toxicity=toy_toxicity, mode="fine_grained")
    [out] = ds.score(["p"], [response])
    spans = split_sentences(response)
    assert [(s.char_start, s.char_end) for s in out.segments] == spans
    # P of prefixes: 0, 0.25, 0.75 → rewards −(P_j − P_{j−1}) = 0, −0.25, −0.5
    assert [s.value for s in out.segments] == pytest.approx([0.0, -0.25, -0.5])
    assert out.total == pytest.approx(-toy_toxicity(response))  # telescopes to −P(y)
    assert ds.density == "sentence"


def test_detox_holistic_and_batched_callable():
    calls = []

    def batched(texts):
        calls.append(list(texts))
        return [toy_toxicity(t) for t in texts]

    ds = DetoxScorer(toxicity=batched, mode="holistic", batched=True)
    out = ds.score(["p", "p"], ["fine", "awful awful"])
    assert [o.segments[0].value for o in out] == pytest.approx([1.0, 0.5])
    assert len(calls) == 1
    fg = DetoxScorer(toxicity=batched, mode="fine_grained", batched=True)
    calls.clear()
    fg.score(["p", "p"], ["It is fine. It is awful.", "Nice day."])
    assert calls == [["It is fine.", "It is fine. It is awful.", "Nice day."]]  # every prefix in one call
    assert fg.score(["p"], [""])[0].segments == []
    with pytest.raises(ConfigError, match="mode must be"):
        DetoxScorer(toxicity=toy_toxicity, mode="sparse")
