"""Plot a run's reward diagnostics: per RM, the share of segments labelled error (segment RMs),
the per-sample reward std, the audit judge's agreement, and where each warning fired.

    .venv/bin/python scripts/plot_reward_diagnostics.py RUN_DIR [--out FILE.png]

RUN_DIR is a `fgrlhf train` logging.dir (metrics.jsonl, warnings.jsonl, audit.jsonl).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default RUN_DIR/reward_diagnostics.png)")
    args = p.parse_args()
    run = Path(args.run_dir)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run / "metrics.jsonl")
    warnings = [w for w in read_jsonl(run / "warnings.jsonl") if w.get("status") == "warning"]
    audits = read_jsonl(run / "audit.jsonl")
    if not rows:
        raise SystemExit(f"{run}/metrics.jsonl: no metrics")
    names = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("diag/") and k.endswith("/total_std")},
                   key=lambda n: next(i for i, k in enumerate(rows[0]) if k.startswith(f"diag/{n}/")))
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {n: f"C{i}" for i, n in enumerate(names)}

    ax = axes[0]
    for n in names:
        if f"diag/{n}/error_share" in rows[0]:
            ax.plot(steps, [r[f"diag/{n}/error_share"] for r in rows], "o-", color=colors[n], label=n)
    share = 0.9  # the default; the run's own value when its config.yaml says
    if (run / "config.yaml").is_file():
        import yaml

        share = (yaml.safe_load((run / "config.yaml").read_text()).get("diagnostics") or {}).get("max_label_share",
                                                                                                share)
    ax.axhspan(share, 1.0, color="red", alpha=0.08)
    ax.axhspan(0.0, 1 - share, color="red", alpha=0.08, label=f"warn zone (max_label_share {share:g})")
    ax.set(title="share of segments labelled error", xlabel="PPO step", ylim=(-0.03, 1.03))
    ax.legend(fontsize=8)

    ax = axes[1]
    for n in names:
        ax.plot(steps, [r[f"diag/{n}/total_std"] for r in rows], "o-", color=colors[n], label=n)
        corr = [r.get(f"diag/{n}/corr_segments") for r in rows]
        if any(c is not None for c in corr):
            ax.plot(steps, [c if c is not None else float("nan") for c in corr], ":", color=colors[n],
                    label=f"{n}: corr. with segment count")
    ax.set(title="per-sample reward std (solid), corr. with #segments (dotted)", xlabel="PPO step")
    ax.legend(fontsize=7)

    ax = axes[2]
    for n in names:
        acc = [(a["step"], a["agreement"][n].get("macro_f1", a["agreement"][n].get("spearman")))
               for a in audits if n in a.get("agreement", {})]
        acc = [(s, v) for s, v in acc if v is not None]
        if acc:
            kind = "macro-F1" if "macro_f1" in audits[0]["agreement"][n] else "Spearman"
            ax.plot(*zip(*acc), "o-", color=colors[n], label=f"{n} ({kind})")
    base = [(a["step"], next((v["baseline_macro_f1"] for v in a["agreement"].values() if "baseline_macro_f1" in v),
                             None)) for a in audits]
    base = [(s, v) for s, v in base if v is not None]
    if base:
        ax.plot(*zip(*base), "k--", lw=1, label="constant-label baseline macro-F1")
    ax.set(title="agreement with the audit judge", xlabel="PPO step (audited)", ylim=(-0.05, 1.05))
    ax.legend(fontsize=8)

    by_step: dict[int, list[str]] = {}
    for w in warnings:
        by_step.setdefault(w["step"], []).append(f"{w['rm']}: {w['condition']}")
    for step, what in by_step.items():
        for ax in axes:
            ax.axvline(step, color="red", lw=0.8, alpha=0.5)
        axes[0].text(step + 0.1, 0.5, "warning\n" + "\n".join(what), fontsize=7, color="red", va="center")
    fig.suptitle(f"reward diagnostics: {run}", fontsize=9)
    fig.tight_layout()
    out = Path(args.out) if args.out else run / "reward_diagnostics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
