"""The neural RMs' shared base: backbone + linear head (`RMNetwork`) and
`HFRewardModel` (construction from a backbone, save / load, padding, batching).

A saved folder holds the backbone (`save_pretrained`), the tokenizer, the head
(`rm_head.safetensors`), `fgrlhf_rm.json` (`RMMetadata`) and, for segment RMs with
explicit features, the frozen sentence encoder in `feature_encoder/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from fgrlhf_ray.errors import ConfigError
from fgrlhf_ray.rewards.base import (
    HEAD_FILE,
    METADATA_FILE,
    TASKS,
    RMMetadata,
    default_backbone_path,
)
from fgrlhf_ray.types import SegmentRewards

FEATURE_ENCODER_DIR = "feature_encoder"


class RMNetwork(nn.Module):
    """`backbone` (any HF AutoModel, encoder or decoder) → hidden states (B, T, H) →
    linear `head` → (B, T, out_dim); plus, with `n_features` > 0, a linear
    `feature_head` over per-token explicit features (B, T, F) added to the output
    (segment RMs put each segment's features at its separator, zeros elsewhere)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, out_dim: int, n_features: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, out_dim)
        self.feature_head = nn.Linear(n_features, out_dim) if n_features else None

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask → (B, T, H) last hidden states."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) ids and mask [+ (B, T, F) features] → (B, T, out_dim) per-token head outputs."""
        out = self.head(self.hidden(input_ids, attention_mask))
        if self.feature_head is not None:
            if features is None:
                raise ValueError("this reward model was built with explicit features; pass `features`")
            out = out + self.feature_head(features.to(out.dtype))
        return out


def _resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class HFRewardModel:
    """Base of the three neural RMs: a backbone + linear head, a tokenizer, metadata.

    Subclasses set `kind`, `out_dim` and implement `score` plus the training hooks
    (`features`, `collate`, `compute_loss`). Construct with `from_backbone` (untrained)
    or `load` (saved folder).
    """

    kind: ClassVar[str] = ""
    out_dim: ClassVar[int] = 1

    def __init__(self, *, network, tokenizer, metadata: RMMetadata, device: str | None = None, batch_size: int = 16,
                 feature_encoder=None):
        self.network = network
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.device = _resolve_device(device)
        self.batch_size = int(batch_size)
        self.network.to(self.device)
        self.network.eval()
        # Frozen `SentenceEncoder` of segment RMs whose explicit features need embeddings (else None).
        self.feature_encoder = feature_encoder
        if feature_encoder is not None:
            feature_encoder.model.to(self.device)
        from fgrlhf_ray.rewards.inputs import InputBuilder

        self.inputs = InputBuilder(
            tokenizer=tokenizer,
            max_length=metadata.max_length,
            use_context=metadata.use_context,
            context_marker=metadata.context_marker,
            context_selection=metadata.context_selection,
            is_decoder=metadata.is_decoder,
        )

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def density(self) -> str:
        return self.metadata.density

    @property
    def normalization(self) -> tuple[float, float] | None:
        """(mean, std) of training scores for sequence RMs; None otherwise."""
        n = self.metadata.normalization
        return (float(n["mean"]), float(n["std"])) if n else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, task={self.metadata.task!r}, device={self.device!r})"

    # -------------------------------------------------------------- construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str | None = None,
        *,
        task: str,
        name: str | None = None,
        max_length: int = 512,
        use_context: bool = False,
        context_selection: str = "bm25",
        pooling: str = "auto",
        min_words: int = 5,
        segment_features: bool = False,
        feature_names: Sequence[str] | None = None,
        feature_encoder: str | None = None,
        seed: int = 0,
        device: str | None = None,
        batch_size: int = 16,
    ) -> "HFRewardModel":
        """A fresh RM: pretrained backbone from `backbone` (default: the MiniLM package)
        and a seeded random head. `segment_features` (segment RMs): also a frozen copy of
        the pretrained backbone (or of the `feature_encoder` folder) as sentence encoder,
        explicit features `feature_names` (groups or names, `segment_features.FEATURE_GROUPS`;
        None = the base ten), and both heads start at zero."""
        from transformers import AutoModel, AutoTokenizer

        if task not in TASKS or TASKS[task][0] != cls.kind:
            allowed = [t for t, (k, _) in TASKS.items() if k == cls.kind]
            raise ConfigError(f"{cls.__name__} cannot learn task {task!r}; allowed: {', '.join(allowed)}")
        path = backbone or default_backbone_path()
        hf_config, tokenizer = _backbone_config_and_tokenizer(path, max_length)
        is_decoder = _is_decoder_config(hf_config)
        names = _segment_feature_names(cls.kind, task, segment_features, feature_names, feature_encoder)
        enc_path = feature_encoder or path
        if segment_features and not Path(enc_path).exists():
            raise ConfigError(f"feature encoder folder not found: {enc_path} (a local Hugging Face model folder)")
        backbone_model = _drop_pooler(AutoModel.from_pretrained(path))
        network = _fresh_network(backbone_model, _hidden_size(hf_config), cls.out_dim,
                                 n_features=len(names) if names else 0, seed=seed)
        encoder = None
        if segment_features and _needs_encoder(names):  # word-only features need no encoder
            enc_tok = tokenizer if feature_encoder is None else AutoTokenizer.from_pretrained(enc_path)
            encoder = _sentence_encoder(AutoModel.from_pretrained(enc_path), enc_tok)
        if pooling == "auto":
            pooling = "last" if is_decoder else "mean"
        meta = RMMetadata(
            kind=cls.kind,
            task=task,
            name=name or task,
            density=TASKS[task][1],
            backbone=str(path),
            is_decoder=is_decoder,
            max_length=max_length,
            use_context=use_context,
            context_selection=context_selection,
            min_words=min_words,
            pooling=pooling if cls.kind == "sequence_preference" else None,
            labels=["no_error", "error"] if cls.kind == "segment_classifier" else None,
            segment_features=segment_features,
            feature_names=names,
        )
        return cls(network=network, tokenizer=tokenizer, metadata=meta, device=device, batch_size=batch_size,
                   feature_encoder=encoder)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None, batch_size: int = 16) -> "HFRewardModel":
        """Load a saved RM folder (see the module docstring for its layout)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        meta = RMMetadata.read(path)
        if meta.kind != cls.kind:
            raise ConfigError(f"{path}: metadata kind is {meta.kind!r}, not {cls.kind!r}; use load_reward_model()")
        head_path = Path(path) / HEAD_FILE
        if not head_path.is_file():
            raise ConfigError(f"{path}: {HEAD_FILE} is missing (incomplete save?)")
        hf_config = AutoConfig.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        backbone = _drop_pooler(AutoModel.from_pretrained(str(path)))
        network = RMNetwork(backbone, _hidden_size(hf_config), cls.out_dim, n_features=_n_features(meta))
        encoder = None
        if meta.segment_features and _needs_encoder(meta.feature_names):
            enc_path = Path(path) / FEATURE_ENCODER_DIR
            if not (enc_path / "config.json").is_file():
                raise ConfigError(f"{path}: {FEATURE_ENCODER_DIR}/ is missing (the model uses segment features)")
            # Its own tokenizer when saved with one (a separate `feature_encoder` folder).
            enc_tok = AutoTokenizer.from_pretrained(str(enc_path)) if (enc_path / "tokenizer_config.json").is_file() \
                else tokenizer
            encoder = _sentence_encoder(AutoModel.from_pretrained(str(enc_path)), enc_tok)
        heads = load_file(str(head_path))
        if network.feature_head is None:
            network.head.load_state_dict(heads)
        else:  # saved with "head." / "feature_head." prefixes
            for prefix, module in (("head.", network.head), ("feature_head.", network.feature_head)):
                module.load_state_dict({k[len(prefix):]: v for k, v in heads.items() if k.startswith(prefix)})
        return cls(network=network, tokenizer=tokenizer, metadata=meta, device=device, batch_size=batch_size,
                   feature_encoder=encoder)

    def save(self, path: str | os.PathLike, *, network=None) -> Path:
        """Write the folder: backbone `save_pretrained`, tokenizer, head, metadata.

        `network` overrides the module to save (e.g. a gathered copy under ZeRO-3).
        """
        from safetensors.torch import save_file

        net = network if network is not None else self.network
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        net.backbone.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        head = {k: v.detach().to("cpu").contiguous() for k, v in net.head.state_dict().items()}
        if net.feature_head is not None:  # prefixed keys; a plain head keeps the original layout
            head = {f"head.{k}": v for k, v in head.items()}
            head.update({f"feature_head.{k}": v.detach().to("cpu").contiguous()
                         for k, v in net.feature_head.state_dict().items()})
        save_file(head, str(out / HEAD_FILE))
        if self.feature_encoder is not None:
            self.feature_encoder.model.save_pretrained(str(out / FEATURE_ENCODER_DIR), safe_serialization=True)
            if self.feature_encoder.tokenizer is not self.tokenizer:
                self.feature_encoder.tokenizer.save_pretrained(str(out / FEATURE_ENCODER_DIR))
        (out / METADATA_FILE).write_text(self.metadata.to_json(), encoding="utf-8")
        return out

    # ------------------------------------------------------------------- helpers
    def _pad(self, seqs: list[list[int]]):
        """Right-pad id lists → (input_ids (B, T), attention_mask (B, T)) on the device."""
        width = max((len(s) for s in seqs), default=1) or 1
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Index batches of `batch_size`, longest first (less padding); order restored by callers."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def train_mode(self, flag: bool = True) -> None:
        self.network.train(flag)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[SegmentRewards]:  # pragma: no cover
        raise NotImplementedError


def _backbone_config_and_tokenizer(path: str, max_length: int) -> tuple[Any, Any]:
    """The backbone folder's HF config and tokenizer (pad token defaulted to EOS / UNK), after
    checking that the folder exists and that `max_length` fits its position embeddings.

    Split out of `HFRewardModel.from_backbone` so its errors come before any weights load.
    """
    from transformers import AutoConfig, AutoTokenizer

    if not Path(path).exists():
        raise ConfigError(f"backbone folder not found: {path} (a local Hugging Face model folder is needed; no network)")
    hf_config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model_max = getattr(hf_config, "max_position_embeddings", None)
    if model_max and max_length > model_max:
        raise ConfigError(f"max_length={max_length} exceeds the backbone's max_position_embeddings={model_max}")
    return hf_config, tokenizer


def _segment_feature_names(kind: str, task: str, segment_features: bool, feature_names: Sequence[str] | None,
                           feature_encoder: str | None) -> list[str] | None:
    """The explicit feature names of a new RM (None without `segment_features`), resolved from
    groups or names; `ConfigError` when the options do not fit together or name no feature.

    Split out of `HFRewardModel.from_backbone`: the option checks of the segment features.
    """
    if segment_features and kind != "segment_classifier":
        raise ConfigError(f"segment_features applies to segment RMs (relevance, factuality), not {task!r}")
    if segment_features:
        from fgrlhf_ray.rewards.segment_features import resolve_feature_names

        try:
            return list(resolve_feature_names(feature_names))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if feature_names or feature_encoder:
        raise ConfigError("feature_names / feature_encoder need segment_features=True")
    return None


def _fresh_network(backbone: nn.Module, hidden_size: int, out_dim: int, *, n_features: int, seed: int) -> RMNetwork:
    """An `RMNetwork` with a seeded random head: `head.weight` (out_dim, H) ~ N(0, 0.02²),
    bias zero. With explicit features (`n_features` F > 0) both `head.weight` and the
    `feature_head` (out_dim, F) start at zero: the untrained model is the feature head's
    prediction alone, which the trainer warm-starts.

    `torch.manual_seed(seed)` runs just before the heads are created, so the same seed gives
    the same head whatever ran before.
    """
    torch.manual_seed(seed)
    network = RMNetwork(backbone, hidden_size, out_dim, n_features=n_features)
    with torch.no_grad():
        network.head.weight.normal_(0.0, 0.02)
        network.head.bias.zero_()
        if network.feature_head is not None:
            network.head.weight.zero_()
            network.feature_head.weight.zero_()
            network.feature_head.bias.zero_()
    return network


def _drop_pooler(backbone: nn.Module) -> nn.Module:
    """Freeze a BERT-style pooler: the RMs read token states only, and a trainable but
    unused parameter would break DDP's gradient reduction. It stays in the module so
    that saved folders load without missing-weight reports."""
    pooler = getattr(backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)
    return backbone


def _n_features(meta: RMMetadata) -> int:
    """Explicit feature columns of a saved model (models saved before `feature_names`: the base ten)."""
    from fgrlhf_ray.rewards.segment_features import BASE_FEATURES

    if not meta.segment_features:
        return 0
    return len(meta.feature_names) if meta.feature_names else len(BASE_FEATURES)


def _needs_encoder(names: Sequence[str] | None) -> bool:
    """Whether explicit features `names` (None: the base ten) need the frozen sentence encoder."""
    from fgrlhf_ray.rewards.segment_features import BASE_FEATURES, needs_embeddings

    return needs_embeddings(names or BASE_FEATURES)


def _sentence_encoder(model: nn.Module, tokenizer):
    from fgrlhf_ray.rewards.segment_features import SentenceEncoder

    return SentenceEncoder(_drop_pooler(model), tokenizer)


def _is_decoder_config(cfg: Any) -> bool:
    """Causal-LM backbone? By its architectures, else by its model type: a type that has a
    causal-LM head but no masked-LM head (Llama, GPT-2 … — not BERT, which has both)."""
    archs = getattr(cfg, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return True
    if getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "is_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = getattr(cfg, "model_type", "")
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _hidden_size(cfg: Any) -> int:
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    raise ConfigError(f"cannot find the hidden size of backbone config {type(cfg).__name__}")


