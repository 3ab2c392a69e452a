"""The PPO critic: a transformer backbone plus a linear value head.

`CriticModel` wraps the *base* model of the policy's architecture (`AutoModel`, e.g.
`LlamaModel`: no LM head) and a `Linear(hidden_size, 1)` value head. It is usually
initialised from the policy / SFT folder (a `*ForCausalLM` checkpoint: `AutoModel`
takes its backbone weights and ignores `lm_head.weight`), with a zero-initialised head
so that V ≡ 0 before the first update.

Shapes (B = batch, S = sequence length):

    forward(sequences (B, S) long, attention_mask (B, S) long) -> values (B, S) float32
    values[:, i] = V(s_i), the value of the state after reading tokens 0..i.

For PPO the value of response token t (sitting at position P + t of a sequence whose
prompt is left-padded to P) is `values[:, P + t - 1]`: the state from which token P + t
is sampled — the same position whose logits give log π(a_t).

On-disk format (`save_pretrained` / `from_pretrained`): the backbone's own
`save_pretrained` files (config.json + safetensors, loadable with `AutoModel`), plus
`value_head.safetensors` (`weight` (1, H), `bias` (1,)) and `fgrlhf_critic.json`
(`{"format": "fgrlhf_critic", "version": 1, "hidden_size": H}`).

Kept free of Ray / DeepSpeed; the learner wraps this module in a DeepSpeed engine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fgrlhf_ray.algo.experience import position_ids_from_attention_mask

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_META_FILE = "fgrlhf_critic.json"
CRITIC_FORMAT = "fgrlhf_critic"


class CriticModel(nn.Module):
    """Backbone (`AutoModel`) + linear value head. See the module docstring for shapes.

    Construct with `CriticModel.from_pretrained(path)` or directly with a backbone
    module whose config has `hidden_size`.
    """

    def __init__(self, *, backbone: nn.Module, value_head: nn.Linear | None = None):
        super().__init__()
        hidden = getattr(backbone.config, "hidden_size", None)
        if hidden is None:
            raise ValueError(
                f"CriticModel: backbone {type(backbone).__name__} has no `config.hidden_size`; "
                "pass a transformers base model (e.g. loaded with AutoModel.from_pretrained)."
            )
        self.backbone = backbone
        if value_head is None:
            value_head = nn.Linear(hidden, 1)
            # Zero init: V ≡ 0 at the start, so the first advantages are the (scaled)
            # returns themselves instead of returns minus random noise.
            nn.init.zeros_(value_head.weight)
            nn.init.zeros_(value_head.bias)
        if value_head.in_features != hidden or value_head.out_features != 1:
            raise ValueError(
                f"CriticModel: value head is Linear({value_head.in_features}, {value_head.out_features}); "
                f"expected Linear({hidden}, 1) for this backbone."
            )
        self.value_head = value_head

    @property
    def config(self):
        """The backbone's HF config (DeepSpeed and callers read `hidden_size` etc. from it)."""
        return self.backbone.config

    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sequences (B, S) long, attention_mask (B, S) {0,1} -> values (B, S) float32.

        `position_ids` defaults to `position_ids_from_attention_mask(attention_mask)`
        (left padding aware). Values at padded positions are computed but meaningless;
        callers mask them.
        """
        if sequences.shape != attention_mask.shape:
            raise ValueError(
                f"CriticModel.forward: sequences {tuple(sequences.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must have the same (B, S) shape."
            )
        if position_ids is None:
            position_ids = position_ids_from_attention_mask(attention_mask)
        out = self.backbone(
            input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = out.last_hidden_state  # (B, S, H)
        # The head runs in the backbone's dtype; values are returned in float32 for the loss.
        return self.value_head(hidden).squeeze(-1).float()  # (B, S)

    # ------------------------------------------------------------------ save / load

    def save_pretrained(
        self, directory: str | os.PathLike, *, state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> Path:
        """Write the backbone (HF format), `value_head.safetensors` and `fgrlhf_critic.json`.

        `state_dict` (keys `backbone.*` and `value_head.*`, as `self.state_dict()` names
        them) overrides the module's own tensors: the learner passes the full weights
        gathered from ZeRO-3 shards, where the module's own parameters are empty.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        sd = dict(state_dict) if state_dict is not None else self.state_dict()
        backbone_sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        head_sd = {k[len("value_head."):]: v for k, v in sd.items() if k.startswith("value_head.")}
        if set(head_sd) != {"weight", "bias"}:
            raise ValueError(
                f"CriticModel.save_pretrained: state_dict has value-head keys {sorted(head_sd)}; "
                "expected value_head.weight and value_head.bias."
            )
        self.backbone.save_pretrained(str(out), state_dict=backbone_sd, safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in head_sd.items()}, str(out / VALUE_HEAD_FILE))
        meta = {"format": CRITIC_FORMAT, "version": 1, "hidden_size": int(self.config.hidden_size)}
        (out / CRITIC_META_FILE).write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None
    ) -> "CriticModel":
        """Load a saved critic, or start a new one from any HF model folder.

        - `path` holds `value_head.safetensors` (a folder written by `save_pretrained`):
          backbone and head are restored.
        - otherwise (e.g. the policy / SFT `*ForCausalLM` folder): the backbone comes from
          `AutoModel.from_pretrained(path)` (the LM head is dropped) and the head is
          zero-initialised.
        """
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"CriticModel.from_pretrained: {path} has no config.json; pass a Hugging Face model "
                "folder (the policy/SFT model to start a new critic, or a folder written by "
                "CriticModel.save_pretrained)."
            )
        from transformers.utils import logging as hf_logging

        kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
        # Loading a *ForCausalLM folder into the base model reports `lm_head.weight` as
        # unexpected; that is the intended drop, so silence the report for this call.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            backbone = AutoModel.from_pretrained(str(path), **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        critic = cls(backbone=backbone)
        head_file = path / VALUE_HEAD_FILE
        if head_file.is_file():
            head = load_file(str(head_file))
            critic.value_head.load_state_dict(head)
        if torch_dtype is not None:
            critic.value_head.to(torch_dtype)
        return critic


def gather_values(values: torch.Tensor, prompt_len: int, num_actions: int) -> torch.Tensor:
    """Per-response-token values from per-position values.

    values: (B, P+T) from `CriticModel.forward`; returns (B, T) with
    `out[:, t] = values[:, P + t - 1]` (the state before response token t is chosen).
    """
    if values.dim() != 2 or values.size(1) != prompt_len + num_actions:
        raise ValueError(
            f"gather_values: values {tuple(values.shape)} do not match P={prompt_len} + T={num_actions}."
        )
    if prompt_len < 1:
        raise ValueError("gather_values: the prompt must have at least one token (P >= 1).")
    return values[:, prompt_len - 1 : prompt_len - 1 + num_actions]
