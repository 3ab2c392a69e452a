"""`fgrlhf train-rm` and `fgrlhf eval-rm`.

    fgrlhf train-rm --config configs/rm_relevance.yaml [--set epochs=2 ...]
    fgrlhf eval-rm --model outputs/rm/relevance --data FILE [--split test] [--output out.json]
    fgrlhf eval-rm --model outputs/rm/relevance --generations eval.generations.jsonl --judge module:function

Bad input (missing file, wrong schema, malformed row) raises a `FgrlhfError`, which the
`fgrlhf` entry point prints as one line and turns into exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fgrlhf_ray.errors import ConfigError, DataError


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from fgrlhf_ray.rewards.training import quiet_transformers

    quiet_transformers()


def _require_file(path: str, what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    if not p.is_file():
        raise DataError(f"{what} is not a file: {p}")


def train_rm(args: argparse.Namespace) -> int:
    from fgrlhf_ray.config import load_model_from_yaml
    from fgrlhf_ray.rewards.train_config import RewardModelTrainConfig

    cfg = load_model_from_yaml(RewardModelTrainConfig, args.config, args.overrides)
    _require_file(cfg.data.train_path, f"{args.config}: data.train_path")
    if cfg.data.dev_path:
        _require_file(cfg.data.dev_path, f"{args.config}: data.dev_path")
    if cfg.backbone is not None and not Path(cfg.backbone).is_dir():
        raise ConfigError(f"{args.config}: backbone folder not found: {cfg.backbone}")
    _setup_logging()
    from fgrlhf_ray.rewards.training import train_reward_model

    summary = train_reward_model(cfg)
    print(
        f"trained {summary['task']} RM → {cfg.output_dir} "
        f"(best epoch {summary['best_epoch']}, dev {summary['dev_metric_name']} {summary['best_dev_metric']:.4f}, "
        f"{summary['fit_seconds']:.0f}s training)"
    )
    return 0


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_report(res: dict) -> str:
    """Human-readable lines for an eval-rm result."""
    lines = [f"task: {res['task']}   n: {res['n']}   split: {res.get('split', 'all')}"]
    skip = {"task", "n", "baselines", "dev_metric", "dev_metric_name", "split", "data", "model"}
    for k, v in res.items():
        if k not in skip and not isinstance(v, (dict, list)):
            lines.append(f"  {k:32s} {_fmt(v)}")
    for name, b in res.get("baselines", {}).items():
        if isinstance(b, dict):
            keys = ("accuracy", "error_f1", "no_error_f1", "macro_f1")
            lines.append(f"  baseline {name:23s} " + "  ".join(f"{k} {_fmt(b[k])}" for k in keys))
        else:
            lines.append(f"  baseline {name:23s} {_fmt(b)}")
    return "\n".join(lines)


def read_generations(path: str) -> tuple[list[str], list[str], list[int]]:
    """Prompts, responses and lengths (`response_tokens`, else characters) of a generations JSONL
    file (`fgrlhf eval --out` writes `<stem>.generations.jsonl`); DataError naming a bad row."""
    from fgrlhf_ray.data.rm_data import _iter_jsonl  # the JSONL reader of every RM data file

    prompts, responses, lengths = [], [], []
    for lineno, row in _iter_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise DataError(f"{path}: line {lineno}: a generations row needs string fields 'prompt' and 'response' "
                            "(the *.generations.jsonl of `fgrlhf eval --out`)")
        prompts.append(row["prompt"])
        responses.append(row["response"])
        tokens = row.get("response_tokens")
        lengths.append(int(tokens) if isinstance(tokens, int) else len(row["response"]))
    if not responses:
        raise DataError(f"{path}: no generations in the file")
    return prompts, responses, lengths


def eval_rm_on_generations(args: argparse.Namespace, meta) -> int:
    """`eval-rm --generations FILE --judge module:function`: the RM on policy samples against a judge."""
    from pydantic import ValidationError

    from fgrlhf_ray.config import RewardModelConfig
    from fgrlhf_ray.rewards.base import load_reward_model
    from fgrlhf_ray.rewards.evaluation import evaluate_against_judge
    from fgrlhf_ray.rewards.factory import build_scorer

    if not args.judge:
        raise ConfigError("eval-rm --generations needs --judge module:function (the scorer the RM is compared with)")
    _require_file(args.generations, "--generations")
    prompts, responses, lengths = read_generations(args.generations)
    try:
        judge_config = RewardModelConfig(name="judge", kind="function", target=args.judge,
                                         density=args.judge_density or meta.density)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--judge {args.judge!r}: {problem}") from None
    judge = build_scorer(judge_config)  # the same construction as a `kind: function` reward model
    _setup_logging()
    try:
        rm = load_reward_model(args.model, batch_size=args.batch_size, device=args.device)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{args.model}: cannot load the reward model ({exc})") from None
    res = {"task": meta.task, **evaluate_against_judge(rm, judge, prompts, responses, response_lengths=lengths),
           "split": "generations", "data": str(args.generations), "model": str(args.model), "judge": args.judge}
    return _print_and_write(res, args.output or Path(args.model) / f"eval_{Path(args.generations).stem}_judge.json")


def eval_rm(args: argparse.Namespace) -> int:
    from fgrlhf_ray.rewards.base import RMMetadata

    meta = RMMetadata.read(args.model)  # ConfigError when the folder is not a saved RM
    if getattr(args, "generations", None):
        if args.data:
            raise ConfigError("eval-rm: give either --data (labelled feedback) or --generations (policy samples "
                              "judged by --judge), not both")
        return eval_rm_on_generations(args, meta)
    if not args.data:
        raise ConfigError("eval-rm needs --data FILE (labelled feedback), or --generations FILE with --judge")
    _require_file(args.data, "--data")
    _setup_logging()
    from fgrlhf_ray.rewards.base import load_reward_model
    from fgrlhf_ray.rewards.evaluation import evaluate
    from fgrlhf_ray.rewards.train_config import RMDataConfig
    from fgrlhf_ray.rewards.training import load_examples, select_split

    train_cfg = meta.training.get("config", {})
    data_opts = dict(train_cfg.get("data") or {})
    data_opts.update(train_path=args.data, dev_path=None, dev_size=None)
    data_cfg = RMDataConfig.model_validate(data_opts)
    examples, _, _ = load_examples(meta.task, args.data, fmt=args.format, data=data_cfg,
                                   min_words=train_cfg.get("sub_sentence_min_words", meta.min_words))
    if args.split != "all":
        split = meta.training.get("split")
        if not split:
            raise ConfigError(f"{args.model}: the model has no stored split; use --split all")
        examples = select_split(examples, split, args.split)
        if not examples:
            raise DataError(f"{args.data}: no examples fall in the model's {args.split!r} split (another file?)")
    try:
        rm = load_reward_model(args.model, batch_size=args.batch_size, device=args.device)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{args.model}: cannot load the reward model ({exc})") from None
    res = evaluate(rm, examples, seed=args.seed)
    res.update(split=args.split, data=str(args.data), model=str(args.model))
    t = meta.training
    if t:
        res["model_training"] = {k: t.get(k) for k in ("fit_seconds", "total_seconds", "best_epoch", "best_dev_metric",
                                                        "dev_metric_name", "use_ray_train", "strategy", "num_workers")}
        res["model_training"]["train_examples"] = (t.get("split") or {}).get("counts", {}).get("train")
        res["model_training"]["config"] = t.get("config")
    return _print_and_write(res, args.output or Path(args.model) / f"eval_{Path(args.data).stem}_{args.split}.json")


def _print_and_write(res: dict, out: str | Path) -> int:
    """Print an eval-rm result and write it as JSON to `out` (the command's exit code: 0)."""
    print(format_report(res))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train-rm` and `eval-rm` to the `fgrlhf` command line."""
    from fgrlhf_ray.cli import add_config_arguments

    p = subparsers.add_parser("train-rm", help="train one reward model from a YAML config (RewardModelTrainConfig)")
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/rm_relevance.yaml")
    add_config_arguments(p)
    p.set_defaults(handler=train_rm)

    e = subparsers.add_parser("eval-rm", help="evaluate a saved reward model against trivial baselines, or on policy "
                                              "samples against a judge (--generations, --judge)")
    e.add_argument("--model", required=True, help="saved reward-model folder (the train-rm output_dir)")
    e.add_argument("--data", help="QA-FEEDBACK JSON or the task's JSONL format (labelled feedback)")
    e.add_argument("--generations", help="policy samples instead of --data: a *.generations.jsonl of `fgrlhf eval "
                                         "--out` (prompt, response), judged by --judge; no gold labels needed")
    e.add_argument("--judge", help="with --generations: the judge scorer as 'module:function' (like a `kind: "
                                   "function` reward model)")
    e.add_argument("--judge-density", choices=["sub_sentence", "sentence", "sequence", "token"],
                   help="density of the judge's output (default: the RM's)")
    e.add_argument("--format", choices=["auto", "qa_feedback", "jsonl"], default="auto")
    e.add_argument("--split", choices=["all", "train", "dev", "test"], default="all",
                   help="evaluate only the groups of this split, as stored with the model at training")
    e.add_argument("--output", help="result JSON (default: MODEL/eval_<data>_<split>.json)")
    e.add_argument("--seed", type=int, default=0, help="seed of the randomised pair order (preference RMs)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    e.set_defaults(handler=eval_rm)
