"""The demo's statistics, verdict and report (pure: dicts in, dicts and text out, plus the plot).

Input is the evaluation stage's result:

    evaluation = {"sft": {metric: value}, "sft_quality": [q_i],       # q_i: per test question
                  "curves": {arm: {method: {seed: [point, ...]}}},   # point: {"step", metric: value}
                  "final_quality": {arm: {method: {seed: [q_i]}}}, "n_prompts": N}

Verdict rules (issue 16):
- a method *beats* the other only when their difference in final oracle quality is beyond
  2 standard errors: over PPO seeds (SE of the difference of two means) when each method has
  ≥ 2 seeds, otherwise over test questions (SE of the mean paired per-question difference —
  evaluation noise only, which the report says);
- sample efficiency: the first evaluated step at which fine-grained's (seed-mean) oracle
  quality reaches holistic's final one, as a share of the run's steps;
- a third method, token-level PPO (paper B, issue 20; learned arm only), is judged against
  holistic by the same two rules, and the verdict names the method with the best final
  oracle quality and how fast each one reached holistic's final quality;
- gaming: a method whose final sentences or sub-sentences per answer moved more than
  `GAMING_THRESHOLD` (25%) from the SFT policy's is flagged;
- with a PPO prompt pool (`budget.prompt_pool`) the points also carry `POOL_QUALITY`, the
  oracle quality on questions PPO trained on: a table row and the same sample-efficiency line
  on it. The verdict stays on the held-out test questions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from fgrlhf_ray.data.synthetic_oracle import FACTUALITY_TYPES, RELEVANCE_TYPES

#: Every PPO method the demo knows, in run order; an arm runs a subset (token_level: learned arm only).
METHODS = ("fine_grained", "holistic", "token_level")
TABLE_ORDER = ("holistic", "fine_grained", "token_level")  # the report's columns
METHOD_TITLES = {"fine_grained": "fine-grained", "holistic": "holistic", "token_level": "token-level"}
ARM_TITLES = {"learned": "learned reward models", "oracle": "oracle rewards"}
QUALITY = "mean_quality_ratio"
#: Oracle quality on the PPO prompt pool's questions (`budget.prompt_pool`): what PPO optimises.
POOL_QUALITY = "pool/mean_quality_ratio"
GAMING_THRESHOLD = 0.25
GAMING_KEYS = ("shape/sentences_per_answer", "shape/sub_sentences_per_answer")
# Oracle error types grouped as paper A's reward models see them (C1 relevance, C2 factuality).
RELEVANCE_ERRORS, FACTUALITY_ERRORS = RELEVANCE_TYPES, FACTUALITY_TYPES

HEADLINE = [  # (metric key, label, lower is better; None = neither)
    ("relevance_errors_per_sentence", "relevance errors / sentence", True),
    ("factuality_errors_per_sentence", "factuality errors / sentence", True),
    ("missing_rate", "missing-fact rate", True),
    ("frac_with_any_error", "answers with an error", True),
    ("perfect_rate", "perfect answers", False),
    (QUALITY, "oracle quality (share of max)", False),
    (POOL_QUALITY, "oracle quality on the PPO prompt pool (trained-on questions)", False),
    ("win_rate_vs_sft", "oracle win rate vs SFT", False),
    ("shape/words_per_answer", "words / answer", None),
    ("shape/sentences_per_answer", "sentences / answer", None),
    ("shape/sub_sentences_per_answer", "sub-sentences / answer", None),
]
PER_TYPE = [f"errors_per_sentence/{t}" for t in RELEVANCE_ERRORS + FACTUALITY_ERRORS]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_arm(sft: dict, by_method: dict[str, dict[str, list[dict]]]) -> dict:
    """{row: {metric: (mean, std)}} of the final evaluated step, over seeds; row "sft" too."""
    table = {"sft": {k: (v, 0.0) for k, v in sft.items()}}
    for method, by_seed in by_method.items():
        finals = [points[-1] for points in by_seed.values()]
        table[method] = {k: mean_std([f[k] for f in finals]) for k in finals[0] if k != "step"}
    return table


def methods_in(by_method: dict) -> list[str]:
    """The methods of an arm's curves / summary, in table order (SFT and unknown keys left out)."""
    return [m for m in TABLE_ORDER if m in by_method]


def compare(fg_seeds: Sequence[float], ho_seeds: Sequence[float],
            fg_questions: Sequence[float], ho_questions: Sequence[float], *, method: str = "fine_grained") -> dict:
    """`method` (fine-grained unless given) minus holistic final quality with its standard error.

    Seeds give the SE when both methods have ≥ 2 (the noise a re-run would show); with one
    seed the SE of the mean paired per-question difference (seed 0 of each) stands in.
    """
    diff = statistics.fmean(fg_seeds) - statistics.fmean(ho_seeds)
    if len(fg_seeds) >= 2 and len(ho_seeds) >= 2:
        se = math.sqrt(statistics.variance(fg_seeds) / len(fg_seeds) + statistics.variance(ho_seeds) / len(ho_seeds))
        basis = f"{min(len(fg_seeds), len(ho_seeds))} seeds"
    else:
        paired = [a - b for a, b in zip(fg_questions, ho_questions)]
        se = statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else 0.0
        basis = f"one seed; SE over {len(paired)} test questions (evaluation noise only)"
    if se > 0 and abs(diff) > 2 * se:
        winner = method if diff > 0 else "holistic"
    elif se == 0 and diff != 0:
        winner = method if diff > 0 else "holistic"
    else:
        winner = None
    return {"diff": diff, "se": se, "basis": basis, "winner": winner}


def sample_efficiency(by_method: dict[str, dict[str, list[dict]]], metric: str = QUALITY, *,
                      method: str = "fine_grained") -> dict:
    """First evaluated step at which `method`'s (fine-grained unless given) seed-mean `metric`
    reaches holistic's final seed-mean value (higher is better), and that step as a share of the
    run's last step: keys `<method>_step` and `<method>_share`."""
    def mean_curve(by_seed):
        runs = list(by_seed.values())
        return [(p["step"], statistics.fmean(run[i][metric] for run in runs)) for i, p in enumerate(runs[0])]

    fg, ho = mean_curve(by_method[method]), mean_curve(by_method["holistic"])
    target, last = ho[-1][1], fg[-1][0]
    step = next((s for s, v in fg if v >= target), None)
    holistic_step = next((s for s, v in ho if v >= target), None)
    return {"target": target, f"{method}_step": step, "holistic_step": holistic_step, "total_steps": last,
            f"{method}_share": (step / last if step is not None and last else None)}


def gaming_flags(summary: dict, threshold: float = GAMING_THRESHOLD) -> list[str]:
    """A line per (method, shape metric) that moved more than `threshold` from the SFT policy."""
    out = []
    for method in methods_in(summary):
        for key in GAMING_KEYS:
            base, now = summary["sft"][key][0], summary[method][key][0]
            if base > 0 and abs(now - base) / base > threshold:
                out.append(f"{METHOD_TITLES[method]}: {key.split('/')[1].replace('_', ' ')} moved "
                           f"{(now - base) / base:+.0%} from SFT ({base:.2f} → {now:.2f}); part of its reward "
                           "may come from re-segmenting answers rather than fixing them")
    return out


def verdict(summary: dict, comparison: dict) -> str:
    """Who won on oracle quality (beyond 2 SE or not), and did either improve on SFT?"""
    fg, ho = summary["fine_grained"][QUALITY][0], summary["holistic"][QUALITY][0]
    sft = summary["sft"][QUALITY][0]
    c = comparison
    noise = f"Δ {c['diff']:+.3f}, SE {c['se']:.3f}, {c['basis']}"
    if c["winner"] is None:
        head = f"fine-grained and holistic PPO are within noise on oracle quality ({fg:.3f} vs {ho:.3f}; {noise})"
    else:
        word = "beat" if c["winner"] == "fine_grained" else "did not beat"
        head = f"fine-grained PPO {word} holistic PPO on oracle quality ({fg:.3f} vs {ho:.3f}; {noise})"
    above = [name for name, q in (("fine-grained", fg), ("holistic", ho)) if q > sft]
    if not above:
        tail = f"but neither improved on the SFT policy ({sft:.3f})"
    elif len(above) == 1:
        tail = f"and only {above[0]} PPO improved on the SFT policy ({sft:.3f})"
    else:
        tail = f"and both improved on the SFT policy ({sft:.3f})"
    return f"{head}, {tail}."


def _versus_holistic(summary: dict, method: str, c: dict) -> str:
    """One clause: `method` vs holistic on final oracle quality, beyond 2 SE or not."""
    name = METHOD_TITLES[method]
    q, ho = summary[method][QUALITY][0], summary["holistic"][QUALITY][0]
    noise = f"Δ {c['diff']:+.3f}, SE {c['se']:.3f}, {c['basis']}"
    if c["winner"] is None:
        return f"{name} and holistic PPO are within noise on oracle quality ({q:.3f} vs {ho:.3f}; {noise})"
    return f"{name} PPO {'beat' if c['winner'] == method else 'did not beat'} holistic PPO on oracle quality ({q:.3f} vs {ho:.3f}; {noise})"


def verdict_methods(summary: dict, comparisons: dict[str, dict], efficiencies: dict[str, dict]) -> str:
    """The verdict of an arm with more than two methods: each method against holistic, which one
    reached the best final oracle quality, and at which step each reached holistic's final one."""
    methods = methods_in(summary)
    clauses = [_versus_holistic(summary, m, comparisons[m]) for m in methods if m in comparisons]
    best = max(methods, key=lambda m: summary[m][QUALITY][0])
    target = next(iter(efficiencies.values()))
    steps = {m: e[f"{m}_step"] for m, e in efficiencies.items()}
    speed = ", ".join(f"{METHOD_TITLES[m]} {'never' if s is None else f'step {s}'}" for m, s in steps.items())
    sft = summary["sft"][QUALITY][0]
    above = [METHOD_TITLES[m] for m in methods if summary[m][QUALITY][0] > sft]
    tail = (f"none improved on the SFT policy ({sft:.3f})" if not above else
            f"{', '.join(above)} improved on the SFT policy ({sft:.3f})")
    return (f"{'; '.join(clauses)}. Best final oracle quality: {METHOD_TITLES[best]} PPO "
            f"({summary[best][QUALITY][0]:.3f}); reached holistic's final quality ({target['target']:.3f}) at: {speed}, "
            f"holistic itself at step {target['holistic_step']} of {target['total_steps']}; {tail}.")


def token_level_goal(summary: dict, comparison: dict, efficiency: dict) -> str:
    """Issue 20's goal for token-level PPO, reached or not, in one line."""
    share = efficiency["token_level_share"]
    fast = share is not None and share <= 0.5 and efficiency["target"] > summary["sft"][QUALITY][0]
    ok = comparison["winner"] == "token_level" and fast
    return (f"goal (token-level beats holistic on oracle quality beyond noise and reaches holistic's final quality "
            f"in ≤ 50% of the steps): {'reached' if ok else 'not reached'} (winner on quality: "
            f"{comparison['winner'] or 'none'}; share {'never' if share is None else f'{share:.0%}'})")


def goal_check(arm: str, summary: dict, comparison: dict, efficiency: dict) -> str:
    """Issue 16's goal for this arm, reached or not, in one line."""
    fewer = all(summary["fine_grained"][k][0] < summary["holistic"][k][0]
                for k in ("relevance_errors_per_sentence", "factuality_errors_per_sentence"))
    if arm == "oracle":
        share = efficiency["fine_grained_share"]
        # Reaching a target at or below SFT's quality says nothing about speed.
        fast = share is not None and share <= 0.5 and efficiency["target"] > summary["sft"][QUALITY][0]
        ok = fast and fewer
        return (f"goal (fine-grained reaches holistic's final quality in ≤ 50% of the steps and ends with fewer "
                f"relevance and factuality errors per sentence): {'reached' if ok else 'not reached'} "
                f"(share {'never' if share is None else f'{share:.0%}'}; fewer errors of both kinds: {fewer})")
    beats_both = comparison["winner"] == "fine_grained" and fewer
    return (f"goal (fine-grained beats holistic on oracle quality beyond noise and on both error rates): "
            f"{'reached' if beats_both else 'not reached'} (winner on quality: {comparison['winner'] or 'none'}; "
            f"fewer errors of both kinds: {fewer})")


def analyse(evaluation: dict) -> dict:
    """Everything the report states, per arm."""
    out = {}
    for arm, by_method in evaluation["curves"].items():
        summary = summarize_arm(evaluation["sft"], by_method)
        finals = evaluation["final_quality"][arm]
        seed0 = {m: next(iter(finals[m].values())) for m in methods_in(by_method)}
        comparisons, efficiencies = {}, {}
        for m in methods_in(by_method):
            if m != "holistic":
                comparisons[m] = compare([pts[-1][QUALITY] for pts in by_method[m].values()],
                                         [pts[-1][QUALITY] for pts in by_method["holistic"].values()],
                                         seed0[m], seed0["holistic"], method=m)
                efficiencies[m] = sample_efficiency(by_method, method=m)
        comparison, efficiency = comparisons["fine_grained"], efficiencies["fine_grained"]
        out[arm] = {"summary": summary, "comparison": comparison, "sample_efficiency": efficiency,
                    "gaming": gaming_flags(summary), "verdict": verdict(summary, comparison),
                    "goal": goal_check(arm, summary, comparison, efficiency)}
        if POOL_QUALITY in summary["sft"]:  # a prompt pool: the same question of speed on what PPO trained on
            out[arm]["pool_sample_efficiency"] = {m: sample_efficiency(by_method, POOL_QUALITY, method=m)
                                                  for m in comparisons}
        if len(comparisons) > 1:  # a third method (token-level): each against holistic, and the best
            out[arm]["verdict"] = verdict_methods(summary, comparisons, efficiencies)
            out[arm]["methods"] = {m: {"comparison": comparisons[m], "sample_efficiency": efficiencies[m]}
                                   for m in comparisons}
            if "token_level" in comparisons:
                out[arm]["token_level_goal"] = token_level_goal(summary, comparisons["token_level"],
                                                                efficiencies["token_level"])
    return out


def _fmt(ms: tuple[float, float], n_seeds: int) -> str:
    mean, std = ms
    return f"{mean:.3f} ± {std:.3f}" if n_seeds > 1 else f"{mean:.3f}"


def arm_table(summary: dict, n_seeds: int) -> list[str]:
    methods = methods_in(summary)
    lines = ["| metric | SFT | " + " | ".join(f"{METHOD_TITLES[m]} PPO" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for key, label, lower in HEADLINE + [(k, k.split("/")[1] + " / sentence", True) for k in PER_TYPE]:
        if not all(key in summary[r] for r in ("sft", *methods)):
            continue  # a metric this evaluation did not record
        arrow = "" if lower is None else (" ↓" if lower else " ↑")
        cells = [_fmt(summary[r][key], 1 if r == "sft" else n_seeds) for r in ("sft", *methods)]
        lines.append(f"| {label}{arrow} | " + " | ".join(cells) + " |")
    return lines


def rm_quality_lines(rm_quality: dict) -> list[str]:
    """RM quality on held-out policy samples vs on perturbed gold answers, beside baselines."""
    lines = ["| RM | metric | policy samples (test) | baselines there | perturbations (test) |", "|---|---|---|---|---|"]
    for name, q in rm_quality.items():
        pol, per = q.get("policy_samples", {}), q.get("perturbations", {})
        metric = q["metric"]
        base = ", ".join(f"{k} {v:.3f}" for k, v in q.get("baselines", {}).items())
        lines.append(f"| {name} | {metric} | {pol.get(metric, float('nan')):.3f} | {base} | "
                     + (f"{per.get(metric, float('nan')):.3f} |" if "perturbations" in q else "– |"))
    return lines


def warning_lines(by_method: dict[str, dict[str, list[dict]]]) -> list[str]:
    """The reward diagnostics' warnings of an arm's PPO runs (first occurrence of each message)."""
    seen, out = set(), []
    for method, by_seed in by_method.items():
        for seed, events in by_seed.items():
            for e in events:
                if e.get("status") == "warning" and (method, e.get("rm"), e.get("condition")) not in seen:
                    seen.add((method, e.get("rm"), e.get("condition")))
                    out.append(f"- ⚠ reward diagnostics ({METHOD_TITLES.get(method, method)}, seed {seed}, step {e.get('step')}): "
                               f"{e.get('message')}")
    return out or ["- reward diagnostics: no warning in any PPO run of this arm"]


def token_rm_lines(token_rm: dict) -> list[str]:
    """Paper B's comparison on held-out policy answers: the token-level RM (edited ≻ original by the
    sum of its token rewards; sign of r_t on changed tokens) beside a sequence-level RM trained on
    the same edit pairs and the length baselines (`demo_token_level.stage_token_level_rm`'s result)."""
    q, pairs = token_rm["quality"], token_rm["pairs"]
    tl, seq = q.get("token_level", {}), q.get("sequence", {})
    base = tl.get("baselines") or seq.get("baselines") or {}
    shorter, longer = base.get("prefer_shorter", float("nan")), base.get("prefer_longer", float("nan"))
    lines = [f"Edit pairs (prediction 1 → the oracle's corrected-prediction) of the held-out test questions: "
             f"{q['n_pairs']}. Train pairs: {pairs['train'].get('pairs', 0)} "
             f"({pairs['train'].get('skipped_unchanged', 0)} unchanged answers and "
             f"{pairs['train'].get('skipped_duplicate', 0)} repeated answers skipped).", "",
             "| RM | edited ≻ original | changed-token sign accuracy | prefer shorter | prefer longer |",
             "|---|---|---|---|---|"]
    if tl:
        lines.append(f"| token-level (sum of r_t) | {tl['sum_accuracy']:.3f} | {tl['changed_token_sign_accuracy']:.3f} | "
                     f"{shorter:.3f} | {longer:.3f} |")
    if seq:
        lines.append(f"| sequence-level (same pairs) | {seq['accuracy']:.3f} | – | {shorter:.3f} | {longer:.3f} |")
    t = token_rm.get("target")
    if t and "sum_accuracy" in t:
        lines += ["", f"- token-level RM target (≥ {t['target']:.2f} and ≥ {t['margin']:.2f} above the best trivial "
                      f"baseline): {'reached' if t['reached'] else 'not reached'} ({t['sum_accuracy']:.3f} vs "
                      f"{t['best_baseline']:.3f})"]
    me = token_rm.get("make_edits", {}).get("train")
    if me:
        lines.append(f"- the same pairs through `fgrlhf make-edits` and the synthetic (oracle) editor endpoint: "
                     f"{'identical' if me['vs_direct']['equal'] else 'different'} ({me['accepted']} accepted, "
                     f"{me['rejected']} rejected {me['rejected_by_reason']}); make-edits' default "
                     f"--max-rewrite-fraction {me['vs_direct']['max_rewrite_fraction']} would reject "
                     f"{me['vs_direct']['rejected_as_rewrites_too_much']} of them as rewriting too much")
    return lines


def write_report(out: Path, *, header: list[str], analysis: dict, evaluation: dict, n_seeds: int,
                 rm_quality: dict | None, timings: dict, token_rm: dict | None = None) -> str:
    """Write report.md and curves.png; return the report text."""
    lines = list(header)
    for arm, a in analysis.items():
        lines += ["", f"## Arm: {ARM_TITLES.get(arm, arm)}", "", *arm_table(a["summary"], n_seeds), "",
                  f"**Verdict:** {a['verdict']}", "", f"- {a['goal']}"]
        if a.get("token_level_goal"):
            lines.append(f"- {a['token_level_goal']}")
        for m, e in (a.get("methods") or {"fine_grained": {"sample_efficiency": a["sample_efficiency"]}}).items():
            e = e["sample_efficiency"]
            lines.append(f"- sample efficiency: {METHOD_TITLES[m]} reached holistic's final quality ({e['target']:.3f}) "
                         f"at step {e[f'{m}_step'] if e[f'{m}_step'] is not None else 'never'} of {e['total_steps']}"
                         f" (holistic itself at step {e['holistic_step']})"
                         + ("; holistic ended at or below SFT, so this says nothing about speed"
                            if e["target"] <= a["summary"]["sft"][QUALITY][0] else ""))
        for m, e in a.get("pool_sample_efficiency", {}).items():
            lines.append(f"- on the PPO prompt pool (questions PPO trained on): {METHOD_TITLES[m]} reached holistic's "
                         f"final pool quality ({e['target']:.3f}) at step "
                         f"{e[f'{m}_step'] if e[f'{m}_step'] is not None else 'never'} of {e['total_steps']} "
                         f"(holistic itself at step {e['holistic_step']}; SFT {a['summary']['sft'][POOL_QUALITY][0]:.3f})")
        lines += [f"- ⚠ gaming: {g}" for g in a["gaming"]] or ["- no method's segment counts moved more than "
                                                            f"{GAMING_THRESHOLD:.0%} from SFT"]
        lines += warning_lines(evaluation.get("warnings", {}).get(arm, {}))
    if rm_quality:
        lines += ["", "## Reward models on held-out policy answers (oracle-judged) and on perturbed gold answers", "",
                  *rm_quality_lines(rm_quality)]
    if token_rm:
        lines += ["", "## Paper B: token-level vs sequence-level RM on minimal edits of held-out policy answers", "",
                  *token_rm_lines(token_rm)]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
              "![oracle metrics vs PPO steps](curves.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    plot_curves(out / "curves.png", evaluation)
    return text


def plot_curves(path: Path, evaluation: dict) -> None:
    """One row of panels per arm: oracle quality, error rates, sub-sentences per answer vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool = any(POOL_QUALITY in p for arm in evaluation["curves"].values() for runs in arm.values()
               for pts in runs.values() for p in pts)
    panels = [(QUALITY, "oracle quality ↑"), *([(POOL_QUALITY, "oracle quality on the PPO prompt pool ↑")] if pool else []), ("relevance_errors_per_sentence", "relevance errors / sentence ↓"),
              ("factuality_errors_per_sentence", "factuality errors / sentence ↓"),
              ("shape/sub_sentences_per_answer", "sub-sentences / answer")]
    arms = list(evaluation["curves"])
    fig, axes = plt.subplots(len(arms), len(panels), figsize=(4 * len(panels), 3.2 * len(arms)), squeeze=False)
    colours = {"fine_grained": "tab:blue", "holistic": "tab:orange", "token_level": "tab:green"}
    for row, arm in zip(axes, arms):
        for ax, (key, title) in zip(row, panels):
            for method, by_seed in evaluation["curves"][arm].items():
                runs = list(by_seed.values())
                steps = [p["step"] for p in runs[0]]
                mean, std = zip(*(mean_std([run[i][key] for run in runs]) for i in range(len(steps))))
                label = METHOD_TITLES.get(method, method) + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")
                ax.plot(steps, mean, marker="o", color=colours.get(method), label=label)
                ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=colours.get(method), alpha=0.2)
            ax.set_title(f"{arm}: {title}", fontsize=9)
            ax.set_xlabel("PPO step")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
