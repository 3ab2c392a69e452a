"""`fgrlhf serve --config FILE [--set k=v] [--no-block]`: deploy the configured reward
models as Ray Serve deployments behind one HTTP application (see docs/serve.md)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from fgrlhf_ray.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    from fgrlhf_ray.cli import add_config_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve reward models over HTTP with Ray Serve (POST /v1/score, GET /v1/models, /healthz)",
        description="Deploy every reward model of a serve config (e.g. configs/serve.yaml) as a Ray Serve "
                    "deployment behind one HTTP application, then block until Ctrl-C.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="serve YAML file (see configs/serve.yaml)")
    add_config_arguments(parser)
    parser.add_argument(
        "--no-block", action="store_true",
        help="deploy and exit, leaving the application running (needs a Ray cluster: ray_address or RAY_ADDRESS)",
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from fgrlhf_ray.serve.app import deploy, preflight
    from fgrlhf_ray.serve.config import load_serve_config

    config = load_serve_config(args.config, args.overrides)
    token = config.resolve_token()
    config = preflight(config)

    import ray

    started_ray = False
    if not ray.is_initialized():
        address = config.ray_address or os.environ.get("RAY_ADDRESS")
        if args.no_block and not address:
            raise ConfigError(
                "--no-block needs a running Ray cluster (set ray_address in the config or RAY_ADDRESS): a local "
                "cluster started by this command would stop when it exits"
            )
        ray.init(address=address)
        started_ray = True
    url = deploy(config, token=token)
    names = ", ".join(f"{rm.name} ({rm.kind}, {rm.density})" for rm in config.reward_models)
    auth = f"bearer token from ${config.token_env}" if token else "off"
    if token is None and config.token_env:
        auth += f" (${config.token_env} is not set)"
    print(f"serving {len(config.reward_models)} reward model(s) at {url}: {names}")
    print(f"  POST {url}/v1/score   GET {url}/v1/models   GET {url}/healthz   docs {url}/docs   auth: {auth}")
    sys.stdout.flush()
    if args.no_block:
        return 0

    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print(f"stopping: deleting Serve application {config.app_name!r}", file=sys.stderr)
    finally:
        # Finish the clean-up even if Ctrl-C is pressed again.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if started_ray:  # our own local cluster: tearing it down removes everything
                serve.shutdown()
                ray.shutdown()
            else:  # a shared cluster: remove only this application
                serve.delete(config.app_name)
        finally:
            signal.signal(signal.SIGINT, previous)
    return 0
