"""Collect the reward-model quality results (`fgrlhf eval-rm --output
benchmarks/results/rm_quality_<task>.json`) into one table: metric, the model's numbers,
the trivial baselines, CPU training time.

    python benchmarks/rm_quality_summary.py [--results benchmarks/results]

Writes `rm_quality_summary.json` next to the inputs and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ["relevance", "factuality", "completeness", "holistic", "token_level", "edit_preference"]


def _r(x: float) -> float:
    return round(float(x), 3)


def summarize(res: dict) -> dict:
    """One row of the table from one eval-rm result."""
    task = res["task"]
    train = res.get("model_training", {})
    b = res["baselines"]
    if "macro_f1" in res:  # segment RM
        row = {
            "metric": "macro_f1 / accuracy / error_f1 (P, R)",
            "model": [_r(res[k]) for k in ("macro_f1", "accuracy", "error_f1", "error_precision", "error_recall")],
            "baselines": {
                "majority_accuracy": _r(res["majority_accuracy"]),
                **{name: [_r(b[name][k]) for k in ("macro_f1", "accuracy", "error_f1")]
                   for name in ("all_error", "all_no_error")},
            },
        }
    elif "pair_accuracy" in res:  # token-level RM
        row = {
            "metric": "pair_accuracy (margin) / sum_accuracy / changed-token sign accuracy",
            "model": [_r(res[k]) for k in ("pair_accuracy", "sum_accuracy", "changed_token_sign_accuracy")],
            "baselines": {k: _r(v) for k, v in b.items()},
        }
    else:  # preference RM
        row = {"metric": "pairwise accuracy (order randomised)", "model": _r(res["accuracy"]),
               "baselines": {k: _r(v) for k, v in b.items()}}
    row.update(task=task, n=res["n"], train_examples=train.get("train_examples"),
               cpu_fit_seconds=round(train["fit_seconds"]) if "fit_seconds" in train else None,
               best_epoch=train.get("best_epoch"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    folder = Path(args.results)
    rows = []
    for task in ORDER:
        path = folder / f"rm_quality_{task}.json"
        if path.is_file():
            rows.append(summarize(json.loads(path.read_text())))
    (folder / "rm_quality_summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| RM | metric | model | baselines | CPU fit |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['metric']} | {r['model']} | {r['baselines']} | {r['cpu_fit_seconds']} s |")


if __name__ == "__main__":
    main()
