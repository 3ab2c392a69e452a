"""`fgrlhf eval-rm --generations FILE --judge module:function`: a saved RM on policy samples,
judged by a function scorer, without gold labels; and its input errors (one line, exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

from fgrlhf_ray.cli import main
from fgrlhf_ray.rewards.segment_classifier import SegmentClassifierRM
from fgrlhf_ray.rewards.tiny import build_tiny_bert

pytestmark = pytest.mark.slow  # builds and saves a tiny encoder RM (a few seconds)

PROMPT = "question: who founded the river school? context: the river school was founded by ada in 1901."
# The judge, prompt_grounded_sentences: a sentence is +1 when most of its words occur in the prompt.
RESPONSES = [
    "The river school was founded by ada. Bananas are purple today.",
    "It was founded in 1901.",
    "Ada founded the school. The school was founded by ada in 1901. Cats fly.",
]
JUDGE = "fgrlhf_ray.rewards.builtin:prompt_grounded_sentences"


@pytest.fixture(scope="module")
def blind_rm(tmp_path_factory):
    """A factuality (sentence) RM whose head says "no_error" whatever the input."""
    bert = build_tiny_bert(tmp_path_factory.mktemp("bert"))
    rm = SegmentClassifierRM.from_backbone(str(bert), task="factuality", max_length=128)
    with torch.no_grad():
        rm.network.head.weight.zero_()
        rm.network.head.bias.copy_(torch.tensor([5.0, -5.0]))  # class 1 = error
    return rm.save(tmp_path_factory.mktemp("rm") / "blind")


def write_generations(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_blind_rm_on_policy_samples_against_a_judge(tmp_path, blind_rm, capsys):
    from fgrlhf_ray.rewards.builtin import prompt_grounded_sentences

    gens = write_generations(tmp_path / "eval.generations.jsonl", [
        {"prompt": PROMPT, "prompt_index": 0, "response": r, "response_tokens": 5 + 3 * k, "sample": k,
         "rewards": {}} for k, r in enumerate(RESPONSES)])
    out = tmp_path / "res.json"
    code = main(["eval-rm", "--model", str(blind_rm), "--generations", str(gens), "--judge", JUDGE,
                 "--output", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    # Hand-computed from the judge itself: the blind RM is right exactly on its no-error sentences.
    judged = prompt_grounded_sentences([PROMPT] * 3, RESPONSES)
    labels = [v < 0 for segs in judged for _, _, v in segs]
    n_ok, n = sum(not e for e in labels), len(labels)
    assert res["segment_accuracy"] == pytest.approx(n_ok / n) and res["segments"] == n
    # Error class: no predictions → F1 0; no-error class: P = n_ok/n, R = 1 → F1 = 2P/(1+P).
    p = n_ok / n
    assert res["macro_f1"] == pytest.approx((0 + 2 * p / (1 + p)) / 2)
    assert res["rm_error_share"] == 0.0 and res["judge_error_share"] == pytest.approx(1 - p)
    assert res["macro_f1"] <= res["baseline_macro_f1"]  # no better than a constant: blind
    assert res["policy/error_share"] == 0.0 and res["policy/uniform_share"] == 1.0
    assert res["policy/corr_segments"] == pytest.approx(1.0)
    assert res["judge/error_share"] == pytest.approx(1 - p)
    assert res["task"] == "factuality" and res["split"] == "generations" and res["judge"] == JUDGE
    printed = capsys.readouterr().out
    assert "segment_accuracy" in printed and "baseline_macro_f1" in printed


def test_generations_input_errors(tmp_path, blind_rm, capsys):
    def run(*argv):
        code = main(["eval-rm", "--model", str(blind_rm), *argv])
        return code, capsys.readouterr().err

    code, err = run("--generations", str(tmp_path / "none.jsonl"), "--judge", JUDGE)
    assert code == 2 and "--generations not found" in err
    gens = write_generations(tmp_path / "g.jsonl", [{"prompt": PROMPT, "response": "Ok."}])
    code, err = run("--generations", str(gens))
    assert code == 2 and "needs --judge module:function" in err
    code, err = run("--generations", str(gens), "--judge", "not a target")
    assert code == 2 and "--judge 'not a target'" in err and "'module:function'" in err
    code, err = run("--generations", str(gens), "--judge", "fgrlhf_ray.rewards.builtin:nope")
    assert code == 2 and "has no attribute 'nope'" in err
    code, err = run("--generations", str(gens), "--judge", JUDGE, "--data", str(gens))
    assert code == 2 and "not both" in err
    code, err = run()
    assert code == 2 and "needs --data FILE" in err
    bad = write_generations(tmp_path / "bad.jsonl", [{"prompt": PROMPT, "response": "Ok."}, {"prompt": PROMPT}])
    code, err = run("--generations", str(bad), "--judge", JUDGE)
    assert code == 2 and f"{bad}: line 2: a generations row needs string fields 'prompt' and 'response'" in err
    assert "Traceback" not in err
