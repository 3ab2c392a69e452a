"""Train every RM kind for a few steps on tiny local encoders (in-process and through
Ray Train's TorchTrainer), then load and evaluate it through the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fgrlhf_ray.cli import main
from fgrlhf_ray.data.rm_data import EditPair, PreferencePair, SegmentExample, write_jsonl
from fgrlhf_ray.rewards import load_reward_model
from fgrlhf_ray.rewards.base import RMMetadata
from fgrlhf_ray.rewards.tiny import build_tiny_bert
from fgrlhf_ray.rewards.train_config import RewardModelTrainConfig
from fgrlhf_ray.rewards.training import CHECKPOINTS_DIR, train_reward_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "qa_feedback" / "dev400_feedback.json"

GOOD = ["the capital is a large city near the sea.", "it was founded in the year 1820.",
        "the port is known for its old bridges.", "many people visit the city every year."]
BAD = ["the weather was wrong and bad that day.", "bad wrong numbers 1999 appear here."]


def synthetic(n: int, seed: int = 0):
    """Responses mixing GOOD and BAD sentences; BAD ones are the errors / the edits' deletions."""
    rng = random.Random(seed)
    seg, pref, edit = [], [], []
    for i in range(n):
        prompt = f"question: what about city {i}? context: wikipage: City {i} text: {' '.join(GOOD)}"
        sents = [rng.choice(GOOD) for _ in range(2)] + [rng.choice(BAD)]
        rng.shuffle(sents)
        response = " ".join(s.capitalize() for s in sents)
        spans, labels, pos = [], [], 0
        for s in sents:
            spans.append((pos, pos + len(s)))
            labels.append(int(s in BAD))
            pos += len(s) + 1
        seg.append(SegmentExample(prompt, response, spans, labels))
        clean = " ".join(s.capitalize() for s in sents if s not in BAD)
        edit.append(EditPair(prompt, response, clean))
        pref.append(PreferencePair(prompt, clean, response))
    return seg, pref, edit


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return str(build_tiny_bert(tmp_path_factory.mktemp("bert"), hidden_size=32, num_layers=1))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    seg, pref, edit = synthetic(140)
    write_jsonl(d / "seg.jsonl", seg)
    write_jsonl(d / "pref.jsonl", pref)
    write_jsonl(d / "edit.jsonl", edit)
    return {"relevance": d / "seg.jsonl", "factuality": d / "seg.jsonl", "holistic": d / "pref.jsonl",
            "completeness": d / "pref.jsonl", "token_level": d / "edit.jsonl", "edit_preference": d / "edit.jsonl"}


def config(task: str, path: Path, bert: str, out: Path, **kw) -> RewardModelTrainConfig:
    base = dict(task=task, data={"train_path": str(path), "test_size": 10, "dev_size": 10}, backbone=bert,
                max_length=96, epochs=10, lr=2e-3, batch_size=8, output_dir=str(out), use_ray_train=False,
                progress_bar=False)
    base.update(kw)
    return RewardModelTrainConfig.model_validate(base)


@pytest.mark.parametrize("task", ["relevance", "factuality", "holistic", "token_level", "edit_preference"])
def test_each_rm_kind_trains_saves_and_learns(tmp_path, bert, data, task):
    # A 1-layer random encoder learns the synthetic task in seconds, but not while also
    # reading passages: the passage path is covered by test_qa_feedback_factuality_* below.
    # lr 5e-3: at 2e-3 the encoder is still improving at epoch 10 and the factuality dev F1 sat
    # at 0.76-0.84 across seeds (CI's CPU landed below 0.8); at 5e-3 it is 0.84-1.0 over 5 seeds.
    cfg = config(task, data[task], bert, tmp_path / task, use_context=False, lr=5e-3)
    summary = train_reward_model(cfg)
    out = Path(cfg.output_dir)
    assert sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir()) == sorted(f"epoch_{i}" for i in range(1, 11))
    assert (out / "train_summary.json").is_file()
    rm = load_reward_model(out)
    meta: RMMetadata = rm.metadata
    assert meta.task == task and meta.training["split"]["counts"]["test"] > 0
    assert len(meta.training["split"]["test_groups"]) == 10
    assert summary["best_epoch"] == max(summary["history"], key=lambda m: m["dev_metric"])["epoch"]
    # The synthetic errors are one word away from the good sentences: a few steps learn them.
    assert summary["best_dev_metric"] >= 0.8, summary["history"]
    if rm.kind == "sequence_preference":
        mu, sd = rm.normalization
        assert sd > 0 and meta.normalization["n"] > 0
    if task == "token_level":
        text = "The port is known. The weather was wrong and bad that day."
        [(layout, values)] = rm.token_rewards(["question: q"], [text])
        cut = text.index("The weather")
        deleted = [v for (a, _), v in zip(layout.response_offsets, values) if a >= cut]
        kept = [v for (a, _), v in zip(layout.response_offsets, values) if a < cut]
        # Tokens of the kind the edits delete score below those the edits keep.
        assert sum(deleted) / len(deleted) < sum(kept) / len(kept)


def test_ray_train_torchtrainer_one_cpu_worker(tmp_path, bert, data):
    cfg = config("relevance", data["relevance"], bert, tmp_path / "ray", use_ray_train=True, num_workers=1,
                 cpus_per_worker=1, epochs=2, max_steps=6, keep_checkpoints=1)
    summary = train_reward_model(cfg)
    assert summary["use_ray_train"] and summary["fit_seconds"] > 0
    ckpts = [p.name for p in (tmp_path / "ray" / CHECKPOINTS_DIR).iterdir() if p.name.startswith("epoch_")]
    assert len(ckpts) == 1  # keep_checkpoints: 1 kept only the best
    rm = load_reward_model(tmp_path / "ray")
    assert rm.score(["question: q"], ["It is fine. It was bad."])[0].segments


def test_segment_features_through_ray_train(tmp_path, bert, data):
    # The warm-started feature head is checkpoint "epoch_0"; the best checkpoint's frozen
    # sentence encoder travels with it out of Ray Train's storage into the model folder.
    cfg = config("relevance", data["relevance"], bert, tmp_path / "sf", use_ray_train=True, num_workers=1,
                 cpus_per_worker=1, epochs=3, lr=5e-3, segment_features=True, tune_threshold=False)
    summary = train_reward_model(cfg)
    assert [m["epoch"] for m in sorted(summary["history"], key=lambda m: m["epoch"])] == [0, 1, 2, 3]
    assert summary["best_dev_metric"] >= 0.8, summary["history"]  # the encoder still learns the task
    out = tmp_path / "sf"
    assert (out / "feature_encoder" / "model.safetensors").is_file()
    rm = load_reward_model(out)
    assert rm.metadata.segment_features and len(rm.metadata.feature_norm["mean"]) == 10
    assert rm.network.feature_head.weight.abs().sum() > 0  # warm-started, not left at zero
    best = load_reward_model(next(p for p in (out / CHECKPOINTS_DIR).rglob("epoch_*")
                                  if p.name == f"epoch_{summary['best_epoch']}"))
    text = "The port is known for its old bridges. Bad wrong numbers 1999 appear here."
    assert ([s.probability for s in rm.score(["question: q"], [text])[0].segments]
            == pytest.approx([s.probability for s in best.score(["question: q"], [text])[0].segments]))


@pytest.mark.parametrize("strategy, stage", [("ddp", 0), ("deepspeed", 3)])
def test_ray_train_two_cpu_workers_ddp_and_deepspeed(tmp_path, bert, data, strategy, stage, monkeypatch):
    from fgrlhf_ray.rewards.evaluation import evaluate
    from fgrlhf_ray.rewards.training import prepare_splits

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    cfg = config("holistic", data["holistic"], bert, tmp_path / strategy, use_ray_train=True, num_workers=2,
                 cpus_per_worker=1, epochs=2, strategy=strategy, zero_stage=stage)
    summary = train_reward_model(cfg)
    assert summary["strategy"] == strategy and summary["num_workers"] == 2
    # The saved weights are the trained ones (under ZeRO-3 they had to be gathered first).
    rm = load_reward_model(tmp_path / strategy)
    splits, _ = prepare_splits(cfg)
    assert evaluate(rm, splits["dev"], seed=cfg.seed)["accuracy"] == pytest.approx(summary["best_dev_metric"])


def test_cli_train_then_eval_on_test_split(tmp_path, bert, data, capsys):
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(
        f"task: holistic\ndata:\n  train_path: {data['holistic']}\n  test_size: 10\n  dev_size: 5\n"
        f"backbone: {bert}\nmax_length: 96\nepochs: 1\nlr: 2.0e-3\noutput_dir: {tmp_path / 'out'}\n"
        "use_ray_train: false\nprogress_bar: false\n"
    )
    assert main(["train-rm", "--config", str(cfg), "--set", "batch_size=4"]) == 0
    assert "trained holistic RM" in capsys.readouterr().out
    out_json = tmp_path / "eval.json"
    assert main(["eval-rm", "--model", str(tmp_path / "out"), "--data", str(data["holistic"]),
                 "--split", "test", "--output", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert res["n"] == 10 and res["split"] == "test"  # one pair per held-out group
    assert set(res["baselines"]) == {"prefer_first", "prefer_shorter", "prefer_longer"}
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "baseline prefer_longer" in printed


@pytest.mark.skipif(not SHARED.exists(), reason="QA-FEEDBACK sample not present (../shared/data/qa_feedback)")
def test_qa_feedback_factuality_few_steps_and_eval(tmp_path, bert, capsys):
    cfg = RewardModelTrainConfig.model_validate(dict(
        task="factuality", data={"train_path": str(SHARED), "test_size": 80, "dev_size": 8, "max_train_examples": 16},
        backbone=bert, max_length=128, epochs=1, batch_size=8, output_dir=str(tmp_path / "f"), use_ray_train=False,
        progress_bar=False))
    summary = train_reward_model(cfg)
    assert summary["input_cuts"]["context_tokens_cut"] > 0  # passages had to be cut to 128 tokens
    assert main(["eval-rm", "--model", str(tmp_path / "f"), "--data", str(SHARED), "--split", "test"]) == 0
    res = json.loads((tmp_path / "f" / "eval_dev400_feedback_test.json").read_text())
    assert res["examples"] == 80 and 0.1 < res["error_rate"] < 0.3
