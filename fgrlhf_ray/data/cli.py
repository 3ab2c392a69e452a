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
    data_sub = data.add_subparsers(dest="data_command", metavar="{synth,sample-feedback}")
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
    _register_sample_feedback(data_sub)
    return data


def _register_sample_feedback(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser(
        "sample-feedback",
        help="sample a policy on prompts and write QA-FEEDBACK rows (annotated by a pluggable annotator)",
        description=(
            "Paper A's protocol for reward-model data: the policy answers each prompt --n times "
            "(vLLM, PPO's sampling settings), an annotator labels the answers, and the rows are "
            "written in the QA-FEEDBACK schema for `fgrlhf train-rm`. With --annotator none the "
            "rows hold the predictions only, for human annotation."
        ),
    )
    p.add_argument("--policy", required=True, help="HF causal-LM folder (the SFT policy)")
    p.add_argument("--prompts", required=True, nargs="+", metavar="FILE",
                   help="prompts JSON list(s) (rows with question, text, passages), e.g. train.json dev.json")
    p.add_argument("--out", required=True,
                   help="output folder: <out>/<prompts stem>_feedback.json per prompts file (one vLLM session)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4; preferences need 4)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts of each file")
    p.add_argument("--annotator", default="oracle",
                   help="oracle (the synthetic world's), none, or module:factory returning an annotator")
    p.add_argument("--feedback-on", choices=("all", "first"), default="all",
                   help="all: one row per sample (rotated to prediction 1); first: one row per prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_sample_feedback)


def cmd_sample_feedback(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from fgrlhf_ray.data.policy_feedback import load_annotator, sample_policy, write_feedback_file
    from fgrlhf_ray.errors import ConfigError, DataError

    where = "fgrlhf data sample-feedback"
    if args.n < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        print(f"{where}: --n, --max-new-tokens and --limit must be >= 1", file=sys.stderr)
        return 2
    files: dict[str, list[dict]] = {}
    try:
        annotator = load_annotator(args.annotator)
        for path in args.prompts:
            records = json.loads(Path(path).read_text())
            bad = next((i for i, r in enumerate(records if isinstance(records, list) else [None])
                        if not (isinstance(r, dict) and isinstance(r.get("text"), str))), None)
            if bad is not None:
                raise DataError(f"{path}: row {bad}: expected a JSON list of prompt rows with a 'text' string")
            files[path] = records[: args.limit] if args.limit else records
    except (OSError, json.JSONDecodeError, ConfigError, DataError) as e:
        print(f"{where}: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    prompts = [r["text"] for recs in files.values() for r in recs]
    samples = sample_policy(args.policy, prompts, n=args.n, temperature=args.temperature, top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens, seed=args.seed)
    t_sample = time.perf_counter() - t0
    report: dict = {"sample_seconds": t_sample, "files": {}}
    at = 0
    for path, records in files.items():
        out = Path(args.out) / f"{Path(path).stem}_feedback.json"
        try:
            stats = write_feedback_file(out, records, samples[at: at + len(records)], annotator,
                                        feedback_on=args.feedback_on)
        except DataError as e:
            print(f"{where}: {path}: {e}", file=sys.stderr)
            return 2
        at += len(records)
        report["files"][str(out)] = stats
    report["annotate_seconds"] = time.perf_counter() - t0 - t_sample
    print(json.dumps(report))
    return 0


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
