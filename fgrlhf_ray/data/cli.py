"""`fgrlhf data ...` commands. `register(subparsers)` adds them to the main CLI.

Each handler is stored as `handler` on the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `data` (with subcommand `synth`) to the main parser's subparsers."""
    data = subparsers.add_parser("data", help="generate or inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="{synth}")
    data_sub.required = True
    synth = data_sub.add_parser(
        "synth",
        help="write the synthetic fact-QA world (train/dev/test, QA-FEEDBACK schema)",
        description=(
            "Generate a seeded synthetic fact-QA world and write {train,dev,test}.json "
            "(prompts: question, text, answer, passages) and {split}_feedback.json "
            "(4 predictions, oracle feedback on prediction 1, 6 oracle preferences)."
        ),
    )
    synth.add_argument("--out", required=True, help="output folder (created if absent)")
    synth.add_argument("--n", type=int, default=2000, help="number of questions (default 2000)")
    synth.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    synth.add_argument("--train-frac", type=float, default=0.8, help="share of train questions (default 0.8)")
    synth.add_argument("--dev-frac", type=float, default=0.1,
                       help="share of dev questions (default 0.1); test gets the rest")
    synth.add_argument("--entities-per-type", type=int, default=None,
                       help="people/cities/rivers/companies each (default max(8, 0.1*n))")
    synth.set_defaults(handler=cmd_synth)
    return data


def cmd_synth(args: argparse.Namespace) -> int:
    from fgrlhf_ray.data.synthetic import write_synthetic_dataset

    if args.n < 1:
        print(f"fgrlhf data synth: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        meta = write_synthetic_dataset(
            args.out,
            n=args.n,
            seed=args.seed,
            train_frac=args.train_frac,
            dev_frac=args.dev_frac,
            entities_per_type=args.entities_per_type,
        )
    except ValueError as e:
        print(f"fgrlhf data synth: {e}", file=sys.stderr)
        return 2
    c = meta["counts"]
    print(
        f"wrote {args.out}: train {c['train']}, dev {c['dev']}, test {c['test']} questions "
        f"(seed {args.seed}) in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m fgrlhf_ray.data.cli synth ...`)."""
    parser = argparse.ArgumentParser(prog="fgrlhf")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["data"]:
        argv = ["data", *argv]
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
