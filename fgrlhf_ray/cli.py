"""`fgrlhf` command line.

Subcommands live next to the code they drive: each module in `COMMAND_MODULES` exposes
`register(subparsers)`, which adds its parsers and sets `handler=fn(args) -> int`.
User errors (`FgrlhfError`: bad config, data, arguments) print their message and exit 2
with no traceback; bugs still show one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from fgrlhf_ray import __version__
from fgrlhf_ray.errors import FgrlhfError

# Imported lazily per call of `main` so that `fgrlhf --version` stays fast and a
# heavy dependency of one command (vLLM, Ray) is only imported when that command runs.
COMMAND_MODULES: list[str] = [
    "fgrlhf_ray.data.cli",  # fgrlhf data synth
    "fgrlhf_ray.pipelines.sft",  # fgrlhf sft
    "fgrlhf_ray.rewards.cli",  # fgrlhf train-rm, eval-rm
    "fgrlhf_ray.serve.cli",  # fgrlhf serve
    "fgrlhf_ray.launch.trainer",  # fgrlhf train
    "fgrlhf_ray.launch.evaluation",  # fgrlhf eval
    "fgrlhf_ray.inspector.cli",  # fgrlhf inspect
    "fgrlhf_ray.pipelines.edits",  # fgrlhf make-edits
    "fgrlhf_ray.pipelines.demo",  # fgrlhf demo
]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--set a.b.c=value` overrides, repeatable: shared by every command taking a config."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set ppo.kl_coef=0.2 (value parsed as YAML; repeatable)",
    )


def _config_validate(args: argparse.Namespace) -> int:
    from fgrlhf_ray.config import load_config

    config = load_config(args.file, args.overrides)
    names = ", ".join(f"{rm.name} ({rm.kind}, {rm.density}, w={w:g})" for rm, w in
                      zip(config.reward_models, config.effective_reward_weights().values()))
    print(f"{args.file}: valid. reward models: {names}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from fgrlhf_ray.config import dump_config, load_config

    sys.stdout.write(dump_config(load_config(args.file, args.overrides)))
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    from fgrlhf_ray.config import RunConfig

    print(json.dumps(RunConfig.model_json_schema(), indent=2))
    return 0


def _register_config(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser("config", help="validate, show or describe run configurations")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="{validate,show,schema}")

    validate = config_sub.add_parser("validate", help="check a config file; exit 2 with every problem listed")
    validate.add_argument("file")
    add_config_arguments(validate)
    validate.set_defaults(handler=_config_validate)

    show = config_sub.add_parser("show", help="print the effective YAML with defaults filled in")
    show.add_argument("file")
    add_config_arguments(show)
    show.set_defaults(handler=_config_show)

    schema = config_sub.add_parser("schema", help="print the JSON schema of run configs")
    schema.set_defaults(handler=_config_schema)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fgrlhf", description="Fine-grained RLHF on Ray: vLLM rollouts, dense reward models, DeepSpeed PPO."
    )
    parser.add_argument("--version", action="version", version=f"fgrlhf-ray {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_config(subparsers)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except FgrlhfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
