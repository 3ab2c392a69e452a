"""The HTTP API's pydantic models (they generate the OpenAPI schema) and request parsing.

`parse_score_request(body, ...)` turns raw request bytes into a `ScoreRequest` or raises
`RequestError(status, code, reason, field)` — every kind of bad input gets a 4xx and a
JSON reason that names the field:

    400 invalid_utf8 / invalid_json / empty_body    the bytes are not a UTF-8 JSON document
    413 body_too_large / too_many_items             over `max_body_bytes` / `max_items`
    415 unsupported_media_type                      Content-Type is not application/json
    422 validation_error                            missing / extra fields, wrong types,
                                                    empty strings, unknown model names,
                                                    bad token offsets, over-long texts

Pure Python (pydantic only): unit-tested without Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    # strict: "true" is not a bool, 1 is not a str, 1.0 is not an int — wrong JSON types are errors.
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


class ScoreItem(_Strict):
    """One (prompt, response) pair to score."""

    prompt: str = Field(min_length=1)
    """The prompt / question the response answers (non-empty; up to `max_chars` characters)."""

    response: str = Field(min_length=1)
    """The response text; segment offsets in the reply index this string (non-empty)."""

    # Pairs as 2-item lists, not tuples: the `items` before-validator hands pydantic Python
    # objects, and strict mode accepts no list where a tuple is declared.
    token_offsets: list[Annotated[list[int], Field(min_length=2, max_length=2)]] | None = None
    """Per-token rewards only: `[start, end)` character span of each policy token of `response`
    (e.g. a tokenizer's offset mapping; empty spans such as EOS are allowed). Omit to let the
    server tokenize with its configured `tokenizer`."""


class ScoreRequest(_Strict):
    """`POST /v1/score` body."""

    items: list[ScoreItem] = Field(min_length=1)
    """One item (an object) or a non-empty list of items; at most `max_items`."""

    models: list[str] | None = Field(None, min_length=1)
    """Names of the reward models to run (see `GET /v1/models`); null = all of them."""

    return_total: bool = False
    """Also return each model's weighted contribution w·Σ(v−μ)/σ and their sum over models."""

    return_token_rewards: bool = False
    """Also return the weighted per-token scores (one float per policy token, placed as in
    training: a segment's value on the token holding its last character, a sequence value on
    the last token). Needs `token_offsets` on each item or a server-side `tokenizer`."""

    @field_validator("items", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class SegmentOut(BaseModel):
    """One scored segment of a response (`[char_start, char_end)` indexes the response)."""

    char_start: int
    char_end: int
    label: str | None = None
    """e.g. `error` / `no_error` for segment classifiers; null for scalar / token rewards."""
    value: float
    """The model's raw reward (unweighted, unnormalised) — what training consumes."""
    probability: float | None = None
    """P(label) when the model provides it."""


class ModelScore(BaseModel):
    """One reward model's verdict on one item."""

    density: str
    segments: list[SegmentOut]
    raw_total: float
    """Σ of the segments' raw values."""
    weighted_total: float | None = None
    """w·Σ(v−μ)/σ with this model's weight w and normalisation (μ, σ); with `return_total`."""


class ItemResult(BaseModel):
    """Scores of one request item, in request order."""

    index: int
    scores: dict[str, ModelScore]
    """Model name → verdict."""
    weighted_total: float | None = None
    """Σ over the requested models of their `weighted_total` (with `return_total`)."""
    token_offsets: list[tuple[int, int]] | None = None
    """The policy-token spans the per-token rewards refer to (with `return_token_rewards`)."""
    token_rewards: list[float] | None = None
    """Weighted, normalised score per policy token (no KL term); sums to `weighted_total`
    unless a segment could not be placed."""


class ScoreResponse(BaseModel):
    """`POST /v1/score` reply."""

    models: list[str]
    """The models that scored every item."""
    results: list[ItemResult]


class Normalization(BaseModel):
    mean: float
    std: float


class ModelInfo(BaseModel):
    """A served reward model (`GET /v1/models`)."""

    name: str
    kind: str
    task: str | None = None
    density: str
    weight: float
    """Weight in `weighted_total` (after the config's `preset`)."""
    normalization: Normalization
    """(μ, σ) applied before weighting: the config's normalize_mean/std, else the model's stored
    values, else (0, 1) — the same rule as training."""
    stored_normalization: Normalization | None = None
    """(μ, σ) saved with the model (sequence RMs), if any."""
    backbone: str | None = None
    """Backbone the model was initialised from (neural RMs) or the function target."""
    max_batch_size: int
    replicas: dict[str, int]
    """`{"num_replicas": n}` or `{"min_replicas": a, "max_replicas": b}` (autoscaling)."""


class Limits(BaseModel):
    max_body_bytes: int
    max_items: int
    max_chars: int
    max_token_offsets: int


class ModelsResponse(BaseModel):
    """`GET /v1/models` reply."""

    app: str
    models: list[ModelInfo]
    limits: Limits
    auth_required: bool
    tokenizer: str | None = None
    """Server-side policy tokenizer for per-token rewards, if configured."""


class HealthResponse(BaseModel):
    """`GET /healthz` reply (200 when every model answered, else 503)."""

    status: str
    models: dict[str, str]


class FieldProblem(BaseModel):
    field: str
    """Dotted path in the request body, e.g. `items.0.prompt` (empty for the body itself)."""
    problem: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx / 5xx reply."""

    error: str
    """Machine-readable code, e.g. `validation_error`, `invalid_json`, `too_many_items`, `unauthorized`."""
    reason: str
    """Human-readable explanation naming the field."""
    field: str | None = None
    """The first offending field, if the error is about one."""
    problems: list[FieldProblem] = Field(default_factory=list)
    """Every problem found (validation errors)."""


class RequestError(Exception):
    """A request the server refuses: HTTP `status` and an `ErrorResponse` body."""

    def __init__(self, status: int, code: str, reason: str, *, field: str | None = None,
                 problems: Sequence[FieldProblem] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.body = ErrorResponse(error=code, reason=reason, field=field, problems=list(problems))


def _path(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _problems(exc: ValidationError) -> list[FieldProblem]:
    allowed = {
        "": sorted(ScoreRequest.model_fields),
        "items": sorted(ScoreItem.model_fields),
    }
    out = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        field = _path(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = "items" if loc and loc[0] == "items" else ""
            problem = f"unknown field (allowed: {', '.join(allowed[parent])})"
        elif kind == "missing":
            problem = "required field is missing"
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (str, bytes)) or len(got) <= 40 else f"{got[:40]!r}…"
            problem = f"{err['msg']} (got {shown})" if not isinstance(got, (dict, list)) else err["msg"]
        out.append(FieldProblem(field=field, problem=problem, type=kind))
    return out


def _validation_error(problems: list[FieldProblem]) -> RequestError:
    first = problems[0]
    where = first.field or "request body"
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return RequestError(422, "validation_error", f"{where}: {first.problem}{more}", field=first.field or None,
                        problems=problems)


def check_content_type(content_type: str | None) -> None:
    """415 unless the media type is JSON (`application/json`, optionally with a charset)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(
            415, "unsupported_media_type",
            f"Content-Type must be application/json, got {content_type or 'none'!r}", field=None,
        )


def check_body_size(declared: str | int | None, max_body_bytes: int) -> None:
    """413 early when the declared Content-Length already exceeds the limit."""
    if declared is None:
        return
    try:
        size = int(declared)
    except (TypeError, ValueError):
        raise RequestError(400, "invalid_content_length", f"Content-Length {declared!r} is not a number") from None
    if size > max_body_bytes:
        raise RequestError(
            413, "body_too_large",
            f"request body is {size} bytes; the limit is {max_body_bytes} (max_body_bytes): send fewer items per request",
        )


def parse_score_request(
    body: bytes,
    *,
    max_body_bytes: int,
    max_items: int,
    max_chars: int,
    max_token_offsets: int,
    known_models: Sequence[str],
    server_tokenizer: bool = False,
) -> ScoreRequest:
    """Validate a `/v1/score` body; `RequestError` (4xx) on any problem, never anything else."""
    if len(body) > max_body_bytes:
        raise RequestError(
            413, "body_too_large",
            f"request body is {len(body)} bytes; the limit is {max_body_bytes} (max_body_bytes): send fewer items per request",
        )
    if not body.strip():
        raise RequestError(400, "empty_body", "request body is empty; send a JSON object with `items`")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            400, "invalid_utf8", f"request body is not valid UTF-8: byte {exc.start} ({exc.reason}); encode text as UTF-8"
        ) from None
    try:
        request = ScoreRequest.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            detail = errors[0].get("ctx", {}).get("error") or errors[0]["msg"]
            raise RequestError(400, "invalid_json", f"request body is not valid JSON: {detail}") from None
        if errors and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
            raise _validation_error([FieldProblem(
                field="", problem=f"must be a JSON object with `items`, got {type(errors[0]['input']).__name__}",
                type="model_type")]) from None
        raise _validation_error(_problems(exc)) from None

    if len(request.items) > max_items:
        raise RequestError(
            413, "too_many_items",
            f"items: {len(request.items)} items exceed the limit of {max_items} per request (max_items); "
            "split them over several requests", field="items",
        )
    problems: list[FieldProblem] = []
    for i, item in enumerate(request.items):
        for key in ("prompt", "response"):
            n = len(getattr(item, key))
            if n > max_chars:
                problems.append(FieldProblem(field=f"items.{i}.{key}", type="string_too_long",
                                             problem=f"{n} characters exceed the limit of {max_chars} (max_chars)"))
        if item.token_offsets is not None:
            problems.extend(_offset_problems(item, i, max_token_offsets))
        elif request.return_token_rewards and not server_tokenizer:
            problems.append(FieldProblem(
                field=f"items.{i}.token_offsets", type="missing",
                problem="required when return_token_rewards is true: this server has no `tokenizer` configured, "
                        "so send each policy token's [start, end) character span"))
    if request.models is not None:
        known = set(known_models)
        seen: set[str] = set()
        for j, name in enumerate(request.models):
            if name not in known:
                problems.append(FieldProblem(field=f"models.{j}", type="unknown_model",
                                             problem=f"unknown reward model {name!r}; served: {', '.join(known_models)}"))
            elif name in seen:
                problems.append(FieldProblem(field=f"models.{j}", type="duplicate_model",
                                             problem=f"reward model {name!r} is listed twice"))
            seen.add(name)
    if problems:
        raise _validation_error(problems)
    return request


def _offset_problems(item: ScoreItem, i: int, max_token_offsets: int) -> list[FieldProblem]:
    offsets = item.token_offsets or []
    where = f"items.{i}.token_offsets"
    if not offsets:
        return [FieldProblem(field=where, type="too_short", problem="must list at least one token span")]
    if len(offsets) > max_token_offsets:
        return [FieldProblem(field=where, type="too_long",
                             problem=f"{len(offsets)} spans exceed the limit of {max_token_offsets} (max_token_offsets)")]
    n = len(item.response)
    for t, (a, b) in enumerate(offsets):
        if not 0 <= a <= b <= n:
            return [FieldProblem(field=f"{where}.{t}", type="value_error",
                                 problem=f"span [{a}, {b}) must satisfy 0 <= start <= end <= len(response) = {n}")]
    if all(a == b for a, b in offsets):
        return [FieldProblem(field=where, type="value_error", problem="every span is empty; no token covers a character")]
    return []
