"""Build and deploy the reward-model Serve application from a `ServeConfig`.

- `preflight(config)` checks in the driver what the replicas would otherwise fail on
  (missing RM folders, kind / density mismatches, unimportable functions) and makes
  paths absolute, so that mistakes surface as one `ConfigError`, not a replica traceback.
- `build_app(config, token=...)` returns the Serve `Application` (one deployment per
  model + the ingress), with replicas, CPUs / GPUs, autoscaling and health checks
  taken from the config.
- `deploy(config, token=...)` starts Serve's HTTP proxy on `host:port` and runs the app;
  returns its base URL.
"""

from __future__ import annotations

from pathlib import Path

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.serve.config import INGRESS_DEPLOYMENT, ServeConfig


def preflight(config: ServeConfig) -> ServeConfig:
    """Validate what can be validated without Ray; return a copy with absolute paths."""
    from fgrlhf_ray.config import MODEL_KINDS
    from fgrlhf_ray.rewards.base import RMMetadata
    from fgrlhf_ray.rewards.function_scorer import import_target

    config = config.model_copy(deep=True)
    for rm in config.reward_models:
        if rm.kind in MODEL_KINDS:
            meta = RMMetadata.read(rm.path)  # ConfigError if missing / not a saved RM
            if meta.kind != rm.kind:
                raise ConfigError(f"reward model {rm.name!r}: config says kind {rm.kind!r} but {rm.path} holds a "
                                  f"{meta.kind!r} model")
            if meta.density != rm.density:
                raise ConfigError(f"reward model {rm.name!r}: config says density {rm.density!r} but {rm.path} was "
                                  f"trained for {meta.density!r}")
            # Replicas may start in another working directory (or on another node with the same layout).
            rm.path = str(Path(rm.path).resolve())
        elif rm.kind == "function":
            import_target(rm.target)
    if config.tokenizer is not None:
        if not Path(config.tokenizer).is_dir():
            raise ConfigError(f"tokenizer: folder not found: {config.tokenizer}")
        config.tokenizer = str(Path(config.tokenizer).resolve())
    return config


def build_app(config: ServeConfig, *, token: str | None = None):
    """The Serve application: one `RewardModelDeployment` per model behind `ScoreIngress`."""
    from fgrlhf_ray.serve.deployments import RewardModelDeployment, ScoreIngress, token_digest

    models = {}
    for rm in config.reward_models:
        opts = rm.serve
        options = dict(
            name=rm.name,
            ray_actor_options={"num_cpus": rm.num_cpus, "num_gpus": rm.num_gpus},
            max_ongoing_requests=opts.max_ongoing_requests,
            health_check_period_s=opts.health_check_period_s,
            health_check_timeout_s=opts.health_check_timeout_s,
        )
        if opts.autoscaling:
            options["autoscaling_config"] = {
                "min_replicas": opts.min_replicas,
                "max_replicas": opts.max_replicas,
                "target_ongoing_requests": opts.target_ongoing_requests,
            }
        else:
            options["num_replicas"] = rm.num_replicas
        models[rm.name] = RewardModelDeployment.options(**options).bind(rm.model_dump(mode="json"))
    ingress = config.ingress
    return ScoreIngress.options(
        name=INGRESS_DEPLOYMENT,
        num_replicas=ingress.num_replicas,
        ray_actor_options={"num_cpus": ingress.num_cpus},
        max_ongoing_requests=ingress.max_ongoing_requests,
    ).bind(config.model_dump(mode="json"), models, token_digest(token))


def base_url(config: ServeConfig) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    prefix = "" if config.route_prefix == "/" else config.route_prefix
    return f"http://{host}:{config.port}{prefix}"


def deploy(config: ServeConfig, *, token: str | None = None) -> str:
    """Start Serve's proxy on `host:port` (in the connected Ray cluster) and run the app.

    Blocks until every deployment is healthy. Returns the base URL. If Serve already
    runs in the cluster on another host/port, its proxy is kept (Serve has one proxy per
    cluster) and a ConfigError says so.
    """
    from ray import serve

    serve.start(http_options={"host": config.host, "port": config.port})
    _check_proxy(config)
    try:
        serve.run(build_app(config, token=token), name=config.app_name, route_prefix=config.route_prefix)
    except RuntimeError as exc:
        raise ConfigError(f"deploying Serve application {config.app_name!r} failed: {exc}") from None
    return base_url(config)


def _check_proxy(config: ServeConfig) -> None:
    from ray.serve.context import _get_global_client

    try:
        http = _get_global_client().http_config
    except Exception:  # noqa: BLE001 — private API; the check is best effort
        return
    if (http.host, http.port) != (config.host, config.port):
        raise ConfigError(
            f"Ray Serve already runs in this cluster with its HTTP proxy on {http.host}:{http.port}, not "
            f"{config.host}:{config.port}; set host/port to match (--set port={http.port}) or shut that Serve "
            "instance down (`serve shutdown`)"
        )
