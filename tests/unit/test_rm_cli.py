"""`fgrlhf train-rm` / `eval-rm` on bad input: one clear line, exit code 2, no traceback.
Also the training config's validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgrlhf_ray.cli import main
from fgrlhf_ray.rewards.train_config import RewardModelTrainConfig


def run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rm.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_train_rm_missing_config(tmp_path, capsys):
    code, _, err = run(capsys, ["train-rm", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2 and "config file not found" in err and "Traceback" not in err


def test_train_rm_schema_errors_name_the_field(tmp_path, capsys):
    cfg = write_config(tmp_path, "task: relevanse\ndata:\n  train_path: x.json\noutput_dir: out\nepochz: 3\n")
    code, _, err = run(capsys, ["train-rm", "--config", str(cfg)])
    assert code == 2
    assert "task" in err and "relevanse" in err
    assert "epochz: unknown field — did you mean `epochs`?" in err
    assert "Traceback" not in err


def test_train_rm_missing_data_file(tmp_path, capsys):
    cfg = write_config(tmp_path, f"task: holistic\ndata:\n  train_path: {tmp_path}/missing.json\noutput_dir: {tmp_path}/o\n")
    code, _, err = run(capsys, ["train-rm", "--config", str(cfg)])
    assert code == 2 and "data.train_path not found" in err and "missing.json" in err


def test_train_rm_malformed_row(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" +
                    json.dumps({"prompt": "p", "chosen": "a"}) + "\n", encoding="utf-8")
    cfg = write_config(tmp_path, f"task: holistic\ndata:\n  train_path: {data}\noutput_dir: {tmp_path}/o\n"
                                 "use_ray_train: false\n")
    code, _, err = run(capsys, ["train-rm", "--config", str(cfg)])
    assert code == 2 and f"{data}: line 2: missing field(s) 'rejected'" in err
    assert len(err.strip().splitlines()) == 1


def test_train_rm_override_errors(tmp_path, capsys):
    cfg = write_config(tmp_path, "task: holistic\ndata:\n  train_path: x.jsonl\noutput_dir: o\n")
    code, _, err = run(capsys, ["train-rm", "--config", str(cfg), "--set", "batch_size=-3"])
    assert code == 2 and "batch_size" in err and "--set" in err


def test_eval_rm_bad_inputs(tmp_path, capsys):
    code, _, err = run(capsys, ["eval-rm", "--model", str(tmp_path / "nomodel"), "--data", "x.json"])
    assert code == 2 and "reward model folder not found" in err
    (tmp_path / "m").mkdir()
    code, _, err = run(capsys, ["eval-rm", "--model", str(tmp_path / "m"), "--data", "x.json"])
    assert code == 2 and "fgrlhf_rm.json is missing" in err
    (tmp_path / "m" / "fgrlhf_rm.json").write_text(json.dumps({"kind": "sequence_preference", "task": "holistic",
                                                               "name": "h", "density": "sequence", "backbone": "b"}))
    code, _, err = run(capsys, ["eval-rm", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "none.json")])
    assert code == 2 and "--data not found" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "prediction 1": 5}]))
    code, _, err = run(capsys, ["eval-rm", "--model", str(tmp_path / "m"), "--data", str(bad)])
    assert code == 2 and f"{bad}: row 1: 'prediction 1' must be a string" in err
    assert "Traceback" not in err


def test_train_config_validation():
    base = {"task": "relevance", "data": {"train_path": "x"}, "output_dir": "o"}
    cfg = RewardModelTrainConfig.model_validate(base)
    assert cfg.backbone is None and cfg.use_ray_train and cfg.resolved_strategy() == "ddp"
    assert not cfg.resolved_use_context()
    assert RewardModelTrainConfig.model_validate({**base, "task": "factuality"}).resolved_use_context()
    assert cfg.data.effective_dev_size() == 0.1
    assert cfg.resolved_dev_metric() == "macro_f1"
    fact = RewardModelTrainConfig.model_validate({**base, "task": "factuality"})
    assert fact.resolved_dev_metric() == "error_f1"
    assert RewardModelTrainConfig.model_validate({**base, "dev_metric": "error_f1"}).resolved_dev_metric() == "error_f1"
    gpu = RewardModelTrainConfig.model_validate({**base, "use_gpu": True, "num_workers": 4})
    assert gpu.resolved_strategy() == "deepspeed"
    for bad, msg in [
        ({"num_workers": 2, "use_ray_train": False}, "num_workers > 1 needs use_ray_train"),
        ({"bf16": True}, "bf16 needs use_gpu"),
        ({"data": {"train_path": "x", "dev_path": "d", "dev_size": 5}}, "either data.dev_path or data.dev_size"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"task": "holistic", "segment_features": True}, "segment_features applies to relevance and factuality"),
        ({"changed_token_loss_weight": 1.0}, "changed_token_loss_weight applies to task token_level"),
        ({"head_lr": 0}, "head_lr"),
        ({"segment_feature_names": ["position"]}, "need segment_features: true"),
        ({"segment_features": True, "segment_feature_names": ["evidence", "nope"]}, "unknown segment feature 'nope'"),
        ({"task": "holistic", "dev_metric": "macro_f1"}, "dev_metric applies to relevance and factuality"),
    ]:
        with pytest.raises(Exception, match=msg):
            RewardModelTrainConfig.model_validate({**base, **bad})
    # Every field documents itself.
    for name, field in RewardModelTrainConfig.model_fields.items():
        assert field.description, name
