"""`fgrlhf demo` input handling that needs no training: bad settings and `--fresh` safety."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fgrlhf_ray.pipelines.demo import PRESETS, DemoConfig, remove_demo_output
from fgrlhf_ray.errors import ConfigError


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fgrlhf_ray.cli", "demo", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bad_budget_override_exits_2_naming_the_field(tmp_path):
    result = run_cli("--quick", "--out", str(tmp_path / "o"), "--set", "budget.ppo_steps=0", cwd=tmp_path)
    assert result.returncode == 2
    assert "budget.ppo_steps" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # nothing started


def test_unknown_field_exits_2(tmp_path):
    result = run_cli("--quick", "--set", "ppo.learning_rate=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "ppo.learning_rate" in result.stderr and "Traceback" not in result.stderr


def test_fresh_refuses_a_folder_that_is_not_a_demo_output(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="does not look like a demo output"):
        remove_demo_output(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_fresh_removes_a_demo_output(tmp_path):
    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "stage.json").write_text("{}")
    remove_demo_output(out)
    assert not out.exists()


def test_presets_are_consistent():
    for name, budget in PRESETS.items():
        assert budget.eval_every <= budget.ppo_steps, name
        assert DemoConfig(preset=name).sizes() == budget
    # Issue 16's budget: at least 1,500 episodes per method in the default and full presets.
    for name in ("default", "full"):
        b = PRESETS[name]
        assert b.ppo_steps * b.prompts_per_step * b.samples_per_prompt >= 1500, name
    assert DemoConfig().runs() == (["learned"], [0])
    assert DemoConfig(preset="full").runs() == (["learned", "oracle"], [0, 1, 2])
    assert DemoConfig(preset="quick").runs()[0] == ["learned", "oracle"]  # the test suite exercises both arms
    assert DemoConfig(arms=["oracle"], ppo_seeds=[4]).runs() == (["oracle"], [4])


def test_token_level_method_is_learned_arm_only():
    """Issue 20: token-level PPO (paper B) runs in the learned arm of the presets that list it."""
    from pydantic import ValidationError

    from fgrlhf_ray.pipelines.demo import DemoPPOSettings, reward_models_of

    assert DemoConfig(preset="full").methods_of("learned") == ["fine_grained", "holistic", "token_level"]
    assert DemoConfig(preset="full").methods_of("oracle") == ["fine_grained", "holistic"]
    assert DemoConfig(preset="quick").methods_of("learned")[-1] == "token_level"
    assert DemoConfig(methods=["holistic", "fine_grained"], preset="full").methods_of("learned") == \
        ["fine_grained", "holistic"]
    with pytest.raises(ValidationError, match="fine_grained and holistic"):
        DemoConfig(methods=["holistic", "token_level"])
    rms = {"token_level": {"path": "/rm/token_level", "normalization": {"mean": -0.5, "std": 2.0}}}
    (entry,) = reward_models_of("learned", "token_level", rms=rms, ppo=DemoPPOSettings())
    assert entry == {"name": "token_level", "kind": "token_level", "path": "/rm/token_level", "density": "token",
                     "weight": 1.0, "batch_size": 32, "normalize_mean": -0.5, "normalize_std": 2.0}
    with pytest.raises(ValueError, match="learned arm only"):
        reward_models_of("oracle", "token_level", rms=rms, ppo=DemoPPOSettings())


def test_bad_arm_exits_2_naming_the_field(tmp_path):
    result = run_cli("--quick", "--set", "arms=[learned,magic]", cwd=tmp_path)
    assert result.returncode == 2 and "arms" in result.stderr and "oracle" in result.stderr
    assert "Traceback" not in result.stderr


def test_stage_reuse_resume_and_invalidation(tmp_path):
    from fgrlhf_ray.pipelines.demo import Stages

    calls = []

    def work(d):
        calls.append(sorted(p.name for p in d.iterdir()))
        (d / "artifact").write_text("x")
        return {"ok": True}

    # First run, then the same key again: reused, not re-run.
    assert Stages(tmp_path, fresh=False).run("s", {"a": 1}, work)[1] == {"ok": True}
    Stages(tmp_path, fresh=False).run("s", {"a": 1}, work)
    assert len(calls) == 1

    # Other settings: the old folder (artifact, marker) is cleared before the stage runs again.
    Stages(tmp_path, fresh=False).run("s", {"a": 2}, work)
    assert calls[-1] == ["stage.started"]

    # Interrupted run of the same settings (no completion marker): its files are kept to resume from.
    (tmp_path / "s" / "stage.json").unlink()
    Stages(tmp_path, fresh=False).run("s", {"a": 2}, work)
    assert "artifact" in calls[-1]


def test_inspect_stage_shows_every_policy_with_the_oracle_scorers_and_labels(tmp_path):
    """Without learned RMs (oracle arm only) the page is marked by the oracle's function scorers."""
    import json

    from fgrlhf_ray.cli import main as cli_main
    from fgrlhf_ray.inspector.render import read_page_data
    from fgrlhf_ray.pipelines.demo import ANSWERS_FILE, INSPECT_QUESTIONS, stage_inspect

    data = tmp_path / "data"
    assert cli_main(["data", "synth", "--out", str(data), "--n", "100", "--seed", "1"]) == 0
    records = json.loads((data / "test.json").read_text())
    gold = [r["answer"][0] for r in records]
    evaluate = tmp_path / "evaluate"
    evaluate.mkdir()
    # The evaluation answered only the first 6 test questions (budget.n_eval_prompts < the test split).
    gold = gold[:6]
    (evaluate / ANSWERS_FILE).write_text(json.dumps({"sft": gold, "oracle/fine_grained": [g.split(".")[0] + "."
                                                                                          for g in gold]}))
    result = stage_inspect(tmp_path, data_dir=data, evaluate_dir=evaluate, rms={}, ppo=DemoConfig().ppo)
    page = read_page_data(result["path"])
    n = min(INSPECT_QUESTIONS, 6)
    assert result["questions"] == n and len(page["groups"]) <= n
    assert page["policies"] == ["sft", "oracle/fine_grained"]
    assert [m["name"] for m in page["models"]] == ["relevance", "factuality", "completeness"]
    assert page["label_sources"] == ["oracle"] and len(page["responses"]) == 2 * n


def test_group_estimator_with_one_sample_per_prompt_exits_2_before_any_stage(tmp_path):
    result = run_cli("--quick", "--out", str(tmp_path / "o"), "--set", "ppo.advantage_estimator=grpo",
                     "--set", "budget.samples_per_prompt=1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "budget.samples_per_prompt" in result.stderr and "reinforce_pp" in result.stderr
    assert not (tmp_path / "o").exists()


def test_estimator_reaches_every_ppo_run_config(tmp_path):
    from fgrlhf_ray.config import RunConfig
    from fgrlhf_ray.pipelines.demo import ppo_run_config

    config = DemoConfig(ppo={"advantage_estimator": "rloo"})
    for arm in ("learned", "oracle"):
        for method in ("fine_grained", "holistic"):
            rms = {n: {"path": str(tmp_path / n)} for n in ("relevance", "factuality", "completeness", "holistic")}
            raw = ppo_run_config(arm, method, run_dir=tmp_path / "run", policy="p", rms=rms, data_dir=tmp_path,
                                 budget=config.sizes(), ppo=config.ppo, seed=0)
            assert RunConfig.model_validate(raw).ppo.advantage_estimator == "rloo"


def test_prompt_pool_is_the_first_training_questions_and_every_run_trains_on_it(tmp_path):
    from fgrlhf_ray.config import RunConfig
    from fgrlhf_ray.pipelines.demo import ppo_run_config, stage_prompt_pool

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text(json.dumps([{"text": f"q{i}"} for i in range(10)]))
    (tmp_path / "pool").mkdir()
    pool = stage_prompt_pool(tmp_path / "pool", data_dir=data, size=4)
    assert [r["text"] for r in json.loads(open(pool["train_file"]).read())] == ["q0", "q1", "q2", "q3"]
    with pytest.raises(ConfigError, match="budget.prompt_pool .11. is larger than the 10 training questions"):
        stage_prompt_pool(tmp_path / "pool", data_dir=data, size=11)
    config = DemoConfig()
    raw = ppo_run_config("oracle", "holistic", run_dir=tmp_path / "run", policy="p", rms={}, data_dir=data,
                         budget=config.sizes(), ppo=config.ppo, seed=0, train_file=pool["train_file"])
    assert RunConfig.model_validate(raw).data.train_file == pool["train_file"]
    default = ppo_run_config("oracle", "holistic", run_dir=tmp_path / "run", policy="p", rms={}, data_dir=data,
                             budget=config.sizes(), ppo=config.ppo, seed=0)
    assert default["data"]["train_file"] == str(data / "train.json")


@pytest.mark.parametrize("pool", ["2", "161"])  # below 4; above the quick preset's 160 training questions
def test_a_bad_prompt_pool_exits_2_before_any_stage(tmp_path, pool):
    result = run_cli("--quick", "--out", str(tmp_path / "o"), "--set", f"budget.prompt_pool={pool}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "budget.prompt_pool" in result.stderr
    assert not (tmp_path / "o").exists()
