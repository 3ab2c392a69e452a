"""Ray Serve applications for reward models (installed as fgrlhf_ray.serve).

- `config`: `ServeConfig` (the `fgrlhf serve` YAML) and `load_serve_config`.
- `schema`: the HTTP API's pydantic models and request validation (pure; no Ray).
- `scoring`: weighted totals and per-token rewards via training's `place_segment_rewards`.
- `deployments`: `RewardModelDeployment` (one per model, `@serve.batch`, `check_health`)
  and the FastAPI `ScoreIngress` (`POST /v1/score`, `GET /v1/models`, `GET /healthz`).
- `app`: `preflight`, `build_app`, `deploy`; `cli`: `fgrlhf serve`.
- `handle_scorer`: `ServeHandleScorer`, scorer kind `serve` (in-cluster DeploymentHandle).
  The HTTP client scorer (kind `http`) is `fgrlhf_ray.rewards.http_scorer.HttpScorer`.
- `testing`: deterministic / fault-injecting function scorers and tiny saved RMs.

See docs/serve.md.
"""
