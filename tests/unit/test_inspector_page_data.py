"""The reward inspector's page data (`fgrlhf_ray.inspector.page_data`, `render`): segment →
character ranges (code points, unicode), escaping of model text, the per-token strip against
training's placement, per-model totals, the filter language. Fast: no Ray, no models."""

from __future__ import annotations

import base64
import html as html_module
import hashlib
import json
import re

import pytest
import torch

from fgrlhf_ray.algo.rewards import ScorerOutput, place_segment_rewards
from fgrlhf_ray.inspector.page_data import (
    FilterError,
    Item,
    ModelInfo,
    PageDataError,
    build_page_data,
    char_ranges,
    escape_html,
    filter_page,
    is_flagged,
    json_for_script,
    lane_marks,
    parse_filter,
    token_strips,
    word_offsets,
)
from fgrlhf_ray.inspector.render import content_security_policy, render_interactive_page, render_page
from fgrlhf_ray.types import Segment, SegmentRewards

UNICODE = "café 🙂 über — “quoted”, naïve 𝔘𝔫𝔦𝔠𝔬𝔡𝔢. Zwei Sätze!"
EVIL = 'Fine. <script>window.__pwned = 1</script> & "quotes" \'single\' </script><!-- <img src=x onerror="x()">'


def spans_of(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Code-point spans of consecutive `pieces` in `text` (what a scorer would return)."""
    out, at = [], 0
    for p in pieces:
        a = text.index(p, at)
        out.append((a, a + len(p)))
        at = a + len(p)
    return out


# --------------------------------------------------------------------- ranges


def test_char_ranges_are_code_points_and_slice_the_segments_text_with_unicode():
    pieces = ["café 🙂 über — “quoted”,", "naïve 𝔘𝔫𝔦𝔠𝔬𝔡𝔢.", "Zwei Sätze!"]
    spans = spans_of(UNICODE, pieces)
    segments = [Segment(a, b, 1.0) for a, b in spans]
    ranges = char_ranges(UNICODE, segments)
    assert ranges == spans
    assert [UNICODE[a:b] for a, b in ranges] == pieces
    # UTF-16 (what a naive JS slice would use) differs: the astral characters count twice there.
    assert len(UNICODE.encode("utf-16-le")) // 2 > len(UNICODE)
    # The page's text survives the JSON embedding unchanged, so code-point slices still match.
    data = json.loads(json_for_script({"text": UNICODE, "ranges": ranges}))
    assert [data["text"][a:b] for a, b in data["ranges"]] == pieces


def test_char_ranges_accept_dicts_missing_starts_and_reject_ranges_outside_the_text():
    text = "one two. three four."
    assert char_ranges(text, [{"char_end": 8}, {"char_end": 20}]) == [(0, 8), (8, 20)]
    assert char_ranges(text, [{"char_start": 9, "char_end": 9}]) == [(9, 9)]  # empty: allowed
    with pytest.raises(PageDataError, match=r"gen.jsonl:3: segment 1: range \[9, 99\) is outside the response "
                                            r"\(length 20 characters\)"):
        char_ranges(text, [Segment(0, 8, 1.0), Segment(9, 99, 1.0)], where="gen.jsonl:3: ")
    with pytest.raises(PageDataError, match="range \\[5, 3\\)"):
        char_ranges(text, [Segment(5, 3, 1.0)])
    with pytest.raises(PageDataError, match="must be integers"):
        char_ranges(text, [{"char_start": "0", "char_end": 4}])


def test_lane_marks_carry_label_probability_raw_and_weighted_value_sorted_by_position():
    text = "Alpha beta gamma. Delta epsilon."
    model = ModelInfo("factuality", "sentence", weight=0.5, mean=0.2, std=2.0)
    verdict = SegmentRewards([Segment(18, 32, 1.0, "no_error", 0.75), Segment(0, 17, -1.0, "error", 0.9)], "sentence")
    marks = lane_marks(text, verdict, model)
    assert marks == [[0, 17, "error", 0.9, -1.0, 0.5 * (-1.0 - 0.2) / 2.0],
                     [18, 32, "no_error", 0.75, 1.0, 0.5 * (1.0 - 0.2) / 2.0]]
    # A /v1/score ModelScore dict gives the same marks.
    as_json = {"segments": [{"char_start": 18, "char_end": 32, "label": "no_error", "value": 1.0, "probability": 0.75},
                            {"char_start": 0, "char_end": 17, "label": "error", "value": -1.0, "probability": 0.9}]}
    assert lane_marks(text, as_json, model) == marks


def test_the_pages_weighted_values_are_what_training_places():
    spans = [(0, 5), (6, 11), (12, 20)]
    values = [-1.0, 0.5, 2.0]
    w, mu, sigma = 0.3, 0.25, 2.0
    # One token per segment: training's placement puts each value on its own token.
    _, per, _ = place_segment_rewards(
        [ScorerOutput("m", "sentence", [[(b, v) for (_, b), v in zip(spans, values)]], weight=w, mean=mu, std=sigma)],
        token_offsets=[spans], action_mask=torch.ones(1, 3))
    text = "Alpha beta gamma and more"
    verdict = SegmentRewards([Segment(a, b, v, "error" if v < 0 else "no_error", 1.0)
                              for (a, b), v in zip(spans, values)], "sentence")
    marks = lane_marks(text, verdict, ModelInfo("m", "sentence", weight=w, mean=mu, std=sigma))
    assert [m[5] for m in marks] == pytest.approx(per["m"][0].tolist())


def test_flagged_rule_is_the_complement_of_evals_error_free_rule():
    assert is_flagged("error", 1.0) and not is_flagged("no_error", -1.0)
    assert is_flagged("Unverifiable", 0.3)  # any label but no_error
    assert not is_flagged(None, 0.1) and is_flagged(None, 0.0) and is_flagged(None, -2.0)


# ---------------------------------------------------------------------- strip


def test_word_offsets_attach_leading_whitespace_and_count_code_points():
    assert word_offsets("  ab c🙂  d ") == [(0, 4), (4, 7), (7, 10)]
    assert word_offsets("") == [] and word_offsets("   ") == []


def test_token_strip_sums_weighted_rewards_on_the_token_holding_each_segments_last_character():
    text = "The cat sat. The dog ran far."
    sent = [(0, 12), (13, 29)]
    rel = SegmentRewards([Segment(a, b, v, "error" if v < 0 else "no_error") for (a, b), v in zip(sent, [-1.0, 1.0])],
                         "sentence")
    seq = SegmentRewards([Segment(0, len(text), 0.75)], "sequence")
    models = [ModelInfo("fact", "sentence", weight=0.5), ModelInfo("comp", "sequence", weight=0.3, mean=0.25, std=2.0)]
    offsets = word_offsets(text)  # The| cat| sat.| The| dog| ran| far.
    [strip] = token_strips([text], {"fact": [rel], "comp": [seq]}, models, [offsets])
    values = [c[2] for c in strip]
    comp = 0.3 * (0.75 - 0.25) / 2.0
    assert values == pytest.approx([0, 0, -0.5, 0, 0, 0, 0.5 + comp])
    assert strip[2][:2] == [7, 12] and strip[2][3] == {"fact": -0.5}  # " sat."
    assert strip[6][3] == pytest.approx({"fact": 0.5, "comp": comp})
    # Equal to training's placement for the same inputs.
    scores, _, _ = place_segment_rewards(
        [ScorerOutput.from_segment_rewards("fact", [rel], weight=0.5),
         ScorerOutput.from_segment_rewards("comp", [seq], weight=0.3, mean=0.25, std=2.0)],
        token_offsets=[offsets], action_mask=torch.ones(1, len(offsets)))
    assert values == pytest.approx(scores[0].tolist())


def test_token_strip_with_policy_token_offsets_and_unicode():
    text = "naïve 🙂 ok."
    # A byte-level tokenizer's offsets: the emoji's first byte-token has an empty span.
    offsets = [(0, 5), (5, 6), (6, 6), (6, 7), (7, 11)]
    verdict = SegmentRewards([Segment(0, 7, 1.0), Segment(8, 11, -1.0)], "sub_sentence")
    [strip] = token_strips([text], {"r": [verdict]}, [ModelInfo("r", "sub_sentence", weight=2.0)], [offsets])
    assert [c[2] for c in strip] == pytest.approx([0, 0, 0, 2.0, -2.0])  # the emoji's completing token


def test_token_strip_handles_empty_responses_and_unplaceable_segments():
    strips = token_strips(["", "x"], {"s": [SegmentRewards([Segment(0, 0, 1.0)], "sequence"),
                                            SegmentRewards([Segment(0, 1, 1.0)], "sequence")]},
                          [ModelInfo("s", "sequence")], [[], [(0, 1)]])
    assert strips == [[], [[0, 1, 1.0, {"s": 1.0}]]]
    [strip] = token_strips(["ab"], {"t": [SegmentRewards([Segment(0, 0, 5.0), Segment(0, 2, 1.0)], "token")]},
                           [ModelInfo("t", "token")], [[(0, 2)]])
    assert strip == [[0, 2, 1.0, {"t": 1.0}]]  # a segment ending at character 0 cannot be placed


# ----------------------------------------------------------------------- page


def _page():
    prompt_a, prompt_b = "question: who? answer:", "question: when? answer:"
    items = [Item(prompt_a, "It was Ann. She won, and it rained.", policy="sft", source="sft.jsonl:1"),
             Item(prompt_a, "It was Bob.", policy="ppo", source="ppo.jsonl:1",
                  labels={"oracle": {"errors": [{"error type": "Wrong-Grounding", "start": 0, "end": 11,
                                                 "explanation": "it was Ann"}],
                                     "missing-info": [{"error type": "Missing-Answer"}]}}),
             Item(prompt_b, EVIL, policy="ppo", source="ppo.jsonl:2")]

    def sents(text):
        from fgrlhf_ray.data.segments import split_sentences

        spans = split_sentences(text)
        return SegmentRewards([Segment(a, b, -1.0 if k == 0 else 1.0, "error" if k == 0 else "no_error", 0.8)
                               for k, (a, b) in enumerate(spans)], "sentence")

    verdicts = {"factuality": [sents(i.response) for i in items],
                "length": [SegmentRewards([Segment(0, len(i.response), len(i.response) / 10)], "sequence") for i in items]}
    models = [ModelInfo("factuality", "sentence", weight=0.5), ModelInfo("length", "sequence", weight=0.1, mean=2.0)]
    return items, verdicts, models, build_page_data(items, verdicts, models, title="t")


def test_page_groups_answers_by_prompt_and_keeps_policy_order():
    items, _, _, data = _page()
    assert data["format"] == "fgrlhf-inspect/1" and data["mode"] == "file"
    assert data["policies"] == ["sft", "ppo"]
    assert [g["responses"] for g in data["groups"]] == [[0, 1], [2]]
    assert [r["group"] for r in data["responses"]] == [0, 0, 1]
    assert data["label_sources"] == ["oracle"] and [m["name"] for m in data["models"]] == ["factuality", "length"]
    assert data["responses"][0]["source"] == "sft.jsonl:1"


def test_per_model_totals_and_label_stats():
    items, verdicts, _, data = _page()
    r0, r1 = data["responses"][0], data["responses"][1]
    n0 = len(verdicts["factuality"][0].segments)
    assert r0["stats"]["factuality"] == {"segments": n0, "flagged": 1, "share": pytest.approx(1 / n0),
                                         "raw": pytest.approx(n0 - 2.0), "weighted": pytest.approx(0.5 * (n0 - 2.0))}
    length = 0.1 * (len(items[0].response) / 10 - 2.0)
    assert r0["stats"]["length"]["weighted"] == pytest.approx(length)
    assert r0["metrics"]["total"] == pytest.approx(0.5 * (n0 - 2.0) + length)
    assert r0["metrics"]["total"] == pytest.approx(sum(c[2] for c in r0["strip"]))  # the strip adds up to the total
    assert r1["labels"]["oracle"] == [[0, 11, "Wrong-Grounding", "it was Ann"]]
    assert r1["stats"]["oracle"] == {"segments": 1, "flagged": 1, "share": 1.0, "missing": 1}
    assert r1["missing"] == {"oracle": ["Missing-Answer"]}
    assert r0["metrics"] == {"total": r0["metrics"]["total"], "words": 8, "chars": 35, "tokens": 8}
    assert "oracle" not in r0["stats"]


def test_page_names_the_item_whose_segments_do_not_fit():
    items = [Item("p", "short", source="gen.jsonl:7")]
    bad = {"m": [SegmentRewards([Segment(0, 40, 1.0)], "sentence")]}
    with pytest.raises(PageDataError, match=r"gen.jsonl:7: model 'm': segment 0: range \[0, 40\)"):
        build_page_data(items, bad, [ModelInfo("m", "sentence")])
    labels = [Item("p", "short", source="f.json: row 2", labels={"human": {"errors": [{"start": 2, "end": 9}]}})]
    with pytest.raises(PageDataError, match=r"f.json: row 2: human labels: feedback.errors\[0\]: segment 0: range"):
        build_page_data(labels, {}, [])


def test_non_finite_values_become_null_instead_of_breaking_the_json():
    items = [Item("p", "a b")]
    data = build_page_data(items, {"m": [SegmentRewards([Segment(0, 3, float("nan"))], "sequence")]},
                           [ModelInfo("m", "sequence")])
    assert data["responses"][0]["marks"]["m"] == [[0, 3, None, None, None, None]]
    json_for_script(data)  # no ValueError


# ------------------------------------------------------------------- escaping


def test_json_for_script_cannot_be_broken_out_of():
    text = json_for_script({"t": EVIL, "u": "line\u2028sep\u2029 🙂"})
    assert not set("<>&") & set(text)
    assert "</script" not in text.lower() and "<!--" not in text
    assert "\u2028" not in text and text.isascii()
    assert json.loads(text) == {"t": EVIL, "u": "line\u2028sep\u2029 🙂"}
    with pytest.raises(ValueError):
        json_for_script({"x": float("nan")})


def test_escape_html_escapes_markup_and_quotes():
    assert escape_html('<b a="1">&\'') == "&lt;b a=&quot;1&quot;&gt;&amp;&#x27;"


def test_rendered_page_holds_model_text_only_inside_the_escaped_data_block():
    *_, data = _page()
    data["title"] = 'A "title" </title><script>x()</script>'
    html = render_page(data)
    # Exactly two script elements: the data block and the page's own script.
    assert html.count("<script") == 2 and html.lower().count("</script") == 2
    assert "window.__pwned" in html  # the text is there (escaped, in the JSON) …
    assert "<script>window.__pwned" not in html and "onerror=\"x()\"" not in html  # … but never as markup
    assert "<title>A &quot;title&quot; &lt;/title&gt;&lt;script&gt;x()&lt;/script&gt;</title>" in html
    block = re.search(r'<script type="application/json" id="fgrlhf-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(block)["responses"][2]["text"] == EVIL
    # The CSP allows exactly the page's own script (by hash) and no network.
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = html_module.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1))
    assert f"script-src 'sha256-{digest}'" in policy and "connect-src 'none'" in policy
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched


def test_interactive_page_has_no_data_no_token_and_talks_only_to_its_server():
    html = render_interactive_page(api_base="/rm")
    block = json.loads(re.search(r'id="fgrlhf-data">(.*?)</script>', html, re.S).group(1))
    assert block["mode"] == "interactive" and block["api_base"] == "/rm" and block["responses"] == []
    assert "connect-src 'self'" in html_module.unescape(html)
    assert "Bearer" in html  # the page builds the header from what is typed
    assert "frame-ancestors 'none'" in content_security_policy(connect="'self'")
    assert json.loads(re.search(r'id="fgrlhf-data">(.*?)</script>', render_interactive_page(), re.S).group(1))[
        "api_base"] == "/"


# -------------------------------------------------------------------- filters


RESPONSE = {"stats": {"factuality": {"segments": 3, "flagged": 2, "share": 2 / 3, "raw": -1.0, "weighted": -0.5},
                      "relevance": {"segments": 4, "flagged": 0, "share": 0.0, "raw": 4.0, "weighted": 1.2},
                      "oracle": {"segments": 1, "flagged": 1, "share": 1.0, "missing": 2}},
            "metrics": {"total": 0.7, "words": 20, "chars": 100, "tokens": 24}}
LANES = ["factuality", "relevance", "oracle", "completeness"]


@pytest.mark.parametrize("expr, expected", [
    ("factuality.flagged >= 2", True),
    ("factuality.flagged >= 3", False),
    ("factuality >= 2", True),  # a bare lane is its flagged count
    ("factuality.flagged ≥ 2 and relevance.flagged == 0", True),
    ("factuality.flagged >= 2 and total < 0", False),
    ("total < 0 or relevance.weighted > 1", True),  # `and` binds tighter than `or`
    ("total < 0 and words > 5 or oracle.missing >= 2", True),
    ("factuality.share > 0.6 AND words<=20", True),
    ("relevance.raw != 4", False),
    ("completeness.weighted > -100", False),  # no verdict of that lane: never matches
    ("tokens = 24", True),
    ("factuality.weighted <= -5e-1", True),
])
def test_filter_language(expr, expected):
    assert parse_filter(expr, LANES).matches(RESPONSE) is expected


@pytest.mark.parametrize("expr, message", [
    ("factualty.flagged >= 2", r"unknown reward model or label source 'factualty' at character 1 \(known: factuality"),
    ("factuality.errors >= 2", r"unknown metric 'errors' of 'factuality' at character 1 \(known: segments, flagged"),
    ("factuality.flagged 2", r"expected a comparison \(>=, <=, >, <, ==, !=\) after 'factuality.flagged', got '2'"),
    ("factuality.flagged >=", r"expected a number after factuality.flagged >=, got the end"),
    ("total < 0 and", r"expected a condition .* at the end"),
    ("total < 0 total > 1", r"expected `and` or `or` at character 11, got 'total'"),
    ("total < 0 ; words > 1", r"unexpected ';' at character 11"),
    ("banana > 1", r"unknown name 'banana' at character 1"),
    (">= 2", r"expected a name like .* at character 1, got '>='"),
])
def test_filter_errors_say_what_and_where(expr, message):
    with pytest.raises(FilterError, match=message):
        parse_filter(expr, LANES)


def test_empty_filter_is_none_and_filter_page_renumbers():
    assert parse_filter("  ", LANES) is None
    *_, data = _page()
    kept = filter_page(data, "factuality.flagged >= 1 and chars > 20")
    assert [r["source"] for r in kept["responses"]] == ["sft.jsonl:1", "ppo.jsonl:2"]
    assert [r["id"] for r in kept["responses"]] == [0, 1] and [r["group"] for r in kept["responses"]] == [0, 1]
    assert [g["responses"] for g in kept["groups"]] == [[0], [1]] and kept["policies"] == ["sft", "ppo"]
    assert filter_page(data, "oracle.flagged >= 1")["policies"] == ["ppo"]
    assert filter_page(data, "") is data
