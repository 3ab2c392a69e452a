"""Ray Serve deployments: one `RewardModelDeployment` per reward model and the FastAPI
`ScoreIngress` in front of them.

Request path: HTTP proxy → `ScoreIngress` (auth, size limits, validation, fan-out) →
`RewardModelDeployment.score(chunk)` for each model and each chunk of at most
`max_batch_size` items → `@serve.batch` merges chunks of concurrent requests into one
`scorer.score()` call → the ingress weights the verdicts (`fgrlhf_ray.serve.scoring`).

Failure handling:
- bad input never reaches a model: the ingress answers 4xx (`fgrlhf_ray.serve.schema`);
- a model that raises fails only the callers whose items it could not score (a failed
  merged batch is re-scored chunk by chunk), the ingress answers 503, and the replica
  runs a probe at its next health check: if the probe fails too, `check_health` raises
  and Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic.json_schema import models_json_schema
from ray import serve

from fgrlhf_ray import __version__
from fgrlhf_ray.infra.chaos import chaos_point
from fgrlhf_ray.rewards.factory import build_scorer, normalization_of
from fgrlhf_ray.serve.config import ServeConfig, ServedRewardModelConfig
from fgrlhf_ray.serve.schema import (
    ErrorResponse,
    HealthResponse,
    Limits,
    ModelInfo,
    ModelsResponse,
    Normalization,
    RequestError,
    ScoreRequest,
    ScoreResponse,
    check_body_size,
    check_content_type,
    parse_score_request,
)
from fgrlhf_ray.types import SegmentRewards

logger = logging.getLogger("ray.serve")

# What a replica scores to find out whether it still works after a failure.
PROBE_PROMPT = "question: what is this? answer:"
PROBE_RESPONSE = "This is a health probe. It has two sentences."


class ScoringFailed(RuntimeError):
    """A reward model raised while scoring a chunk (the message says which and why)."""


class _ChunkFailure:
    """Result slot of a chunk the model could not score (`@serve.batch` sets results, not errors)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _count_items(chunks: list) -> int:
    """`@serve.batch` size of a batch: items, not calls (each call carries a chunk)."""
    return sum(len(chunk) for chunk in chunks)


def chunked(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def score_chunks(score: Callable[[list], list], chunks: list[list]) -> list:
    """Score every chunk of a merged batch with one `score(items)` call; per chunk, its
    verdicts or a `_ChunkFailure`.

    If the merged call raises, each chunk is re-scored alone, so one request's bad item
    fails only that request, not the other requests batched with it.
    """
    flat = [item for chunk in chunks for item in chunk]
    try:
        verdicts = score(flat)
    except Exception as exc:  # noqa: BLE001 — any model error must fail only its own callers
        if len(chunks) == 1:
            return [_ChunkFailure(f"{type(exc).__name__}: {exc}")]
        out = []
        for chunk in chunks:
            try:
                out.append(score(chunk))
            except Exception as inner:  # noqa: BLE001
                out.append(_ChunkFailure(f"{type(inner).__name__}: {inner}"))
        return out
    out, k = [], 0
    for chunk in chunks:
        out.append(verdicts[k : k + len(chunk)])
        k += len(chunk)
    return out


@serve.deployment
class RewardModelDeployment:
    """One reward model in a Serve replica (built exactly as training builds it)."""

    def __init__(self, config: dict) -> None:
        self.config = ServedRewardModelConfig.model_validate(config)
        self.scorer = build_scorer(self.config)
        opts = self.config.serve
        # `@serve.batch` arguments are fixed at class definition; these setters apply the config's.
        self._score_batched.set_max_batch_size(opts.max_batch_size)
        self._score_batched.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
        self._needs_probe = False
        self.stats = {"batches": 0, "items": 0, "max_batch_items": 0, "failed_chunks": 0}
        self._pid = os.getpid()
        try:
            self._replica_id = str(serve.get_replica_context().replica_id)
        except Exception:  # constructed outside Serve (tests)
            self._replica_id = f"local-{self._pid}"

    def info(self) -> dict[str, Any]:
        meta = getattr(self.scorer, "metadata", None)
        stored = getattr(self.scorer, "normalization", None)
        mean, std = normalization_of(self.config, self.scorer)
        opts = self.config.serve
        return {
            "name": self.config.name,
            "kind": getattr(self.scorer, "kind", self.config.kind),
            "task": getattr(meta, "task", None),
            "density": self.scorer.density,
            "backbone": getattr(meta, "backbone", None) or getattr(self.scorer, "target", None),
            "normalization": (mean, std),
            "stored_normalization": tuple(stored) if stored else None,
            "max_batch_size": opts.max_batch_size,
            "replicas": ({"min_replicas": opts.min_replicas, "max_replicas": opts.max_replicas} if opts.autoscaling
                         else {"num_replicas": self.config.num_replicas}),
            "replica_id": self._replica_id,
            "pid": self._pid,
            "stats": dict(self.stats),
        }

    def ping(self) -> str:
        return "ok"

    async def score(self, items: list[tuple[str, str]]) -> list[SegmentRewards]:
        """Score (prompt, response) pairs; callers should send at most `max_batch_size` per call."""
        size = self.config.serve.max_batch_size
        parts = await asyncio.gather(*(self._score_batched(chunk) for chunk in chunked(list(items), size)))
        out: list[SegmentRewards] = []
        for part in parts:
            if isinstance(part, _ChunkFailure):
                raise ScoringFailed(part.message)
            out.extend(part)
        return out

    def _score_now(self, chunk: list) -> list[SegmentRewards]:
        chaos_point(f"serve:{self.config.name}")  # tests only: a scheduled kill lands here (fgrlhf_ray.infra.chaos)
        prompts = [p for p, _ in chunk]
        responses = [r for _, r in chunk]
        result = self.scorer.score(prompts, responses)
        if len(result) != len(chunk):
            raise ValueError(f"score() returned {len(result)} verdicts for {len(chunk)} items")
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=_count_items)
    async def _score_batched(self, chunks: list[list[tuple[str, str]]]) -> list:
        # A worker thread keeps the replica's event loop free for health checks and queueing.
        results = await asyncio.to_thread(score_chunks, self._score_now, chunks)
        failures = [r for r in results if isinstance(r, _ChunkFailure)]
        self.stats["batches"] += 1
        self.stats["items"] += _count_items(chunks)
        self.stats["max_batch_items"] = max(self.stats["max_batch_items"], _count_items(chunks))
        if failures:
            self.stats["failed_chunks"] += len(failures)
            self._needs_probe = True
            for failure in failures:
                logger.warning("reward model %r failed on a chunk: %s", self.config.name, failure.message)
        return [_ChunkFailure(f"reward model {self.config.name!r} failed: {r.message}")
                if isinstance(r, _ChunkFailure) else r for r in results]

    async def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`. After a scoring failure, score a
        known-good probe: if that fails too the replica is broken and Serve replaces it."""
        if not self._needs_probe:
            return
        try:
            await asyncio.to_thread(self._score_now, [(PROBE_PROMPT, PROBE_RESPONSE)])
        except Exception as exc:
            raise RuntimeError(
                f"reward model {self.config.name!r}: the health probe failed after a scoring error ({exc!r}); "
                "Serve will replace this replica"
            ) from exc
        self._needs_probe = False


# --------------------------------------------------------------------------- HTTP ingress

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503, 504)}

api = FastAPI(
    title="fgrlhf reward models",
    version=__version__,
    description=(
        "Fine-grained reward models served by Ray Serve. `POST /v1/score` returns, per item and per "
        "reward model, the scored segments (character offsets into the response), optionally the weighted "
        "total and per-token rewards computed exactly as training does."
    ),
)


def _openapi() -> dict:
    """OpenAPI from the pydantic models; `/v1/score` parses its body itself (for exact 4xx
    reasons), so its request schema is attached here from `ScoreRequest`."""
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    _, defs = models_json_schema([(ScoreRequest, "validation")], ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    schema["paths"]["/v1/score"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}},
    }
    api.openapi_schema = schema
    return schema


api.openapi = _openapi  # type: ignore[method-assign]


def _error(exc: RequestError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content=exc.body.model_dump(), headers=headers)


def token_digest(token: str | None) -> str | None:
    """SHA-256 of the bearer token: the deployment stores this, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest() if token else None


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ScoringFailed):
        return str(cause)
    text = str(cause or exc).strip().splitlines()
    return text[-1][:500] if text else type(exc).__name__


@serve.deployment
@serve.ingress(api)
class ScoreIngress:
    """HTTP front: auth, limits, validation, fan-out to the model deployments, weighting."""

    def __init__(self, config: dict, models: dict, token_sha256: str | None) -> None:
        self.config = ServeConfig.model_validate(config)
        self.handles = models  # name → DeploymentHandle (Serve resolves the bound deployments)
        self.names = [rm.name for rm in self.config.reward_models]
        self.weights = self.config.effective_weights()
        self.token_sha256 = token_sha256
        self._infos: dict[str, dict] | None = None
        self._tokenizer = None
        if self.config.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer)

    # ------------------------------------------------------------------ helpers
    def _check_auth(self, request: Request) -> None:
        if self.token_sha256 is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise RequestError(401, "unauthorized", "missing bearer token: send `Authorization: Bearer <token>`")
        if not hmac.compare_digest(token_digest(value.strip()), self.token_sha256):
            raise RequestError(401, "unauthorized", "invalid bearer token")

    async def _model_infos(self) -> dict[str, dict]:
        if self._infos is None:
            infos = await asyncio.wait_for(
                asyncio.gather(*(self.handles[n].info.remote() for n in self.names)), self.config.request_timeout_s
            )
            self._infos = dict(zip(self.names, infos))
        return self._infos

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        check_body_size(request.headers.get("content-length"), limit)
        parts, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > limit:  # a chunked body with no (or a false) Content-Length
                raise RequestError(413, "body_too_large",
                                   f"request body exceeds the limit of {limit} bytes (max_body_bytes)")
            parts.append(part)
        return b"".join(parts)

    def _offsets_for(self, request: ScoreRequest) -> list[list[tuple[int, int]]] | None:
        if not request.return_token_rewards:
            return None
        out = []
        for item in request.items:
            if item.token_offsets is not None:
                out.append([tuple(o) for o in item.token_offsets])
            else:  # validated: a server tokenizer exists
                enc = self._tokenizer(item.response, add_special_tokens=False, return_offsets_mapping=True)
                out.append([tuple(o) for o in enc["offset_mapping"]])
        return out

    async def _score_model(self, name: str, pairs: list[tuple[str, str]]) -> list[SegmentRewards]:
        size = self.config.model(name).serve.max_batch_size
        parts = await asyncio.gather(*(self.handles[name].score.remote(c) for c in chunked(pairs, size)))
        return [v for part in parts for v in part]

    # ---------------------------------------------------------------- endpoints
    @api.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS,
              summary="Score (prompt, response) items with the served reward models")
    async def score(self, request: Request):
        try:
            self._check_auth(request)
            check_content_type(request.headers.get("content-type"))
            body = await self._read_body(request)
            parsed = parse_score_request(
                body,
                max_body_bytes=self.config.max_body_bytes,
                max_items=self.config.max_items,
                max_chars=self.config.max_chars,
                max_token_offsets=self.config.max_token_offsets,
                known_models=self.names,
                server_tokenizer=self._tokenizer is not None,
            )
        except RequestError as exc:
            return _error(exc, {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
        names = parsed.models or self.names
        pairs = [(item.prompt, item.response) for item in parsed.items]
        try:
            infos = await self._model_infos()
            verdicts = await asyncio.wait_for(
                asyncio.gather(*(self._score_model(n, pairs) for n in names)), self.config.request_timeout_s
            )
        except asyncio.TimeoutError:
            return _error(RequestError(504, "model_timeout",
                                       f"the reward models did not answer within {self.config.request_timeout_s:g} s "
                                       "(request_timeout_s); retry, or send fewer items"))
        except Exception as exc:  # noqa: BLE001 — a model's failure is reported, never a 500
            return _error(RequestError(503, "model_unavailable", f"{_cause(exc)}; retry shortly"),
                          {"Retry-After": "1"})
        from fgrlhf_ray.serve.scoring import build_results

        try:
            results = build_results(
                dict(zip(names, verdicts)),
                [item.response for item in parsed.items],
                weights=self.weights,
                normalizations={n: tuple(infos[n]["normalization"]) for n in names},
                return_total=parsed.return_total,
                token_offsets=self._offsets_for(parsed),
            )
        except ValueError as exc:  # a model returned segments that cannot be placed
            return _error(RequestError(503, "model_output_error", f"cannot place the models' rewards: {exc}"))
        return ScoreResponse(models=list(names), results=results)

    @api.get("/v1/models", response_model=ModelsResponse, responses=_ERRORS, summary="The served reward models")
    async def models(self, request: Request):
        try:
            self._check_auth(request)
        except RequestError as exc:
            return _error(exc, {"WWW-Authenticate": "Bearer"})
        try:
            infos = await self._model_infos()
        except Exception as exc:  # noqa: BLE001
            return _error(RequestError(503, "model_unavailable", f"{_cause(exc)}; retry shortly"))
        models = []
        for name in self.names:
            info = infos[name]
            stored = info["stored_normalization"]
            models.append(ModelInfo(
                name=name, kind=info["kind"], task=info["task"], density=info["density"], weight=self.weights[name],
                normalization=Normalization(mean=info["normalization"][0], std=info["normalization"][1]),
                stored_normalization=Normalization(mean=stored[0], std=stored[1]) if stored else None,
                backbone=info["backbone"], max_batch_size=info["max_batch_size"], replicas=info["replicas"],
            ))
        c = self.config
        return ModelsResponse(
            app=c.app_name, models=models, auth_required=self.token_sha256 is not None, tokenizer=c.tokenizer,
            limits=Limits(max_body_bytes=c.max_body_bytes, max_items=c.max_items, max_chars=c.max_chars,
                          max_token_offsets=c.max_token_offsets),
        )

    @api.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}},
             summary="200 when every reward model answers")
    async def healthz(self):
        async def ping(name: str) -> str:
            try:
                return await asyncio.wait_for(self.handles[name].ping.remote(), 5.0)
            except Exception as exc:  # noqa: BLE001
                return f"unavailable: {_cause(exc)}"

        states = dict(zip(self.names, await asyncio.gather(*(ping(n) for n in self.names))))
        ok = all(s == "ok" for s in states.values())
        body = HealthResponse(status="ok" if ok else "degraded", models=states)
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())

    @api.get("/inspect", response_class=HTMLResponse, summary="The reward inspector, interactive (HTML page)")
    async def inspect_page(self):
        """Paste a prompt and responses; the page calls `/v1/models` and `/v1/score` itself, with a
        bearer token typed into it (`fgrlhf_ray.inspector`). The page holds no token and no data."""
        from fgrlhf_ray.inspector.render import content_security_policy, render_interactive_page

        return HTMLResponse(render_interactive_page(api_base=self.config.route_prefix),
                            headers={"Content-Security-Policy": content_security_policy(connect="'self'"),
                                     "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# Last line of defence: an unexpected error still answers JSON (and is logged), never HTML.
@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - defensive
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    body = ErrorResponse(error="internal_error", reason="internal server error; the ingress replica's log has the traceback")
    return JSONResponse(status_code=500, content=body.model_dump())
