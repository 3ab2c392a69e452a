"""`fgrlhf` CLI: exit codes, messages, and no tracebacks on bad input (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def fgrlhf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_version():
    result = fgrlhf("--version")
    assert result.returncode == 0 and result.stdout.startswith("fgrlhf-ray ")


def test_validate_ok():
    result = fgrlhf("config", "validate", "configs/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_invalid_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  kl_cof: 0.1\nreward_models: [{name: r, kind: token_level, path: p, density: token}]\n")
    result = fgrlhf("config", "validate", str(bad))
    assert result.returncode == 2
    assert "ppo.kl_cof" in result.stderr and "did you mean `kl_coef`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_set_value_exits_2():
    result = fgrlhf("config", "validate", "configs/demo.yaml", "--set", "rollout.num_engines=many")
    assert result.returncode == 2 and "rollout.num_engines" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_exits_2():
    result = fgrlhf("config", "show", "nope.yaml")
    assert result.returncode == 2 and "config file not found: nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_show_prints_effective_yaml_with_defaults():
    result = fgrlhf("config", "show", "configs/demo.yaml", "--set", "ppo.kl_coef=0.05")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["ppo"]["kl_coef"] == 0.05
    assert shown["ppo"]["gamma"] == 1.0  # a default not written in demo.yaml


def test_schema_is_json_with_descriptions():
    result = fgrlhf("config", "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$defs"]["PPOConfig"]["properties"]["kl_coef"]["description"]


def test_unknown_command_exits_2():
    assert fgrlhf("frobnicate").returncode == 2
