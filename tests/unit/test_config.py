"""Config tree: defaults, cross-field checks, YAML loading, overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgrlhf_ray.config import (
    RELEVANCE_WEIGHT_PRESETS,
    RunConfig,
    apply_overrides,
    dump_config,
    load_config,
)
from fgrlhf_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ONE_RM = {"reward_models": [{"name": "h", "kind": "sequence_preference", "path": "x", "density": "sequence"}]}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_match_paper_a():
    config = RunConfig.model_validate(ONE_RM)
    assert config.ppo.kl_coef == 0.3 and config.ppo.gamma == 1.0 and config.ppo.lam == 0.95
    assert config.ppo.policy_clip == 0.2 and config.ppo.value_clip == 0.2
    assert config.ppo.lr == 1e-5 and config.ppo.adam_eps == 1e-5 and config.ppo.ppo_epochs == 4
    assert config.rollout.sampling.top_k == 20 and config.rollout.sampling.temperature == 0.7
    assert config.rollout.sampling.max_new_tokens == 200
    assert config.ppo.whiten_advantages and config.ppo.scale_rewards_by_std


def test_every_field_has_a_description():
    missing = []

    def walk(schema: dict, defs: dict, where: str) -> None:
        for name, prop in schema.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{where}.{name}")
        for name, sub in defs.items():
            if sub is not schema and where == "root":
                walk(sub, {}, name)

    schema = RunConfig.model_json_schema()
    walk(schema, schema.get("$defs", {}), "root")
    assert not missing, f"fields without a docstring: {missing}"


@pytest.mark.parametrize("name", ["demo.yaml", "qa_feedback.yaml", "holistic.yaml", "token_level.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "configs" / name)
    assert config.reward_models


def test_paper_a_config_weights():
    config = load_config(REPO / "configs" / "qa_feedback.yaml")
    assert config.effective_reward_weights() == {"relevance": 0.3, "factuality": 0.5, "completeness": 0.3}
    assert config.ppo.kl_coef == 0.3


def test_holistic_config_baseline_settings():
    config = load_config(REPO / "configs" / "holistic.yaml")
    assert [rm.density for rm in config.reward_models] == ["sequence"]
    assert config.ppo.kl_coef == 0.2 and config.ppo.lam == 0.99


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, "reward_models: [{name: h, kind: sequence_preference, path: x, density: sequence}]\n")
    config = load_config(path, ["ppo.kl_coef=0.05", "rollout.sampling.top_k=5", "reward_models.0.weight=2",
                                "ray.address=null", "learner.lora.enabled=true"])
    assert config.ppo.kl_coef == 0.05 and config.rollout.sampling.top_k == 5
    assert config.reward_models[0].weight == 2.0 and config.learner.lora.enabled is True


def test_apply_overrides_does_not_mutate_input():
    data = {"ppo": {"kl_coef": 0.3}}
    assert apply_overrides(data, ["ppo.kl_coef=0.1"]) == {"ppo": {"kl_coef": 0.1}}
    assert data == {"ppo": {"kl_coef": 0.3}}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("ppo.kl_coef", "expected KEY=VALUE"),
        ("ppo..x=1", "not a dotted field path"),
        ("reward_models.7.weight=1", "list index 0..0"),
        ("ppo.kl_coef=[1,", "not valid YAML"),
    ],
)
def test_bad_overrides(tmp_path, override, expected):
    path = write(tmp_path, "reward_models: [{name: h, kind: sequence_preference, path: x, density: sequence}]\n")
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        load_config(path, [override])


def test_wrong_type_in_override_is_reported_as_override(tmp_path):
    path = write(tmp_path, "reward_models: [{name: h, kind: sequence_preference, path: x, density: sequence}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["ppo.kl_coef=abc"])
    assert "--set ppo.kl_coef" in str(info.value) and "'abc'" in str(info.value)


def test_unknown_key_suggests_close_match_with_line(tmp_path):
    path = write(tmp_path, "rollout:\n  sampling:\n    temprature: 0.5\n" + "reward_models: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "line 3: rollout.sampling.temprature: unknown field" in message
    assert "did you mean `temperature`" in message
    assert "reward_models: at least one reward model is required" in message, message


def test_literal_error_lists_allowed_values(tmp_path):
    path = write(tmp_path, "ppo: {kl_estimator: k2}\n" + "reward_models: [{name: h, kind: sequence_preference, "
                 "path: x, density: sequence}]\n")
    with pytest.raises(ConfigError, match=r"ppo\.kl_estimator: Input should be 'k1', 'k3' or 'abs' \(got 'k2'\)"):
        load_config(path)


@pytest.mark.parametrize(
    "rm, expected",
    [
        ({"name": "t", "kind": "token_level", "path": "x", "density": "sentence"}, "cannot have density 'sentence'"),
        ({"name": "s", "kind": "segment_classifier", "path": "x", "density": "sequence"}, "allowed: sub_sentence"),
        ({"name": "s", "kind": "segment_classifier", "density": "sentence"}, "needs `path`"),
        ({"name": "f", "kind": "function", "target": "nocolon", "density": "sentence"}, "'module:function'"),
        ({"name": "u", "kind": "http", "target": "ftp://x", "density": "sentence"}, "http(s)://"),
        ({"name": "w", "kind": "sequence_preference", "path": "x", "density": "sequence", "weight": float("inf")},
         "finite"),
        ({"name": "bad name!", "kind": "sequence_preference", "path": "x", "density": "sequence"}, "pattern"),
    ],
)
def test_reward_model_cross_field_checks(rm, expected):
    with pytest.raises(Exception) as info:
        RunConfig.model_validate({"reward_models": [rm]})
    assert expected in str(info.value)


def test_duplicate_names_and_preset_without_relevance():
    rm = ONE_RM["reward_models"][0]
    with pytest.raises(Exception, match="repeated: h"):
        RunConfig.model_validate({"reward_models": [rm, rm]})
    with pytest.raises(Exception, match="named 'relevance'"):
        RunConfig.model_validate({**ONE_RM, "preset": "short"})


def test_preset_sets_relevance_weight():
    config = load_config(REPO / "configs" / "qa_feedback.yaml", ["preset=long"])
    assert config.effective_reward_weights()["relevance"] == RELEVANCE_WEIGHT_PRESETS["long"] == 0.2


def test_minibatch_must_fit_rollout_and_world_size():
    with pytest.raises(Exception, match="exceeds the rollout batch"):
        RunConfig.model_validate({**ONE_RM, "ppo": {"prompts_per_step": 2, "minibatch_size": 8}})
    with pytest.raises(Exception, match="divisible by learner.world_size"):
        RunConfig.model_validate({**ONE_RM, "ppo": {"minibatch_size": 3}, "learner": {"world_size": 2}})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: [1,\n b: 2", r":2:\d+: not valid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_unreadable_yaml(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/definitely/not/here.yaml")


def test_show_round_trips(tmp_path):
    config = load_config(REPO / "configs" / "demo.yaml")
    again = load_config(write(tmp_path, dump_config(config)))
    assert again == config
