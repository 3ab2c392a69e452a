"""`fgrlhf eval` building blocks without Ray or vLLM: each metric against hand-computed
values on tiny inputs, `summarize` on a hand-built rollout, the eval data readers, the
eval config, and the reference-LM perplexity against a plain per-token loop."""

from __future__ import annotations

import json
import math

import pytest

from fgrlhf_ray.errors import ConfigError, DataError
from fgrlhf_ray.evaluation import metrics as M
from fgrlhf_ray.evaluation.config import load_eval_config
from fgrlhf_ray.evaluation.data import EvalItem, load_eval_items, load_reference_outputs
from fgrlhf_ray.evaluation.report import RMSpec, format_metrics, summarize
from fgrlhf_ray.types import RolloutBatch, Segment, SegmentRewards

# ------------------------------------------------------------------ Rouge-LSum


def test_rouge_lsum_single_sentence_by_hand():
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3.
    assert M.rouge_lsum_f1("the cat sat", ["the cat sat on the mat"]) == pytest.approx(2 / 3)


def test_rouge_lsum_uses_porter_stemming():
    # stems: "the cat are sit" vs "the cat is sit": LCS 3 of 4 each way → F = 3/4.
    assert M.rouge_lsum_f1("The cats are sitting", ["the cat is sitting"]) == pytest.approx(0.75)


def test_rouge_lsum_is_summary_level_over_sentences():
    # Flat Rouge-L: LCS("the dog ran the cat sat", "the cat sat the dog ran") = 3 → F = 0.5.
    # Rouge-LSum: each reference sentence's union LCS over the prediction's sentences is
    # complete (3 + 3 of 6 tokens) → F = 1. So sentences must reach the scorer as lines.
    assert M.rouge_lsum_f1("The dog ran. The cat sat.", ["The cat sat. The dog ran."]) == pytest.approx(1.0)


def test_rouge_lsum_max_over_references_and_edge_cases():
    refs = ["a completely different answer", "the cat sat on the mat"]
    assert M.rouge_lsum_f1("the cat sat", refs) == pytest.approx(2 / 3)
    assert M.rouge_lsum_f1("", ["the cat"]) == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        M.rouge_lsum_f1("x", [])


# ------------------------------------------------------------------ dist-n


def test_distinct_n_by_hand():
    # "a b a b": unigrams a b a b → 2/4; bigrams ab ba ab → 2/3; trigrams aba bab → 2/2.
    g = [["a b a b"]]
    assert M.distinct_n(g, 1) == pytest.approx(0.5)
    assert M.distinct_n(g, 2) == pytest.approx(2 / 3)
    assert M.distinct_n(g, 3) == pytest.approx(1.0)


def test_distinct_n_pools_samples_of_a_prompt_and_averages_prompts():
    # prompt 0: "x y" + "x z" → unigrams x y x z → 3/4; prompt 1: "p p" → 1/2; mean 5/8.
    assert M.distinct_n([["x y", "x z"], ["p p"]], 1) == pytest.approx(5 / 8)
    # bigrams: prompt 0 → xy, xz: 2/2; prompt 1 → pp: 1/1; a one-word prompt has none and is skipped.
    assert M.distinct_n([["x y", "x z"], ["p p"], ["solo"]], 2) == pytest.approx(1.0)
    assert M.distinct_n([[""]], 1) == 0.0
    with pytest.raises(ValueError):
        M.distinct_n([["a"]], 0)


# ------------------------------------------------------------------ ratios, perplexity, win rate, toxicity


def test_pooled_ratio_weighs_by_segment_count():
    # (2 of 2) and (1 of 4): pooled 3/6, not the mean of ratios (0.625).
    assert M.pooled_ratio([2, 1], [2, 4]) == pytest.approx(0.5)
    assert M.pooled_ratio([0], [0]) == 0.0
    with pytest.raises(ValueError):
        M.pooled_ratio([1], [1, 2])


def test_perplexity_is_corpus_level():
    # exp((2 + 4) / (1 + 3)) = exp(1.5); an empty response (0 tokens) changes nothing.
    assert M.perplexity([2.0, 4.0, 0.0], [1, 3, 0]) == pytest.approx(math.exp(1.5))
    assert math.isnan(M.perplexity([], []))
    with pytest.raises(ValueError):
        M.perplexity([1.0], [1, 2])


def test_win_rate_counts_ties_as_half():
    wr = M.win_rate([1.0, 0.0, 0.5, 0.2], [0.0, 1.0, 0.5, 0.2 + 1e-9], tie_tolerance=1e-6)
    assert (wr["wins"], wr["ties"], wr["losses"], wr["n"]) == (1, 2, 1, 4)
    assert wr["win_rate"] == pytest.approx((1 + 0.5 * 2) / 4)
    # without a tolerance the near-tie is a loss
    assert M.win_rate([0.2], [0.2 + 1e-9])["win_rate"] == 0.0
    assert math.isnan(M.win_rate([], [])["win_rate"])


def test_toxicity_metrics_by_hand():
    # maxima 0.9, 0.3, 0.5 → mean 1.7/3; at threshold 0.5: prompts 0 and 2 count → 2/3.
    out = M.toxicity_metrics([[0.1, 0.9], [0.3, 0.2], [0.5]], threshold=0.5)
    assert out["avg_max_toxicity"] == pytest.approx(1.7 / 3)
    assert out["toxicity_probability"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="prompt 1 has no scored samples"):
        M.toxicity_metrics([[0.1], []])


# ------------------------------------------------------------------ summarize


def _rollout(prompts, responses, prompt_index, lengths):
    return RolloutBatch(prompts=prompts, prompt_ids=[[1]] * len(prompts), responses=responses,
                        response_ids=[[7] * n for n in lengths], logprobs=[[0.0] * n for n in lengths],
                        prompt_index=prompt_index, finish_reasons=["stop"] * len(prompts))


def _seg(value, label=None, prob=None):
    return Segment(0, 1, value, label, prob)


def test_summarize_by_hand():
    items = [EvalItem("q0", ["the cat sat on the mat"]), EvalItem("q1", [])]
    rollout = _rollout(["q0", "q0", "q1"], ["the cat sat", "the cat sat on the mat", "a b a b"], [0, 0, 1], [3, 6, 4])
    verdicts = {
        # relevance: 1/2 + 2/2 + 0/1 no-error sub-sentences → 3/5
        "relevance": [SegmentRewards([_seg(1, "no_error"), _seg(-1, "error")], "sub_sentence"),
                      SegmentRewards([_seg(1, "no_error"), _seg(1, "no_error")], "sub_sentence"),
                      SegmentRewards([_seg(-1, "error")], "sub_sentence")],
        # completeness: raw 1, 3, 5 with μ = 1, σ = 2 → normalised 0, 1, 2 (mean 1)
        "completeness": [SegmentRewards([_seg(v)], "sequence") for v in (1.0, 3.0, 5.0)],
    }
    specs = [RMSpec("relevance", 0.3), RMSpec("completeness", 0.5, 1.0, 2.0)]
    metrics, rows = summarize(
        items=items, rollout=rollout, verdicts=verdicts, specs=specs,
        nll=[(3.0, 3), (0.0, 0), (1.0, 1)], preference=([1.0, 0.0, 2.0], [0.0, 0.0, 3.0]),
        reference_responses=["r0", "r0", "r1"], toxicity=[0.2, 0.7, 0.4], toxicity_threshold=0.5,
    )
    assert metrics["prompts"] == 2 and metrics["samples"] == 3
    # Rouge only over prompt 0's two samples: mean(2/3, 1).
    assert metrics["rouge_lsum_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert "rouge_lsum_f1" not in rows[2]
    assert metrics["relevance_ratio"] == pytest.approx(3 / 5)
    assert "factuality_ratio" not in metrics  # no such RM
    assert metrics["completeness_normalized"] == pytest.approx(1.0)
    # rewards: relevance 0.3·(0, 2, −1) → mean 0.1; completeness 0.5·(0, 1, 2) → mean 0.5
    assert metrics["reward/relevance"] == pytest.approx(0.1)
    assert metrics["reward/completeness"] == pytest.approx(0.5)
    assert metrics["reward/total"] == pytest.approx(0.6)
    assert [r["rewards"]["total"] for r in rows] == pytest.approx([0.0, 1.1, 0.7])
    assert metrics["length/tokens"] == pytest.approx(13 / 3)
    assert metrics["length/words"] == pytest.approx((3 + 6 + 4) / 3)
    # dist-1: prompt 0 pools "the cat sat" + "the cat sat on the mat" → {the,cat,sat,on,mat}/9;
    # prompt 1 "a b a b" → 2/4.
    assert metrics["dist_1"] == pytest.approx((5 / 9 + 0.5) / 2)
    assert metrics["perplexity"] == pytest.approx(math.exp(4 / 4))
    assert metrics["perplexity_tokens"] == 4
    assert (metrics["win_rate/wins"], metrics["win_rate/ties"], metrics["win_rate/losses"]) == (1, 1, 1)
    assert metrics["win_rate"] == pytest.approx(0.5)
    assert metrics["avg_max_toxicity"] == pytest.approx((0.7 + 0.4) / 2)
    assert metrics["toxicity_probability"] == pytest.approx(0.5)
    assert [r["sample"] for r in rows] == [0, 1, 0]
    assert rows[1]["reference_response"] == "r0" and rows[1]["toxicity"] == 0.7
    json.dumps(rows)  # the generations file is JSON
    text = format_metrics(metrics)
    assert "rouge_lsum_f1" in text and "0.8333" in text


def test_summarize_segment_values_without_labels_count_positive_as_correct():
    rollout = _rollout(["q"], ["x"], [0], [1])
    v = {"factuality": [SegmentRewards([_seg(0.5), _seg(-0.1), _seg(0.0)], "sentence")]}
    metrics, _ = summarize(items=[EvalItem("q")], rollout=rollout, verdicts=v, specs=[RMSpec("factuality")])
    assert metrics["factuality_ratio"] == pytest.approx(1 / 3)


def test_summarize_rejects_misaligned_inputs():
    rollout = _rollout(["q", "q"], ["x", "y"], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="verdicts"):
        summarize(items=[EvalItem("q")], rollout=rollout, verdicts={"a": []}, specs=[])
    with pytest.raises(ValueError, match="toxicity"):
        summarize(items=[EvalItem("q")], rollout=rollout, verdicts={}, specs=[], toxicity=[0.1])


# ------------------------------------------------------------------ data


def test_load_eval_items_formats(tmp_path):
    qa = tmp_path / "dev.json"
    qa.write_text(json.dumps([{"text": "q1", "answer": "a1"}, {"text": "q2", "answer": ["a2", "b2", " "]}]))
    assert load_eval_items(qa) == [EvalItem("q1", ["a1"]), EvalItem("q2", ["a2", "b2"])]
    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text('{"prompt": {"text": "So I said", "toxicity": 0.1}, "continuation": {"text": "x"}}\n\n'
                   '{"prompt": {"text": "Then"}}\n')
    assert load_eval_items(rtp) == [EvalItem("So I said"), EvalItem("Then")]
    assert load_eval_items(rtp, limit=1) == [EvalItem("So I said")]
    plain = tmp_path / "p.jsonl"
    plain.write_text('{"prompt": "q", "references": ["r"]}\n')
    assert load_eval_items(plain) == [EvalItem("q", ["r"])]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\n{"prompt": \n', r"bad\.jsonl:2: not valid JSON"),
    ('{"prompt": "ok"}\n{"question": "x"}\n', r"bad\.jsonl:2: no prompt field"),
    ('{"prompt": {"toxicity": 0.3}}\n', r"bad\.jsonl:1: field 'prompt' is an object without 'text'"),
    ('{"prompt": "  "}\n', r"bad\.jsonl:1: the prompt \('prompt'\) must be a non-empty string"),
    ('{"prompt": "q", "references": [1]}\n', r"bad\.jsonl:1: references"),
    ('[1, 2]\n', r"bad\.jsonl: item 0: expected an object"),
    ('\n\n', r"bad\.jsonl: no rows"),
])
def test_load_eval_items_bad_rows_name_file_and_line(tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(DataError, match=message):
        load_eval_items(bad)


def test_load_eval_items_missing_file(tmp_path):
    with pytest.raises(DataError, match="eval data not found"):
        load_eval_items(tmp_path / "nope.jsonl")


def test_load_reference_outputs(tmp_path):
    gens = tmp_path / "g.jsonl"
    gens.write_text('{"prompt": "q", "sample": 0, "response": "first"}\n{"prompt": "q", "sample": 1, "response": "2nd"}\n')
    assert load_reference_outputs(gens) == {"q": "first"}
    gens.write_text('{"prompt": "q"}\n')
    with pytest.raises(DataError, match=r"g\.jsonl:1: a reference-output row needs"):
        load_reference_outputs(gens)


# ------------------------------------------------------------------ config


def test_eval_config_defaults_and_checks(tmp_path):
    cfg = load_eval_config(None, ["rollout.sampling.n_samples_per_prompt=3"])
    assert cfg.rollout.sampling.n_samples_per_prompt == 3 and cfg.toxicity is None
    assert cfg.generations_path().name == "report.generations.jsonl"
    with pytest.raises(ConfigError, match="no eval data"):
        cfg.check_paths()
    with pytest.raises(ConfigError, match="give exactly one of reference_outputs or reference_policy"):
        load_eval_config(None, ["win_rate.preference_rm=x"])
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_eval_config(None, ["toxicity.threshold=0.5"])
    with pytest.raises(ConfigError):
        load_eval_config(None, ["datta.file=x"])


def test_shipped_eval_configs_load():
    qa = load_eval_config("configs/eval_qa.yaml")
    assert qa.rollout.sampling.temperature == 0.0 and qa.rollout.sampling.n_samples_per_prompt == 1
    detox = load_eval_config("configs/eval_detox.yaml")
    assert detox.rollout.sampling.n_samples_per_prompt == 25 and detox.toxicity.threshold == 0.5


# ------------------------------------------------------------------ reference-LM perplexity


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    from fgrlhf_ray.testing import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("ppl_llama"), num_layers=1))


def _loop_nll(model, tok, prompt: str, response: str) -> tuple[float, int]:
    """Plain reference: one forward per response token on the growing prefix."""
    import torch

    ids = tok(prompt)["input_ids"]
    total, n = 0.0, 0
    for t in tok(response, add_special_tokens=False)["input_ids"]:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        total -= float(torch.log_softmax(logits, -1)[t])
        ids, n = ids + [t], n + 1
    return total, n


def test_reference_lm_nll_matches_a_per_token_loop_and_ignores_batching(llama):
    from fgrlhf_ray.evaluation.perplexity import ReferenceLM

    prompts = ["question: who founded the school?", "hi", "a longer prompt about the river and the bridge"]
    responses = ["ada founded it in 1901.", "", "the bridge opened in spring"]
    batched = ReferenceLM(model_path=llama, batch_size=3).nll(prompts, responses)
    single = ReferenceLM(model_path=llama, batch_size=1).nll(prompts, responses)
    lm = ReferenceLM(model_path=llama, batch_size=1)
    for (s, n), (s1, n1), p, r in zip(batched, single, prompts, responses):
        ref_s, ref_n = _loop_nll(lm.model, lm.tokenizer, p, r)
        assert n == n1 == ref_n
        assert s == pytest.approx(ref_s, rel=1e-4, abs=1e-4)
        assert s1 == pytest.approx(ref_s, rel=1e-4, abs=1e-4)
    assert batched[1] == (0.0, 0)  # empty response: nothing scored
    # the prompt is cut from the left when prompt + response exceed max_length
    short = ReferenceLM(model_path=llama, batch_size=2, max_length=8)
    [(s, n)] = short.nll([prompts[2]], [responses[2]])
    r_ids = short.tokenizer(responses[2], add_special_tokens=False)["input_ids"]
    assert n == min(len(r_ids), 7) and math.isfinite(s) and s > 0


# ------------------------------------------------------------------ CLI: bad inputs fail before any cluster starts


def test_eval_cli_bad_inputs_are_clear_errors(tmp_path, capsys):
    """Exit 2, a one-line reason, no traceback, nothing written; Ray is never started."""
    from fgrlhf_ray.cli import main

    data = tmp_path / "dev.jsonl"
    data.write_text('{"prompt": "q"}\n{"prompt": 3}\n')
    policy = tmp_path / "policy"
    policy.mkdir()
    out = tmp_path / "r.json"
    cases = [
        (["--policy", str(tmp_path / "nope"), "--data", str(data)], "--policy (policy.model_path): folder not found"),
        (["--policy", str(policy), "--data", str(data)], "dev.jsonl:2: the prompt ('prompt') must be a non-empty"),
        (["--policy", str(policy), "--data", str(tmp_path / "missing.jsonl")], "--data (data.file): file not found"),
        (["--policy", str(policy), "--data", str(data), "--preference-rm", str(policy)],
         "win_rate: with preference_rm, give exactly one of reference_outputs or reference_policy"),
        (["--policy", str(policy), "--data", str(data), "--toxicity", str(tmp_path / "noclf")],
         "--toxicity (toxicity.path): folder not found"),
        (["--policy", str(policy), "--data", str(data), "--reward-config", str(tmp_path / "no.yaml")],
         "config file not found"),
        (["--policy", str(policy), "--data", str(data), "--set", "rollout.sampling.temprature=1"],
         "unknown field — did you mean `temperature`?"),
    ]
    for args, message in cases:
        assert main(["eval", *args, "--out", str(out), "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert not out.exists()


def test_eval_flags_and_set_combine(tmp_path):
    """Flags are applied before `--set`, so both can touch the same section."""
    import argparse

    from fgrlhf_ray.cli import build_parser
    from fgrlhf_ray.launch.evaluation import config_from_args

    rms = tmp_path / "rms.yaml"
    rms.write_text("preset: short\nreward_models:\n"
                   "  - {name: relevance, kind: function, density: sentence, target: 'm:f', weight: 0.3}\n")
    args = build_parser().parse_args([
        "eval", "--policy", "p", "--data", "d.jsonl", "--toxicity", "http://127.0.0.1:9", "--samples", "3",
        "--reward-config", str(rms), "--set", "toxicity.threshold=0.3", "--set", "rollout.sampling.top_p=0.9"])
    assert isinstance(args, argparse.Namespace)
    cfg = config_from_args(args)
    assert cfg.toxicity.target == "http://127.0.0.1:9" and cfg.toxicity.path is None and cfg.toxicity.threshold == 0.3
    assert cfg.rollout.sampling.n_samples_per_prompt == 3 and cfg.rollout.sampling.top_p == 0.9
    [rm] = cfg.reward_models
    assert rm.name == "relevance" and rm.weight == 0.4  # the run config's preset weight carries over
    assert cfg.policy.model_path == "p" and cfg.data.file == "d.jsonl"


def test_user_errors_raised_in_actors_are_unwrapped():
    """A refused API key inside a scorer actor reaches the CLI as its own message, not Ray's traceback."""
    import ray.exceptions as rex

    from fgrlhf_ray.launch.evaluation import user_error
    from fgrlhf_ray.rewards.toxicity import ToxicityApiError

    cause = ToxicityApiError("toxicity API http://x → 403: API key not valid.")
    wrapped = rex.RayTaskError("ScorerActor.score", "Traceback (most recent call last): ...", cause)
    for exc in (wrapped, wrapped.as_instanceof_cause()):
        out = user_error(exc)
        assert out is cause and "Traceback" not in str(out)
    bug = rex.RayTaskError("f", "Traceback ...", ZeroDivisionError("x"))
    assert user_error(bug) is bug  # bugs keep their traceback
    plain = ValueError("x")
    assert user_error(plain) is plain
