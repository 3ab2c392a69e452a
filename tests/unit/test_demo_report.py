"""The demo's verdict statistics: 2-SE rule, sample efficiency, gaming flags (crafted curves)."""

from __future__ import annotations

import pytest

from fgrlhf_ray.pipelines import demo_report as R


def point(step, quality, rel=0.4, fact=0.7, sentences=2.0, subs=3.0):
    return {"step": step, R.QUALITY: quality, "relevance_errors_per_sentence": rel,
            "factuality_errors_per_sentence": fact, "shape/sentences_per_answer": sentences,
            "shape/sub_sentences_per_answer": subs}


SFT = {k: v for k, v in point(0, -0.5).items() if k != "step"}


def test_compare_uses_seed_standard_errors_with_two_or_more_seeds():
    c = R.compare([0.30, 0.32, 0.34], [0.10, 0.12, 0.14], [], [])
    # SE = sqrt(0.02²/3 + 0.02²/3) = 0.01633; Δ 0.2 ≫ 2 SE.
    assert c["se"] == pytest.approx((0.0004 / 3 * 2) ** 0.5)
    assert c["winner"] == "fine_grained" and "3 seeds" in c["basis"]
    close = R.compare([0.30, 0.40], [0.28, 0.38], [], [])
    assert close["winner"] is None  # Δ 0.02 within 2 SE (0.1)


def test_compare_falls_back_to_paired_question_differences_with_one_seed():
    c = R.compare([0.2], [0.1], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0])
    # paired differences +1, -1, +1, -1: mean 0, SE 1/√4 · stdev(=1.1547) = 0.577.
    assert c["se"] == pytest.approx(1.1547005 / 2)
    assert c["winner"] is None and "test questions" in c["basis"]
    clear = R.compare([0.5], [0.1], [0.5, 0.6, 0.4, 0.5], [0.1, 0.1, 0.0, 0.2])
    assert clear["winner"] == "fine_grained"


def test_sample_efficiency_is_the_first_step_reaching_holistics_final_quality():
    by_method = {"fine_grained": {"0": [point(0, -0.5), point(3, -0.2), point(6, -0.1), point(12, 0.0)],
                                  "1": [point(0, -0.5), point(3, -0.4), point(6, -0.1), point(12, 0.0)]},
                 "holistic": {"0": [point(0, -0.5), point(3, -0.4), point(6, -0.3), point(12, -0.2)]}}
    eff = R.sample_efficiency(by_method)
    # fine-grained mean curve: -0.5, -0.3, -0.1, 0.0; holistic's final -0.2 is first reached at step 6.
    assert eff["target"] == pytest.approx(-0.2) and eff["fine_grained_step"] == 6
    assert eff["fine_grained_share"] == pytest.approx(0.5) and eff["holistic_step"] == 12
    never = R.sample_efficiency({"fine_grained": {"0": [point(0, -0.5), point(3, -0.6)]},
                                 "holistic": {"0": [point(0, -0.5), point(3, 0.1)]}})
    assert never["fine_grained_step"] is None and never["fine_grained_share"] is None


def test_gaming_flag_fires_when_segment_counts_move_more_than_25_percent():
    summary = R.summarize_arm(SFT, {
        "fine_grained": {"0": [point(0, -0.5), point(3, -0.4, sentences=1.4, subs=2.9)]},  # sentences −30%
        "holistic": {"0": [point(0, -0.5), point(3, -0.4, sentences=2.4, subs=3.6)]},  # +20% each: silent
    })
    flags = R.gaming_flags(summary)
    assert len(flags) == 1
    assert flags[0].startswith("fine-grained: sentences per answer moved -30% from SFT (2.00 → 1.40)")


def test_verdict_and_goal_lines():
    summary = R.summarize_arm(SFT, {
        "fine_grained": {"0": [point(0, -0.5), point(6, -0.1, rel=0.2, fact=0.5)],
                         "1": [point(0, -0.5), point(6, -0.12, rel=0.2, fact=0.5)]},
        "holistic": {"0": [point(0, -0.5), point(6, -0.4)], "1": [point(0, -0.5), point(6, -0.42)]},
    })
    comp = R.compare([-0.1, -0.12], [-0.4, -0.42], [], [])
    text = R.verdict(summary, comp)
    assert text.startswith("fine-grained PPO beat holistic PPO on oracle quality (-0.110 vs -0.410")
    assert "both improved on the SFT policy (-0.500)" in text
    assert ": reached" in R.goal_check("learned", summary, comp, {"fine_grained_share": 0.5})
    assert ": reached" in R.goal_check("oracle", summary, comp, {"fine_grained_share": 0.5, "target": -0.2})
    assert "not reached" in R.goal_check("oracle", summary, comp, {"fine_grained_share": 0.0, "target": -0.5})
    assert "not reached" in R.goal_check("oracle", summary, comp, {"fine_grained_share": None})
    tie = R.compare([-0.45, -0.40], [-0.44, -0.41], [], [])
    assert "within noise" in R.verdict(summary, tie)


def test_analyse_and_write_report_on_a_two_arm_evaluation(tmp_path):
    curves = {arm: {"fine_grained": {"0": [point(0, -0.5), point(2, -0.3)]},
                    "holistic": {"0": [point(0, -0.5), point(2, -0.4)]}} for arm in ("learned", "oracle")}
    quality = {arm: {"fine_grained": {"0": [-0.3, -0.3, -0.2, -0.4]}, "holistic": {"0": [-0.4, -0.5, -0.3, -0.4]}}
               for arm in curves}
    evaluation = {"sft": SFT, "curves": curves, "final_quality": quality, "n_prompts": 4}
    analysis = R.analyse(evaluation)
    assert set(analysis) == {"learned", "oracle"}
    text = R.write_report(tmp_path, header=["# t"], analysis=analysis, evaluation=evaluation, n_seeds=1,
                          rm_quality={"relevance": {"metric": "macro_f1", "policy_samples": {"macro_f1": 0.8},
                                                    "perturbations": {"macro_f1": 0.7},
                                                    "baselines": {"all_error": 0.4}}}, timings={"total": 1.0})
    assert "## Arm: oracle rewards" in text and "| relevance | macro_f1 | 0.800 | all_error 0.400 | 0.700 |" in text
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_warning_lines_list_each_condition_once():
    event = {"step": 3, "rm": "relevance", "condition": "label_share", "status": "warning", "message": "relevance: blind"}
    lines = R.warning_lines({"fine_grained": {"0": [event, {**event, "step": 4}], "1": [event]},
                             "holistic": {"0": [{**event, "status": "cleared"}]}})
    assert lines == ["- ⚠ reward diagnostics (fine-grained, seed 0, step 3): relevance: blind"]
    assert "no warning" in R.warning_lines({"holistic": {"0": []}})[0]


def test_three_methods_verdict_table_and_token_level_goal(tmp_path):
    """Issue 20: token-level PPO as a third learned-arm method; the oracle arm keeps two."""
    learned = {"fine_grained": {"0": [point(0, -0.5), point(3, -0.3), point(6, -0.2)]},
               "holistic": {"0": [point(0, -0.5), point(3, -0.45), point(6, -0.4)]},
               "token_level": {"0": [point(0, -0.5), point(3, -0.35), point(6, -0.1)]}}
    oracle = {m: learned[m] for m in ("fine_grained", "holistic")}
    quality = {"fine_grained": {"0": [-0.2, -0.3, -0.1, -0.2]}, "holistic": {"0": [-0.4, -0.5, -0.3, -0.4]},
               "token_level": {"0": [-0.1, -0.1, -0.1, -0.1]}}
    evaluation = {"sft": SFT, "curves": {"learned": learned, "oracle": oracle}, "n_prompts": 4,
                  "final_quality": {"learned": quality, "oracle": {m: quality[m] for m in oracle}}}
    analysis = R.analyse(evaluation)
    a = analysis["learned"]
    assert set(a["methods"]) == {"fine_grained", "token_level"}
    assert a["methods"]["token_level"]["comparison"]["winner"] == "token_level"
    assert a["methods"]["token_level"]["sample_efficiency"]["token_level_step"] == 3
    assert "Best final oracle quality: token-level PPO (-0.100)" in a["verdict"]
    assert "token-level step 3" in a["verdict"] and "fine-grained step 3" in a["verdict"]
    assert ": reached" in a["token_level_goal"]
    # the two-method arm is reported exactly as before
    assert "methods" not in analysis["oracle"] and analysis["oracle"]["verdict"].startswith("fine-grained PPO beat")
    token_rm = {"pairs": {"train": {"pairs": 90, "skipped_unchanged": 7, "skipped_duplicate": 3}},
                "quality": {"n_pairs": 20, "token_level": {"sum_accuracy": 0.95, "changed_token_sign_accuracy": 0.9,
                                                           "baselines": {"prefer_shorter": 0.6, "prefer_longer": 0.4}},
                            "sequence": {"accuracy": 0.8, "baselines": {"prefer_shorter": 0.6, "prefer_longer": 0.4}}},
                "target": {"reached": True, "sum_accuracy": 0.95, "best_baseline": 0.6, "target": 0.9, "margin": 0.1}}
    text = R.write_report(tmp_path, header=["# t"], analysis=analysis, evaluation=evaluation, n_seeds=1,
                          rm_quality=None, timings={"total": 1.0}, token_rm=token_rm)
    assert "| metric | SFT | holistic PPO | fine-grained PPO | token-level PPO |" in text
    assert "| metric | SFT | holistic PPO | fine-grained PPO |\n" in text  # the oracle arm's table
    assert "| token-level (sum of r_t) | 0.950 | 0.900 | 0.600 | 0.400 |" in text
    assert "token-level reached holistic's final quality (-0.400) at step 3 of 6" in text
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_prompt_pool_quality_gets_a_table_row_a_speed_line_and_a_panel(tmp_path):
    def pooled(step, quality, pool_q):
        return {**point(step, quality), R.POOL_QUALITY: pool_q}

    curves = {"oracle": {"fine_grained": {"0": [pooled(0, -0.5, 0.2), pooled(4, -0.55, 0.5), pooled(8, -0.6, 0.6)]},
                         "holistic": {"0": [pooled(0, -0.5, 0.2), pooled(4, -0.5, 0.3), pooled(8, -0.52, 0.5)]}}}
    evaluation = {"sft": {**SFT, R.POOL_QUALITY: 0.2}, "curves": curves, "n_prompts": 4,
                  "final_quality": {"oracle": {"fine_grained": {"0": [-0.6] * 4}, "holistic": {"0": [-0.5] * 4}}}}
    analysis = R.analyse(evaluation)
    eff = analysis["oracle"]["pool_sample_efficiency"]["fine_grained"]
    assert eff["target"] == pytest.approx(0.5) and eff["fine_grained_step"] == 4 and eff["holistic_step"] == 8
    text = R.write_report(tmp_path, header=["# t"], analysis=analysis, evaluation=evaluation, n_seeds=1,
                          rm_quality=None, timings={"total": 1.0})
    assert "| oracle quality on the PPO prompt pool (trained-on questions) ↑ | 0.200 | 0.500 | 0.600 |" in text
    assert "on the PPO prompt pool (questions PPO trained on): fine-grained reached holistic's final pool quality " \
           "(0.500) at step 4 of 8 (holistic itself at step 8; SFT 0.200)" in text
    assert "pool_sample_efficiency" not in R.analyse({**evaluation, "sft": SFT, "curves": {
        "oracle": {m: {"0": [point(0, -0.5), point(4, -0.4)]} for m in ("fine_grained", "holistic")}}})["oracle"]
