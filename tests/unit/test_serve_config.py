"""`ServeConfig` validation, token resolution, the example config and `fgrlhf serve` user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.serve.config import ServeConfig, load_serve_config

REPO = Path(__file__).resolve().parents[2]
RM = {"name": "completeness", "kind": "function", "target": "fgrlhf_ray.serve.testing:word_count_reward",
      "density": "sequence"}


def write(tmp_path, data) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_bind_loopback_with_limits():
    config = ServeConfig.model_validate({"reward_models": [RM]})
    assert config.host == "127.0.0.1" and config.port == 8000 and config.route_prefix == "/"
    assert config.max_items >= 1 and config.max_body_bytes >= 256
    rm = config.reward_models[0]
    assert rm.serve.max_batch_size >= 1 and not rm.serve.autoscaling


def test_example_config_is_valid():
    config = load_serve_config(REPO / "configs/serve.yaml")
    assert [rm.name for rm in config.reward_models] == ["relevance", "factuality", "completeness"]
    assert config.effective_weights() == {"relevance": 0.3, "factuality": 0.5, "completeness": 0.3}
    assert config.model("completeness").serve.autoscaling
    assert config.host == "127.0.0.1"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"reward_models": [{**RM, "kind": "http", "target": "http://x"}]}, "cannot be served"),
        ({"reward_models": [RM, RM]}, "names must be unique, repeated: completeness"),
        ({"reward_models": []}, "at least one reward model is required"),
        ({"reward_models": [{**RM, "serve": {"min_replicas": 1}}]}, "set both serve.min_replicas and serve.max_replicas"),
        ({"reward_models": [{**RM, "serve": {"min_replicas": 3, "max_replicas": 2}}]}, "must be <= serve.max_replicas"),
        ({"reward_models": [{**RM, "serve": {"max_batch_sise": 3}}]}, "did you mean `max_batch_size`"),
        ({"reward_models": [{**RM, "name": "fgrlhf_ingress"}]}, "reserved for the HTTP ingress"),
        ({"route_prefix": "rm"}, "route_prefix must start with '/'"),
        ({"token_env": "not a var"}, "token_env must be an environment variable name"),
        ({"preset": "short"}, "sets the weight of the reward model named 'relevance'"),
        ({"port": 0}, "port"),
        ({"hots": "0.0.0.0"}, "did you mean `host`"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, change, message):
    data = {"reward_models": [RM], **change}
    with pytest.raises(ConfigError) as info:
        load_serve_config(write(tmp_path, data))
    assert message in str(info.value)


def test_overrides_apply(tmp_path):
    path = write(tmp_path, {"reward_models": [RM]})
    config = load_serve_config(path, ["port=9123", "reward_models.0.serve.max_batch_size=4"])
    assert config.port == 9123 and config.reward_models[0].serve.max_batch_size == 4


def test_token_resolution():
    config = ServeConfig.model_validate({"reward_models": [RM], "token_env": "MY_TOKEN"})
    assert config.resolve_token({"MY_TOKEN": "s3cret"}) == "s3cret"
    assert config.resolve_token({}) is None  # auth off when the variable is unset
    strict = ServeConfig.model_validate({"reward_models": [RM], "token_env": "MY_TOKEN", "require_token": True})
    with pytest.raises(ConfigError, match="MY_TOKEN is not set"):
        strict.resolve_token({})
    assert ServeConfig.model_validate({"reward_models": [RM], "token_env": None}).resolve_token({"X": "y"}) is None


def fgrlhf(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=env)


def test_cli_serve_user_errors_exit_2_without_traceback(tmp_path):
    missing = fgrlhf("serve", "--config", "nope.yaml")
    assert missing.returncode == 2 and "config file not found: nope.yaml" in missing.stderr
    bad_path = write(tmp_path, {"reward_models": [{"name": "relevance", "kind": "segment_classifier",
                                                     "path": str(tmp_path / "no_rm"), "density": "sub_sentence"}]})
    result = fgrlhf("serve", "--config", str(bad_path))
    assert result.returncode == 2 and "reward model folder not found" in result.stderr
    bad_fn = write(tmp_path, {"reward_models": [{**RM, "target": "fgrlhf_ray.serve.testing:nothing_here"}]})
    result = fgrlhf("serve", "--config", str(bad_fn), "--set", "port=8123")
    assert result.returncode == 2 and "has no attribute 'nothing_here'" in result.stderr
    for r in (missing, result):
        assert "Traceback" not in r.stderr + r.stdout


def test_cli_no_block_needs_a_cluster(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = fgrlhf("serve", "--config", str(write(tmp_path, {"reward_models": [RM]})), "--no-block", env=env)
    assert result.returncode == 2 and "--no-block needs a running Ray cluster" in result.stderr
    assert "Traceback" not in result.stderr
