"""Reward diagnostics and the audit judge in a real `fgrlhf train` run.

Local Ray, a vLLM-CPU engine, three function scorers in scorer actors — a blind one
(`every_sentence_fine`: every sentence "no_error"), `prompt_grounded_sentences` and `brevity` —
and a function-scorer judge (`prompt_grounded_sentences` again) in its own actor. Checks that
the blind RM is warned about once, in the log and in warnings.jsonl, and that every audit's
agreement metrics equal values computed here by plain loops from the audited responses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fgrlhf_ray.rewards.builtin import prompt_grounded_sentences

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

QUESTIONS = [
    "question: who founded the river school? context: the river school was founded by ada in 1901.",
    "question: where does bob live? context: bob lives in a small town by the sea.",
    "question: what colour is the door? context: the door of the old mill is painted red.",
    "question: when did the bridge open? context: the stone bridge opened in the spring of 1875.",
]


def write_config(tmp_path: Path, policy: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUESTIONS))
    fn = lambda name, target, density, weight: {  # noqa: E731
        "name": name, "kind": "function", "density": density, "weight": weight, "num_cpus": 0.25,
        "target": f"fgrlhf_ray.rewards.builtin:{target}"}
    config = {
        "seed": 5,
        "policy": {"model_path": str(policy)},
        "rollout": {"num_engines": 1, "max_model_len": 256, "kv_cache_space_gib": 1,
                    "sampling": {"max_new_tokens": 24, "n_samples_per_prompt": 2, "temperature": 1.0}},
        "reward_models": [fn("blind", "every_sentence_fine", "sentence", 0.5),
                          fn("grounded", "prompt_grounded_sentences", "sentence", 0.5),
                          fn("brevity", "brevity", "sequence", 0.3)],
        "ppo": {"total_steps": 3, "prompts_per_step": 4, "ppo_epochs": 1, "minibatch_size": 8},
        "learner": {"micro_batch_size": 4},
        "data": {"train_file": str(prompts), "format": "jsonl", "max_prompt_tokens": 64},
        "logging": {"dir": str(tmp_path / "run"), "tensorboard": True},
        "diagnostics": {"patience": 2},
        "audit": {"judge": fn("judge", "prompt_grounded_sentences", "sentence", 0.0), "sample_rate": 0.5},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def average_ranks(xs):
    """Plain loop: rank = 1 + #smaller + (#equal − 1)/2."""
    return [1 + sum(y < x for y in xs) + (sum(y == x for y in xs) - 1) / 2 for x in xs]


def plain_pearson(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def test_blind_rm_is_flagged_and_audit_agreement_matches_hand_computed(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir)
    env = {**os.environ, "FGRLHF_TEST": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "train", "--config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["diag/blind/error_share"] == 0.0 and row["diag/blind/uniform_share"] == 1.0
        for key in ("diag/grounded/total_std", "diag/brevity/total_spread", "diag/corr/blind/grounded",
                    "time/audit", "audit/submitted"):
            assert key in row, (key, sorted(row))
    # Warned conditions holding (label_share; here also the pair with `grounded`, equally blind on this policy).
    assert [r["diag/blind/flags"] > 0 for r in rows] == [False, True, True]

    warnings = [json.loads(line) for line in (run / "warnings.jsonl").read_text().splitlines()]
    blind = [w for w in warnings if w["rm"] == "blind"]
    assert [(w["step"], w["condition"], w["status"]) for w in blind] == [(2, "label_share", "warning")]
    assert blind[0]["message"].startswith("blind: 100% of segments labelled no_error for 2 steps; its reward is a "
                                          "segment-count bonus")
    assert "reward diagnostics, step 2: blind: 100% of segments labelled no_error" in proc.stderr

    # Every step was audited exactly once (the last one flushed at the end of the run).
    audits = [json.loads(line) for line in (run / "audit.jsonl").read_text().splitlines()]
    assert [a["step"] for a in audits] == [1, 2, 3]
    collected = {int(r["audit/step"]): r for r in rows if "audit/step" in r}
    for audit in audits:
        samples = audit["samples"]
        assert len(samples) == 4 == len(audit["indices"])  # 50% of 8
        prompts, responses = [s["prompt"] for s in samples], [s["response"] for s in samples]
        judged = prompt_grounded_sentences(prompts, responses)
        labels = [value < 0 for segs in judged for _, _, value in segs]  # True: the judge says error
        # blind says "no_error" everywhere: right exactly on the judge's no-error sentences.
        blind_acc = sum(not err for err in labels) / len(labels)
        got = audit["agreement"]
        assert got["blind"]["segment_accuracy"] == pytest.approx(blind_acc)
        assert got["blind"]["segments"] == len(labels) and got["blind"]["rm_error_share"] == 0.0
        assert got["grounded"]["segment_accuracy"] == 1.0  # the same function as the judge
        judge_totals = [sum(v for _, _, v in segs) for segs in judged]
        assert [s["judge_total"] for s in samples] == pytest.approx(judge_totals)
        brevity = [s["rm_totals"]["brevity"] for s in samples]
        rho = plain_pearson(average_ranks(brevity), average_ranks(judge_totals))
        if rho is None:
            assert "spearman" not in got["brevity"]
        else:
            assert got["brevity"]["spearman"] == pytest.approx(rho)
        if audit["step"] in collected:  # results of the last step may arrive only at the flush
            row = collected[audit["step"]]
            assert row["audit/blind/segment_accuracy"] == pytest.approx(blind_acc)
            assert row["audit/lag_steps"] >= 0 and row["audit/judge_s"] >= 0
    assert (run / "tensorboard").is_dir()
