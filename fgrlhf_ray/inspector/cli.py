"""`fgrlhf inspect`: score responses with the reward models and write one self-contained HTML page.

    fgrlhf inspect --data sft=eval/sft.generations.jsonl --data fg=eval/fg.generations.jsonl \\
                   --reward-config configs/qa_feedback.yaml --out inspect.html
    fgrlhf inspect --data qa_feedback_dev.json --url http://127.0.0.1:8000 --out inspect.html

Bad input (a missing file, a malformed row, an unknown model, a bad filter) prints one
message naming the file and line or the field, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fgrlhf_ray.errors import ConfigError, DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    from fgrlhf_ray.cli import add_config_arguments

    p = subparsers.add_parser(
        "inspect",
        help="see every reward model's verdict on every segment: one self-contained HTML page",
        description="Score responses (fgrlhf eval generations, a QA-FEEDBACK file or prompt/response JSONL) with the "
                    "configured reward models, in-process or through a running `fgrlhf serve` (--url), and write one "
                    "HTML file that works offline: each model's segments underlined by label and value, a per-token "
                    "strip of the summed weighted reward, per-model totals, toggles, filters and a side-by-side view "
                    "of several policies.",
        epilog="filters (--filter and the page's filter box): <lane>.<metric> OP number, joined with and / or; "
               "lanes are the reward models and label sources (human, labels, oracle), metrics segments, flagged, "
               "share, raw, weighted, missing; bare total, words, chars, tokens. "
               "Example: --filter 'factuality.flagged >= 2 and total < 0'",
    )
    p.add_argument("--data", action="append", required=True, metavar="[POLICY=]FILE",
                   help="responses: a *.generations.jsonl of `fgrlhf eval`, a QA-FEEDBACK .json, or JSONL of "
                        "{prompt, response[, policy, sample, feedback]}; repeat for several policies (they are shown "
                        "side by side where they answered the same prompts); POLICY names it (default: the file name)")
    p.add_argument("--format", default="auto", choices=("auto", "generations", "jsonl", "qa_feedback"),
                   help="input format (default: auto: a JSON list is QA-FEEDBACK, anything else JSONL)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--reward-config", metavar="FILE",
                     help="YAML with `reward_models:` (a training, eval or serve config): scored in this process")
    src.add_argument("--url", metavar="URL",
                     help="a running `fgrlhf serve` (e.g. http://127.0.0.1:8000): scored through POST /v1/score")
    add_config_arguments(p)
    p.add_argument("--models", metavar="A,B", help="only these reward models (default: all configured / served)")
    p.add_argument("--token-env", default="FGRLHF_SERVE_TOKEN", metavar="VAR",
                   help="with --url: environment variable holding the bearer token (default FGRLHF_SERVE_TOKEN)")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="policy tokenizer folder for the per-token strip (default: the config's policy tokenizer or "
                        "the serve config's `tokenizer`, else whitespace words)")
    p.add_argument("--out", default="inspect.html", metavar="FILE", help="HTML file to write (default inspect.html)")
    p.add_argument("--title", help="page title (default: from the input files)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N prompts (over all inputs)")
    p.add_argument("--max-samples", type=int, metavar="K", help="at most K samples per prompt and policy")
    p.add_argument("--filter", metavar="EXPR", help="keep only matching responses, e.g. 'factuality.flagged >= 2'")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="items per scoring call (default 64)")
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from fgrlhf_ray.inspector.build import build_inspection
    from fgrlhf_ray.inspector.inputs import load_reward_setup, read_items
    from fgrlhf_ray.inspector.page_data import FilterError, PageDataError, parse_filter
    from fgrlhf_ray.inspector.render import write_page
    from fgrlhf_ray.inspector.scoring import local_scorers, served_scorers

    for flag in ("limit", "max_samples", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.overrides and not args.reward_config:
        raise ConfigError("--set overrides a field of --reward-config; give --reward-config FILE")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; name the HTML file, e.g. {out / 'inspect.html'}")

    items = []
    for spec in args.data:
        items.extend(read_items(spec, fmt=args.format, max_samples=args.max_samples))
    if args.limit:
        keep: set[str] = set()
        for item in items:
            if len(keep) < args.limit:
                keep.add(item.prompt)
        items = [i for i in items if i.prompt in keep]
    wanted = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None

    tokenizer = args.tokenizer
    scorers = None
    if args.url:
        scorers = served_scorers(args.url, token_env=args.token_env or None, models=wanted)
    elif args.reward_config:
        setup = load_reward_setup(args.reward_config, args.overrides)
        models = setup.reward_models
        if wanted:
            names = [m.name for m in models]
            unknown = [w for w in wanted if w not in names]
            if unknown:
                raise ConfigError(f"--models: {args.reward_config} has no reward model "
                                  f"{', '.join(map(repr, unknown))} (it has {', '.join(names)})")
            models = [m for m in models if m.name in wanted]
        tokenizer = tokenizer or setup.tokenizer
        scorers = local_scorers(models, setup.weights)
    elif not any(i.labels for i in items):
        raise ConfigError("nothing to show: give --reward-config FILE (score in this process) or --url URL (a running "
                          "`fgrlhf serve`); without either, only labelled inputs (QA-FEEDBACK feedback) can be shown")

    lanes = (scorers and [m.name for m in scorers.models] or []) + sorted({s for i in items for s in i.labels})
    if args.filter:
        try:
            parse_filter(args.filter, lanes)
        except FilterError as exc:
            raise ConfigError(f"--filter: {exc}") from None

    title = args.title or ("reward inspector: " + ", ".join(Path(_path(s)).name for s in args.data))
    n_prompts = len({i.prompt for i in items})
    print(f"[inspect] {len(items)} responses to {n_prompts} prompts; scoring with "
          f"{', '.join(m.name for m in scorers.models) if scorers else 'no reward model (labels only)'}"
          f"{' via ' + scorers.source if scorers and scorers.source != 'in-process' else ''}", file=sys.stderr, flush=True)
    try:
        data = build_inspection(items, scorers, tokenizer=tokenizer, title=title, filter_expr=args.filter,
                                batch_size=args.batch_size)
    except PageDataError as exc:  # offsets that do not fit a response, from a model or a labels file
        raise DataError(str(exc)) from None
    finally:
        if scorers is not None:
            scorers.close()
    path = write_page(out, data)
    shown = len(data["responses"])
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {shown} responses to {len(data['groups'])} prompts by "
          f"{len(data['policies'])} polic{'y' if len(data['policies']) == 1 else 'ies'}"
          f"{f' (of {len(items)}; --filter)' if args.filter else ''}; open {path.resolve().as_uri()} in a browser")
    return 0


def _path(spec: str) -> str:
    from fgrlhf_ray.inspector.inputs import split_spec

    return split_spec(spec)[1]
