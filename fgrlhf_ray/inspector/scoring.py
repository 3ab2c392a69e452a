"""Score the inspector's items with the configured reward models, in this process or through a
running `fgrlhf serve`.

Both ways end in the same place — per model, one `SegmentRewards` per item, and each model's
`ModelInfo` (weight, μ, σ) — so the page is built the same way whichever scored it:

- `local_scorers(reward_models, weights)`: each model built exactly as training builds it
  (`fgrlhf_ray.rewards.factory.build_scorer`), with training's normalisation rule
  (`normalization_of`: the config's μ/σ, else the model's stored ones, else (0, 1)).
- `served_scorers(url)`: the models `GET {url}/v1/models` lists, each scored through an
  `HttpScorer` (`POST /v1/score`, its retries, bearer token from `$FGRLHF_SERVE_TOKEN` or
  `token_env`); weights and (μ, σ) are the server's.

Models, torch and HTTP clients are imported inside the functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fgrlhf_ray.errors import ConfigError, FgrlhfError
from fgrlhf_ray.inspector.page_data import Item, ModelInfo

DEFAULT_TOKEN_ENV = "FGRLHF_SERVE_TOKEN"


@dataclass
class Scorers:
    """Named scorers (`score(prompts, responses) -> list[SegmentRewards]`) and how to weigh them."""

    models: list[ModelInfo]
    scorers: dict[str, Any]
    source: str  # e.g. "in-process" or the server URL
    tokenizer: str | None = None  # the server's policy tokenizer (informational)

    def close(self) -> None:
        for scorer in self.scorers.values():
            close = getattr(scorer, "close", None)
            if callable(close):
                close()


def local_scorers(reward_models: Sequence[Any], weights: Mapping[str, float]) -> Scorers:
    """Build every configured reward model in this process (`RewardModelConfig`s)."""
    from fgrlhf_ray.rewards.factory import build_scorer, normalization_of

    models, scorers = [], {}
    for rm in reward_models:
        scorer = build_scorer(rm)
        mean, std = normalization_of(rm, scorer)
        models.append(ModelInfo(name=rm.name, density=getattr(scorer, "density", rm.density),
                                weight=float(weights.get(rm.name, rm.weight)), mean=mean, std=std, kind=rm.kind))
        scorers[rm.name] = scorer
    return Scorers(models=models, scorers=scorers, source="in-process")


def served_scorers(url: str, *, token_env: str | None = DEFAULT_TOKEN_ENV, models: Sequence[str] | None = None,
                   timeout_s: float = 60.0, transport: Any = None) -> Scorers:
    """Scorers for the models a running `fgrlhf serve` at `url` serves (all, or `models`)."""
    from fgrlhf_ray.rewards.http_scorer import HttpScorer, split_target

    base, _ = split_target(url)
    listing = _list_models(base, token_env=token_env, timeout_s=timeout_s, transport=transport)
    served = {m["name"]: m for m in listing.get("models", [])}
    wanted = list(models) if models else list(served)
    unknown = [n for n in wanted if n not in served]
    if unknown:
        raise ConfigError(f"--models: {base} serves no model {', '.join(map(repr, unknown))}; it serves "
                          f"{', '.join(served) or 'nothing'}")
    out_models, scorers = [], {}
    for name in wanted:
        info = served[name]
        norm = info.get("normalization") or {"mean": 0.0, "std": 1.0}
        out_models.append(ModelInfo(name=name, density=info["density"], weight=float(info.get("weight", 1.0)),
                                    mean=float(norm["mean"]), std=float(norm["std"]), kind=info.get("kind")))
        scorers[name] = HttpScorer(name=name, url=base, model=name, density=info["density"], timeout_s=timeout_s,
                                   token_env=token_env, transport=transport)
    return Scorers(models=out_models, scorers=scorers, source=base, tokenizer=listing.get("tokenizer"))


def _list_models(base: str, *, token_env: str | None, timeout_s: float, transport: Any) -> dict:
    """`GET {base}/v1/models` once; FgrlhfError with the server's reason (or why it was unreachable)."""
    import os

    import httpx

    headers = {}
    token = os.environ.get(token_env, "") if token_env else ""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with httpx.Client(timeout=timeout_s, transport=transport) as client:
            response = client.get(f"{base}/v1/models", headers=headers)
    except httpx.HTTPError as exc:
        raise FgrlhfError(f"--url {base}: cannot reach the server ({type(exc).__name__}: {exc}); is `fgrlhf serve` "
                          "running there?") from None
    if response.status_code == 401:
        where = f"${token_env}" if token_env else "a token variable (--token-env)"
        raise FgrlhfError(f"--url {base}: the server wants a bearer token (401); put it in {where}")
    if response.status_code >= 400:
        try:
            reason = response.json().get("reason", response.text[:200])
        except ValueError:
            reason = response.text[:200]
        raise FgrlhfError(f"--url {base}: GET /v1/models answered {response.status_code}: {reason}")
    try:
        listing = response.json()
    except ValueError:
        raise FgrlhfError(f"--url {base}: GET /v1/models did not answer JSON; is this an `fgrlhf serve` URL?") from None
    if not isinstance(listing, dict) or not isinstance(listing.get("models"), list):
        raise FgrlhfError(f"--url {base}: GET /v1/models did not list models; is this an `fgrlhf serve` URL?")
    return listing


def score_items(scorers: Scorers, items: Sequence[Item], *, batch_size: int = 64,
                progress: Callable[[str], None] | None = None) -> dict[str, list]:
    """Per model name, one `SegmentRewards` per item (in order), `batch_size` items per call.

    A user error raised by a scorer (e.g. a function scorer that cannot read a prompt) is
    re-raised naming the model and the items' sources.
    """
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    prompts = [i.prompt for i in items]
    responses = [i.response for i in items]
    out: dict[str, list] = {}
    for model in scorers.models:
        scorer = scorers.scorers[model.name]
        verdicts: list = []
        for lo in range(0, len(items), batch_size):
            hi = min(lo + batch_size, len(items))
            try:
                part = scorer.score(prompts[lo:hi], responses[lo:hi])
            except FgrlhfError as exc:
                span = items[lo].source if hi - lo == 1 else f"{items[lo].source} … {items[hi - 1].source}"
                raise type(exc)(f"reward model {model.name!r} on {span}: {exc}") from None
            if len(part) != hi - lo:
                raise FgrlhfError(f"reward model {model.name!r} returned {len(part)} verdicts for {hi - lo} items")
            verdicts.extend(part)
            if len(items) > batch_size:
                progress(f"[inspect] {model.name}: scored {hi}/{len(items)}")
        out[model.name] = verdicts
    return out


def policy_token_offsets(tokenizer_dir: str, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """Per text, the policy tokenizer's `[start, end)` offset mapping (no special tokens), in
    code points — what training places rewards on. ConfigError for a folder without a tokenizer."""
    from pathlib import Path

    if not Path(tokenizer_dir).is_dir():
        raise ConfigError(f"--tokenizer: folder not found: {tokenizer_dir}")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--tokenizer {tokenizer_dir}: cannot load a tokenizer there ({exc})") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"--tokenizer {tokenizer_dir}: a fast tokenizer (with offset mappings) is needed")
    out = []
    for text in texts:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        out.append([(int(a), int(b)) for a, b in enc["offset_mapping"]])
    return out
