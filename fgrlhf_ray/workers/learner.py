"""The PPO learner: DeepSpeed engines for the policy and the critic, in one process.

`PPOLearner` is one data-parallel rank. It is a plain class (Ray wrapping lives in
`fgrlhf_ray.actors.learner`): a single process can use it directly (tests, debugging),
and `LearnerGroup` runs M of them as Ray actors forming one torch.distributed group.

What one rank holds:
- policy: `AutoModelForCausalLM` (optionally wrapped with PEFT LoRA) in a DeepSpeed
  engine with ZeRO stage 0–3, optional optimizer offload to CPU, optional bf16;
- critic: `fgrlhf_ray.workers.critic.CriticModel` (its own backbone + value head) in a second
  engine with its own optimiser; its loss is `critic_loss` (`value_loss_coef` × the clipped
  squared error).

Batch sizes (all counts are samples):
- `minibatch_size` samples (over ALL ranks) per optimiser step; each rank takes
  `minibatch_size / world_size` of them from its own shard;
- forward/backward passes of `micro_batch_size` samples; the gradient-accumulation
  steps are derived: `minibatch_size / world_size / micro_batch_size` (an explicit
  `grad_accum_steps` must agree with it);
- `ppo_epochs` passes over the rank's shard per `train_step`, reshuffled each pass.
These rules are one function, `fgrlhf_ray.config.batch_geometry`: the config validator runs it
before Ray starts, the learner again on its own world size and on every batch (a guard).

Layout of the tensors (see `fgrlhf_ray.algo.experience`): sequences (B, P+T) with the
prompt left-padded to P and the response right-padded to T; response token t sits at
column P + t and is predicted by the logits (and valued by the critic) at P + t − 1.
Positions are counted over real tokens only (`position_ids_from_attention_mask`), as
vLLM does, so learner and sampler log-probs agree on left-padded prompts. Log-probs use
the logits divided by the rollout's sampling temperature τ (`logprob_temperature`), so that
the ratio and the gradient are those of the distribution the engines sampled from, as
OpenRLHF, veRL and TRL do. With τ 1 instead, sampling at 0.7 and learning π at 1 made the
entropy explode (0.76 → 3.5 nats in 28 GRPO steps on the demo) while the same run at τ 0.7
climbed its reward (docs/demo_experiments.md §7). Only the weight-sync probe compares raw
(τ 1) log-probs, because vLLM's probe returns those.

Dropout: every forward runs with the modules in eval mode (dropout off, gradients still
flow), so the PPO ratio is exactly 1 on the first minibatch of each step.

DeepSpeed on CPU: `DS_ACCELERATOR=cpu` must be in the environment before `deepspeed`
is imported; `PPOLearner` sets it when it is unset and no CUDA device is visible, and
uses the gloo backend on CPU (NCCL on GPU). Measured with deepspeed 0.19.8, torch
2.13 (CPU), 2 cores: ZeRO 0, 2 and 3 train with torch's AdamW as client optimizer;
optimizer offload (stages 2 and 3) works with `DeepSpeedCPUAdam`, JIT-compiled into
~/.cache/torch_extensions on first use (seconds; needs a C++ compiler). A tiny Llama
(2 layers, hidden 128), B=16, P=16, T=64, 4 PPO epochs, minibatch 8, micro-batch 4,
one rank: train_step 0.40 s (ZeRO-0), 0.50 s (ZeRO-2), 1.1 s (ZeRO-3), 0.44 / 1.2 s
with offload. NCCL / GPU paths are not exercised there.

The log-prob / value helpers at the top of this module import no deepspeed, so the
reference policy (`fgrlhf_ray.workers.reference`) reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fgrlhf_ray.algo.experience import gather_response_logprobs, pad_rollout, position_ids_from_attention_mask
from fgrlhf_ray.algo.kl import kl_loss
from fgrlhf_ray.algo.losses import logprobs_from_logits, ppo_policy_loss, ppo_value_loss
from fgrlhf_ray.config import batch_geometry
from fgrlhf_ray.infra.ports import free_port
from fgrlhf_ray.workers.critic import CriticModel, gather_values
from fgrlhf_ray.types import Experience, RolloutBatch

POLICY_DIR = "policy"
CRITIC_DIR = "critic"
DEEPSPEED_DIR = "deepspeed"
LEARNER_STATE_FILE = "learner_state.json"
DS_TAG = "state"


# --------------------------------------------------------------------------- inputs


@dataclass
class ForwardBatch:
    """The tensors a forward pass needs (B samples, prompt length P, response length T)."""

    sequences: torch.Tensor  # (B, P+T) long
    attention_mask: torch.Tensor  # (B, P+T) long
    action_mask: torch.Tensor  # (B, T) float

    @property
    def prompt_len(self) -> int:
        return self.sequences.shape[1] - self.action_mask.shape[1]

    def __len__(self) -> int:
        return self.sequences.shape[0]


def as_forward_batch(batch: Any, *, pad_token_id: int | None = None) -> ForwardBatch:
    """Accept a `RolloutBatch` (padded here with `pad_rollout`), a `PaddedRollout`, an
    `Experience`, or a mapping with keys sequences / attention_mask / action_mask."""
    if isinstance(batch, ForwardBatch):
        return batch
    if isinstance(batch, RolloutBatch):
        if pad_token_id is None:
            raise ValueError("as_forward_batch: a RolloutBatch needs pad_token_id to be padded.")
        batch = pad_rollout(batch, pad_token_id=pad_token_id)
    get = batch.__getitem__ if isinstance(batch, Mapping) else lambda k: getattr(batch, k)
    try:
        seq, attn, act = get("sequences"), get("attention_mask"), get("action_mask")
    except (KeyError, AttributeError) as e:
        raise TypeError(
            f"as_forward_batch: {type(batch).__name__} has no {e}; pass a RolloutBatch, PaddedRollout, "
            "Experience or a mapping with sequences / attention_mask / action_mask tensors."
        ) from None
    if seq.dim() != 2 or attn.shape != seq.shape or act.dim() != 2 or act.shape[0] != seq.shape[0]:
        raise ValueError(
            f"as_forward_batch: shapes sequences {tuple(seq.shape)}, attention_mask {tuple(attn.shape)}, "
            f"action_mask {tuple(act.shape)} do not fit (B, P+T), (B, P+T), (B, T)."
        )
    if act.shape[1] >= seq.shape[1]:
        raise ValueError(
            f"as_forward_batch: T={act.shape[1]} response columns leave no prompt column in sequences "
            f"of length {seq.shape[1]}; every sample needs a prompt of at least one token."
        )
    return ForwardBatch(sequences=seq.long(), attention_mask=attn.long(), action_mask=act.float())


def causal_lm_response_logprobs(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    num_actions: int,
    *,
    return_logits: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a causal LM on (B, P+T) sequences; return (B, T) response log-probs (float32).

    `out[b, t] = log softmax(logits[b, P+t-1] / τ)[sequences[b, P+t]]`, positions counted
    over real tokens, τ = `temperature` (the sampling temperature). With `return_logits`, also
    the (B, T, V) logits / τ at the response positions (for the entropy statistic), else None.
    """
    if temperature <= 0:
        raise ValueError(f"causal_lm_response_logprobs: temperature must be > 0, got {temperature}")
    position_ids = position_ids_from_attention_mask(attention_mask)
    prompt_len = sequences.shape[1] - num_actions
    if accepts_logits_to_keep(model):
        # Only the T+1 last positions' logits (P−1 … P+T−1): the vocabulary projection and its
        # backward skip the prompt, which is most of every sequence here (about a fifth of the
        # learn phase's time on the demo policy; benchmarks/README.md "learn phase").
        logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False, logits_to_keep=num_actions + 1).logits  # (B, T+1, V)
        resp_logits = logits[:, :num_actions]  # (B, T, V): position P−1+t predicts response token t
    else:
        logits = model(
            input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits  # (B, P+T, V)
        resp_logits = logits[:, prompt_len - 1 : -1]
    if temperature != 1.0:
        resp_logits = resp_logits / temperature
    logprobs = logprobs_from_logits(resp_logits, sequences[:, prompt_len:])
    return logprobs, (resp_logits if return_logits else None)


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the causal LM under `model` (a DeepSpeed engine, a PEFT wrapper or the HF
    model itself) takes `logits_to_keep` (HF's LMs do since transformers 4.50)."""
    while True:
        inner = getattr(model, "module", None)  # DeepSpeedEngine
        if inner is None and hasattr(model, "get_base_model"):  # peft.PeftModel
            inner = model.get_base_model()
        if inner is None or inner is model:
            break
        model = inner
    return _forward_takes_logits_to_keep(type(model))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    # Once per class, not per micro-batch: the forward passes call this on every call.
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def trim_padding(attention_mask: torch.Tensor, num_actions: int) -> tuple[slice, int]:
    """The columns of a micro-batch worth computing: (column slice, T' response columns kept).

    attention_mask: (b, P+T) of a `pad_rollout` layout (prompts left-padded, responses right-
    padded). Left columns that are padding in every row and right columns past every row's
    last response token change no real token's log-prob or value (they are masked, and
    positions come from the mask), so the forward and backward passes skip them. On the demo's
    batch a quarter of the tokens are such padding. T' ≥ 1; column P−1 (it predicts the first
    response token) is always kept.
    """
    S = attention_mask.shape[1]
    P = S - num_actions
    used = attention_mask.bool().any(0).nonzero().flatten()  # (k,) columns with a real token
    first = min(int(used[0]), P - 1) if len(used) else P - 1
    last = max(int(used[-1]), P) if len(used) else P
    return slice(first, last + 1), last + 1 - P


def pad_right(x: torch.Tensor, width: int) -> torch.Tensor:
    """(b, T') → (b, width) with zeros on the right (the response padding `trim_padding` cut)."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def trimmed_micro_batches(fb: "ForwardBatch", size: int):
    """Yield (sequences (b, S'), attention_mask (b, S'), T') for each micro-batch of `size` rows of
    `fb`, trimmed of the padding columns all its rows share (`trim_padding`): the no-grad
    forward passes of the learner's values phase and of the reference run on these."""
    T = fb.action_mask.shape[1]
    for sl in micro_slices(len(fb), size):
        cols, t = trim_padding(fb.attention_mask[sl], T)
        yield fb.sequences[sl, cols], fb.attention_mask[sl, cols], t


def micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def default_pad_token_id(config) -> int:
    """The pad id a model folder implies: config.pad_token_id, else EOS, else 0.

    Padding is masked everywhere, so any valid id works, but the controller, learner
    and reference must agree (they pad the same RolloutBatch independently).
    """
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def mean_stats(rows) -> dict[str, float]:
    """Average a list of stats dicts key by key (a key counts only where it is present)."""
    keys = sorted({k for r in rows for k in r})
    return {k: float(sum(r[k] for r in rows if k in r) / sum(k in r for r in rows)) for k in keys}


# --------------------------------------------------------------------------- LoRA


def lora_scalings(model: torch.nn.Module, adapter: str = "default") -> dict[str, float]:
    """{module name: LoRA scaling α/r} for every PEFT LoRA layer of `model`."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.scaling:
            if getattr(module, "fan_in_fan_out", False):
                raise NotImplementedError(
                    f"LoRA layer {name} uses fan_in_fan_out (Conv1D weights, e.g. GPT-2); merging it "
                    "for weight sync is not implemented. Target nn.Linear modules instead."
                )
            out[name] = float(module.scaling[adapter])
    return out


def merge_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor], scalings: Mapping[str, float], adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """A PEFT model's full state dict → the plain HF state dict of the merged model.

    For each LoRA layer `m` (key prefix from `scalings`):
        W_m = W_base + scaling_m · B_m @ A_m      (B: (out, r), A: (r, in); computed in fp32)
    `lora_A/lora_B` keys are dropped, `.base_layer.` is removed from names and the PEFT
    prefix `base_model.model.` is stripped. Inputs are not modified.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key or ".lora_embedding_" in key or ".lora_magnitude" in key:
            continue
        name = key
        if ".base_layer." in key:
            prefix, leaf = key.split(".base_layer.", 1)
            if leaf == "weight":
                if prefix not in scalings:
                    raise KeyError(f"merge_lora_state_dict: no LoRA scaling for layer {prefix!r}.")
                a = state_dict[f"{prefix}.lora_A.{adapter}.weight"].float()
                b = state_dict[f"{prefix}.lora_B.{adapter}.weight"].float()
                value = (value.float() + scalings[prefix] * (b @ a)).to(value.dtype)
            name = f"{prefix}.{leaf}"
        out[name.removeprefix("base_model.model.")] = value
    return out


# --------------------------------------------------------------------------- helpers


def _setup_deepspeed_env() -> None:
    """DS_ACCELERATOR must be set before deepspeed is first imported."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    if "deepspeed" in sys.modules and os.environ.get("DS_ACCELERATOR") == "cpu":
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            raise RuntimeError(
                "deepspeed was imported before DS_ACCELERATOR=cpu was set, so it picked the "
                f"{get_accelerator().device_name()!r} accelerator. Set DS_ACCELERATOR=cpu in the environment "
                "of the process (for Ray actors: runtime_env env_vars) before anything imports deepspeed."
            )


def _init_distributed() -> None:
    """Join (or create) the default torch.distributed group from the MASTER_*/RANK/WORLD_SIZE env.

    A single process without those variables becomes a world of one on a free local port.
    """
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port("127.0.0.1"))}
        )
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"PPOLearner: WORLD_SIZE is set but {missing} are not; set all of MASTER_ADDR, MASTER_PORT, "
            "RANK, LOCAL_RANK, WORLD_SIZE (LearnerGroup does this for its actors)."
        )
    from deepspeed.accelerator import get_accelerator

    backend = "gloo" if get_accelerator().device_name() == "cpu" else "nccl"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def _grad_norm(parameters) -> float:
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _copy_tokenizer(src: str, dst: Path) -> None:
    """Save `src`'s tokenizer into `dst` so the HF folder is self-contained (vLLM needs it)."""
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(src).save_pretrained(str(dst))
    except (OSError, ValueError):  # a model folder without a tokenizer: nothing to copy
        pass


def _check_engine_settings(settings) -> None:
    """The DeepSpeed options a `LearnerSettings` may combine."""
    if settings.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"PPOLearner: zero_stage must be 0, 1, 2 or 3, got {settings.zero_stage}.")
    if settings.offload_optimizer and settings.zero_stage == 0:
        raise ValueError(
            "PPOLearner: offload_optimizer=True needs ZeRO stage 1, 2 or 3 (DeepSpeed offloads ZeRO "
            "optimizer partitions); set learner.zero_stage >= 1 or offload_optimizer=False."
        )


# --------------------------------------------------------------------------- learner


@dataclass(frozen=True)
class LoRASettings:
    """PEFT LoRA adapters on the policy (config `learner.lora`); the critic trains in full."""

    r: int = 8  # rank
    alpha: float = 16.0  # scaling α (the adapter's output is scaled by α / r)
    dropout: float = 0.0  # dropout on the LoRA path
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # module names given adapters


@dataclass(frozen=True)
class LearnerSettings:
    """Everything a `PPOLearner` rank is built from: the same on every rank, picklable (it travels
    to the Ray actors). `fgrlhf_ray.launch.trainer.learner_settings` builds it from a `RunConfig`;
    each field keeps its config name (config path in brackets)."""

    policy_path: str  # HF folder of the initial *ForCausalLM policy [policy.model_path]
    critic_path: str | None = None  # CriticModel.save_pretrained folder or any HF model folder (backbone;
    #   new zero head); None = policy_path [learner.critic.model_path]
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3, both engines [learner.zero_stage]
    offload_optimizer: bool = False  # optimizer states on CPU (needs ZeRO >= 1) [learner.offload_optimizer]
    bf16: bool = False  # bfloat16 mixed precision, fp32 master weights [learner.bf16]
    lr: float = 1e-5  # policy Adam learning rate (no weight decay) [ppo.lr]
    critic_lr: float = 1e-5  # critic Adam learning rate [ppo.critic_lr]
    adam_eps: float = 1e-5  # Adam ε, both optimisers [ppo.adam_eps]
    minibatch_size: int = 8  # samples per optimiser step over all ranks [ppo.minibatch_size]
    micro_batch_size: int | None = 4  # samples per forward/backward on one rank; None = derived
    #   (`fgrlhf_ray.config.batch_geometry`) [learner.micro_batch_size]
    grad_accum_steps: int | None = None  # None (derived) or minibatch / (world × micro) [learner.grad_accum_steps]
    ppo_epochs: int = 4  # passes over the rank's shard per train_step [ppo.ppo_epochs]
    policy_clip: float = 0.2  # PPO ratio clip ε [ppo.policy_clip]
    value_clip: float | None = 0.2  # value clip around the old value; None = unclipped [ppo.value_clip]
    dual_clip: float | None = None  # dual-clip c > 1, or None [ppo.dual_clip]
    value_loss_coef: float = 0.5  # c in the critic loss c · max((V−R)², (V_clip−R)²) [ppo.value_loss_coef]
    loss_aggregation: str = "token_mean"  # "token_mean" | "seq_mean" (`algo.losses.aggregate`)
    max_grad_norm: float = 1.0  # gradient clipping, both engines [ppo.max_grad_norm]
    lora: LoRASettings | None = None  # train LoRA adapters on the policy; None = full fine-tuning
    seed: int = 0  # seeds torch and the minibatch shuffling [seed]
    pad_token_id: int | None = None  # pad id for RolloutBatch inputs; None = the policy config's
    use_critic: bool = True  # build the critic (GAE); False for the critic-free estimators: no critic
    #   engine, values, value loss or critic checkpoint [ppo.advantage_estimator == "gae"]
    kl_loss_coef: float = 0.0  # β of a KL-to-reference term in the policy loss; 0 = none (the KL is in
    #   the rewards) [ppo.kl_coef when ppo.kl_in is "loss"]
    kl_loss_estimator: str = "k3"  # estimator of that term (`algo.kl.KL_ESTIMATORS`)
    logprob_temperature: float = 1.0  # τ: log-probs of softmax(logits / τ), the distribution the
    #   engines sample from [rollout.sampling.temperature]


# ½ in `ppo_value_loss`'s ½ · max(...) squared error: the critic loss is rescaled from it.
_VALUE_LOSS_HALF = 0.5


def critic_loss(values, old_values, returns, mask, *, value_clip: float | None, value_loss_coef: float,
                aggregation: str) -> tuple[torch.Tensor, dict[str, float]]:
    """The critic's loss c · aggregate(max((V − R)², (V_clip − R)²)), c = `value_loss_coef`.

    All tensors (B, T), mask 1 on real response tokens. It is `ppo_value_loss` (which carries
    the ½) scaled by c / ½, so c = 0.5 is `ppo_value_loss` itself; stats["value_loss"] is the
    scaled loss, the other stats are `ppo_value_loss`'s.
    """
    loss, stats = ppo_value_loss(values, old_values, returns, mask, value_clip=value_clip, aggregation=aggregation)
    scale = value_loss_coef / _VALUE_LOSS_HALF
    return loss * scale, {**stats, "value_loss": stats["value_loss"] * scale}


class PPOLearner:
    """One data-parallel rank of the PPO learner (policy + critic DeepSpeed engines).

    Built from one `LearnerSettings` (keyword `settings`); the rank and world size come from
    the torch.distributed environment (`_init_distributed`), the batch arithmetic from
    `fgrlhf_ray.config.batch_geometry` (the check the config validator runs too).
    """

    def __init__(self, *, settings: LearnerSettings) -> None:
        _setup_deepspeed_env()
        import deepspeed  # noqa: F401  (after DS_ACCELERATOR)

        self.settings = settings
        _check_engine_settings(settings)
        self._join_process_group()
        try:
            self.geometry = batch_geometry(
                rollout_batch=None, minibatch_size=settings.minibatch_size, world_size=self.world_size,
                micro_batch_size=settings.micro_batch_size, grad_accum_steps=settings.grad_accum_steps)
        except ValueError as e:
            raise ValueError(f"PPOLearner: {e}") from None
        self.train_steps = 0  # completed train_step calls (for shuffling seeds and resume)
        torch.manual_seed(settings.seed)
        self.policy_engine = self._build_policy()
        self.critic_engine = self._build_critic() if settings.use_critic else None
        for engine in self.engines:
            engine.eval()  # dropout off; see module docstring

    def _join_process_group(self) -> None:
        """Join the torch.distributed group; set rank, world_size and device."""
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        _init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        acc = get_accelerator()
        self.device = torch.device("cpu") if acc.device_name() == "cpu" else torch.device(
            acc.device_name(), acc.current_device())

    def _build_policy(self):
        """The policy's engine (LoRA-wrapped if configured); sets policy_config and pad_token_id."""
        from transformers import AutoModelForCausalLM

        s = self.settings
        policy = AutoModelForCausalLM.from_pretrained(s.policy_path, dtype=torch.float32)
        self.policy_config = policy.config
        self.pad_token_id = s.pad_token_id if s.pad_token_id is not None else default_pad_token_id(policy.config)
        self._lora_scalings: dict[str, float] = {}
        if s.lora:
            policy = self._wrap_lora(policy, s.lora)
            self._lora_scalings = lora_scalings(policy)
        return self._make_engine(policy, lr=s.lr, eps=s.adam_eps)

    def _build_critic(self):
        critic = CriticModel.from_pretrained(self.settings.critic_path or self.settings.policy_path,
                                             torch_dtype=torch.float32)
        return self._make_engine(critic, lr=self.settings.critic_lr, eps=self.settings.adam_eps)

    @property
    def zero_stage(self) -> int:
        return self.settings.zero_stage

    @property
    def micro_batch_size(self) -> int:
        return self.geometry.micro_batch_size

    @property
    def grad_accum_steps(self) -> int:
        return self.geometry.grad_accum_steps

    @property
    def minibatch_per_rank(self) -> int:
        return self.geometry.minibatch_per_rank

    @property
    def engines(self) -> list:
        """The DeepSpeed engines this rank trains: the policy's, and the critic's when there is one."""
        return [e for e in (self.policy_engine, self.critic_engine) if e is not None]

    # ---------------------------------------------------------------- construction

    @staticmethod
    def _wrap_lora(model, lora: LoRASettings):
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
        return get_peft_model(model, cfg)

    def _ds_config(self, num_params: int) -> dict[str, Any]:
        zero: dict[str, Any] = {"stage": self.zero_stage}
        if self.zero_stage in (1, 2):
            # DeepSpeed's default buckets (5e8 elements = 2 GB in fp32) are allocated up
            # front; a model smaller than that only needs one bucket of its own size.
            bucket = int(min(5e8, max(1e6, num_params)))
            zero.update(reduce_bucket_size=bucket, allgather_bucket_size=bucket)
        if self.settings.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": self.device.type == "cuda"}
        if self.zero_stage == 3:
            # We gather weights ourselves (GatheredParameters) for sync and HF saves.
            zero["stage3_gather_16bit_weights_on_model_save"] = False
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum_steps,
            "train_batch_size": self.micro_batch_size * self.grad_accum_steps * self.world_size,
            "gradient_clipping": self.settings.max_grad_norm,
            "zero_optimization": zero,
            "bf16": {"enabled": bool(self.settings.bf16)},
            "steps_per_print": 10**12,
            "wall_clock_breakdown": False,
            "zero_allow_untested_optimizer": True,
        }

    def _make_engine(self, module: torch.nn.Module, *, lr: float, eps: float):
        import deepspeed

        params = [p for p in module.parameters() if p.requires_grad]
        if self.settings.offload_optimizer:
            # ZeRO-Offload steps the optimizer on CPU and insists on DeepSpeedCPUAdam.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=lr, eps=eps, betas=(0.9, 0.999), weight_decay=0.0,
                                         adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=lr, eps=eps, betas=(0.9, 0.999), weight_decay=0.0)
        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=self._ds_config(sum(p.numel() for p in module.parameters())))
        return engine

    # ---------------------------------------------------------------- forward passes

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def _policy_logprobs(self, seq, attn, num_actions, *, return_logits=False, temperature=None):
        """Response log-probs at the sampling temperature (`temperature` overrides it: the probe's 1)."""
        tau = self.settings.logprob_temperature if temperature is None else temperature
        return causal_lm_response_logprobs(self.policy_engine, seq, attn, num_actions, return_logits=return_logits,
                                           temperature=tau)

    def _critic_values(self, seq, attn, num_actions) -> torch.Tensor:
        values = self.critic_engine(seq, attn)  # (B, P+T)
        return gather_values(values, seq.shape[1] - num_actions, num_actions)  # (B, T)

    @torch.no_grad()
    def compute_logprobs_and_values(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log π_θ(a_t) and V(s_t) for every response token, without gradients.

        batch: RolloutBatch / PaddedRollout / Experience / mapping (see `as_forward_batch`).
        Returns (logprobs (B, T) float32, values (B, T) float32 or None without a critic)
        on CPU, both 0 where action_mask is 0. Under ZeRO-3 every rank must call this with the same number of
        micro-batches (LearnerGroup gives every rank an equal shard).
        """
        fb = as_forward_batch(batch, pad_token_id=self.pad_token_id)
        T = fb.action_mask.shape[1]
        out_lp, out_v = [], []
        for seq, attn, t in trimmed_micro_batches(fb, self.micro_batch_size):
            seq, attn = self._to_device(seq), self._to_device(attn)
            lp, _ = self._policy_logprobs(seq, attn, t)
            out_lp.append(pad_right(lp.float().cpu(), T))
            if self.critic_engine is not None:
                out_v.append(pad_right(self._critic_values(seq, attn, t).float().cpu(), T))
        mask = fb.action_mask
        return torch.cat(out_lp) * mask, (torch.cat(out_v) * mask if out_v else None)

    @torch.no_grad()
    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """log π_θ of each token of `response_ids` after `prompt_ids` (one unpadded sequence), from
        the raw logits (τ 1, whatever the sampling temperature).

        The value vLLM's `probe_logprobs` must match after a weight sync. Under ZeRO-3
        every rank must call it (the forward gathers parameters collectively).
        """
        if not prompt_ids or not response_ids:
            raise ValueError("probe_logprobs: prompt_ids and response_ids must both be non-empty.")
        seq = torch.tensor([list(prompt_ids) + list(response_ids)], dtype=torch.long)
        lp, _ = self._policy_logprobs(
            self._to_device(seq), self._to_device(torch.ones_like(seq)), len(response_ids), temperature=1.0
        )
        return [float(x) for x in lp[0].cpu()]

    # ---------------------------------------------------------------- training

    def train_step(self, experience: Experience) -> dict[str, float]:
        """`ppo_epochs` passes over this rank's shard in shuffled minibatches.

        experience: an `Experience` of B samples (B a multiple of minibatch_size / world_size;
        every rank must get the same B — each optimiser step all-reduces gradients).
        Per micro-batch: the policy loss (`ppo_policy_loss` on log π_θ vs old_logprobs
        with `advantages`) goes through the policy engine, the clipped value loss
        (`ppo_value_loss` on V vs `returns`) through the critic engine; DeepSpeed
        accumulates `grad_accum_steps` micro-batches (loss scaled by 1/accum), clips to
        `max_grad_norm`, averages gradients over ranks and steps.

        Returns the means over micro-batches of: policy_loss, value_loss, approx_kl,
        approx_kl_k1, clip_frac, dual_clip_frac, ratio_mean, ratio_max, entropy,
        value_clip_frac, value_mean, returns_mean, value_explained_var; the means over
        optimiser steps of grad_norm (policy, before clipping) and critic_grad_norm; and
        optimizer_steps, train_time_s.
        """
        t0 = time.perf_counter()
        exp = experience
        B, T = exp.action_mask.shape
        s = self.settings
        try:  # the config's check, on the real batch: every rank gets an equal shard of B × world_size
            batch_geometry(rollout_batch=B * self.world_size, minibatch_size=s.minibatch_size,
                           world_size=self.world_size, micro_batch_size=s.micro_batch_size,
                           grad_accum_steps=s.grad_accum_steps)
        except ValueError as e:
            raise ValueError(f"PPOLearner.train_step: this rank got B={B} samples; {e}") from None
        needed = ("old_logprobs", "advantages") + (("old_values", "returns") if self.critic_engine else ())
        needed += ("ref_logprobs",) if s.kl_loss_coef else ()
        for name in needed:
            if getattr(exp, name) is None or getattr(exp, name).shape != (B, T):
                raise ValueError(
                    f"PPOLearner.train_step: experience.{name} is "
                    f"{None if getattr(exp, name) is None else tuple(getattr(exp, name).shape)}, "
                    f"expected shape (B, T) = {(B, T)} like action_mask."
                )
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + self.train_steps)
        micro_rows: list[dict[str, float]] = []
        step_rows: list[dict[str, float]] = []
        steps_before = self.policy_engine.global_steps
        for _ in range(s.ppo_epochs):
            perm = torch.randperm(B, generator=gen)
            for mb in micro_slices(B, self.minibatch_per_rank):
                for micro in micro_slices(self.minibatch_per_rank, self.micro_batch_size):
                    idx = perm[mb][micro]
                    row, grad_norms = self._train_micro_batch(exp, idx, T)
                    micro_rows.append(row)
                    if grad_norms is not None:
                        step_rows.append(grad_norms)
        self.train_steps += 1
        stats = mean_stats(micro_rows)
        stats.update(mean_stats(step_rows))
        stats["optimizer_steps"] = float(self.policy_engine.global_steps - steps_before)
        stats["train_time_s"] = time.perf_counter() - t0
        return stats

    def _train_micro_batch(self, exp: Experience, idx: torch.Tensor, T: int):
        s = self.settings
        cols, T = trim_padding(exp.attention_mask[idx], T)  # every per-token tensor below is (b, T')

        def per_token(x: torch.Tensor) -> torch.Tensor:
            return self._to_device(x[idx, :T].float())

        seq = self._to_device(exp.sequences[idx][:, cols].long())
        attn = self._to_device(exp.attention_mask[idx][:, cols].long())
        mask = per_token(exp.action_mask)
        boundary = self.policy_engine.is_gradient_accumulation_boundary()

        logprobs, resp_logits = self._policy_logprobs(seq, attn, T, return_logits=True)
        p_loss, p_stats = ppo_policy_loss(
            logprobs,
            per_token(exp.old_logprobs),
            per_token(exp.advantages),
            mask,
            policy_clip=s.policy_clip,
            dual_clip=s.dual_clip,
            aggregation=s.loss_aggregation,
            logits=resp_logits,
        )
        del resp_logits
        if s.kl_loss_coef:  # ppo.kl_in: loss — the KL to the reference as a loss term (GRPO)
            k_loss, k_stats = kl_loss(logprobs, per_token(exp.ref_logprobs), mask,
                                      estimator=s.kl_loss_estimator, aggregation=s.loss_aggregation)
            p_loss = p_loss + s.kl_loss_coef * k_loss
            p_stats = {**p_stats, **k_stats}
        self.policy_engine.backward(p_loss)
        p_norm = self._step(self.policy_engine, boundary)
        if self.critic_engine is None:
            return p_stats, ({"grad_norm": p_norm} if boundary else None)

        values = self._critic_values(seq, attn, T)
        v_loss, v_stats = critic_loss(
            values,
            per_token(exp.old_values),
            per_token(exp.returns),
            mask,
            value_clip=s.value_clip,
            value_loss_coef=s.value_loss_coef,
            aggregation=s.loss_aggregation,
        )
        self.critic_engine.backward(v_loss)
        c_norm = self._step(self.critic_engine, boundary)
        norms = {"grad_norm": p_norm, "critic_grad_norm": c_norm} if boundary else None
        return {**p_stats, **v_stats}, norms

    def _step(self, engine, boundary: bool) -> float:
        """engine.step(); at an accumulation boundary return the pre-clipping grad norm."""
        # ZeRO / bf16 optimizers record the global norm; stage 0 fp32 clips without
        # keeping it, so measure it here (gradients are already all-reduced at the boundary).
        measure = boundary and self.zero_stage == 0 and not self.settings.bf16
        own = _grad_norm(engine.module.parameters()) if measure else None
        engine.step()
        if not boundary:
            return math.nan
        if own is not None:
            return own
        norm = engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    # ---------------------------------------------------------------- weights

    def _full_state_dict(self, engine) -> dict[str, torch.Tensor]:
        """The module's full state dict as CPU tensors, on every rank.

        Under ZeRO-3 every rank must call this: parameters are gathered collectively
        (`deepspeed.zero.GatheredParameters`), one module at a time to bound memory.
        """
        module = engine.module
        if self.zero_stage != 3:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for mod_name, mod in module.named_modules():
            params = list(mod.parameters(recurse=False))
            prefix = f"{mod_name}." if mod_name else ""
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                for name, p in mod.named_parameters(recurse=False):
                    out[prefix + name] = p.detach().cpu().clone()
            for name, b in mod.named_buffers(recurse=False):
                if name not in mod._non_persistent_buffers_set:
                    out[prefix + name] = b.detach().cpu().clone()
        # A tied parameter appears once in named_parameters; state_dict names it twice.
        for key in module.state_dict().keys():
            if key not in out:
                source = self._tied_source(module, key)
                if source is not None and source in out:
                    out[key] = out[source]
        return out

    @staticmethod
    def _tied_source(module: torch.nn.Module, key: str) -> str | None:
        target = dict(module.named_parameters(remove_duplicate=False)).get(key)
        if target is None:
            return None
        for name, p in module.named_parameters():
            if p is target:
                return name
        return None

    def _policy_hf_state_dict(self) -> dict[str, torch.Tensor]:
        sd = self._full_state_dict(self.policy_engine)
        if self.settings.lora:
            sd = merge_lora_state_dict(sd, self._lora_scalings)
        return sd

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        """The policy's full HF state dict (LoRA merged), CPU tensors, for weight sync.

        Names are the plain `*ForCausalLM` ones (`model.layers.0...`, `lm_head.weight`);
        a tied lm_head appears under both names (`prepare_state_dict` checks that).
        Every rank returns it (under ZeRO-3 every rank must call this).
        """
        return self._policy_hf_state_dict()

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(getattr(self.policy_config, "tie_word_embeddings", False))

    def serialized_weights_for_sync(self, dtype: torch.dtype | None = None) -> bytes:
        """safetensors bytes of `state_dict_for_sync()` (what `RolloutGroup.sync_weights` loads)."""
        from fgrlhf_ray.weight_sync import serialize_state_dict

        return serialize_state_dict(self.state_dict_for_sync(), tie_word_embeddings=self.tie_word_embeddings,
                                    dtype=dtype)

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, directory: str | os.PathLike) -> str:
        """Write `directory/policy` (HF, LoRA merged, with tokenizer), `directory/critic`
        (`CriticModel.save_pretrained`), `directory/deepspeed/{policy,critic}` (DeepSpeed
        engine + optimizer states, one file set per rank) and `learner_state.json`.

        Every rank must call it; with several nodes `directory` must be on a filesystem
        all ranks share. Returns `directory`.
        """
        import torch.distributed as dist

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        policy_sd = self._policy_hf_state_dict()
        critic_sd = self._full_state_dict(self.critic_engine) if self.critic_engine else None
        if self.rank == 0:
            self._save_hf_policy(out / POLICY_DIR, policy_sd)
            if critic_sd is not None:
                self.critic_engine.module.save_pretrained(out / CRITIC_DIR, state_dict=critic_sd)
            (out / LEARNER_STATE_FILE).write_text(
                json.dumps({"train_steps": self.train_steps, "world_size": self.world_size,
                            "zero_stage": self.zero_stage, "lora": self._lora_record(),
                            "critic": self.critic_engine is not None}, indent=2)
            )
        del policy_sd, critic_sd
        from fgrlhf_ray.infra.rng import capture_rng_state

        # Each rank's RNG states travel in its own DeepSpeed client state (dropout etc.).
        client = {"train_steps": self.train_steps, "rng": capture_rng_state()}
        for engine, name in self._engines_by_dir():
            engine.save_checkpoint(str(out / DEEPSPEED_DIR / name), tag=DS_TAG, client_state=client)
        dist.barrier()
        return str(out)

    def _save_hf_policy(self, out: Path, state_dict: dict[str, torch.Tensor]) -> None:
        from transformers import AutoModelForCausalLM

        out.mkdir(parents=True, exist_ok=True)
        # A fresh CPU model of the same config (on the meta device: no memory) is saved
        # with the gathered weights, so ZeRO-3 placeholders and PEFT wrappers never reach
        # transformers' save logic.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.policy_config)
        model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
        _copy_tokenizer(self.settings.policy_path, out)

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        """Restore both engines (weights + optimizer states) from `save_checkpoint`'s folder.

        The learner must have been built with the same ZeRO stage, world size and LoRA
        setting (DeepSpeed's partitioned optimizer states depend on them).
        """
        d = Path(directory)
        meta_file = d / LEARNER_STATE_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"PPOLearner.load_checkpoint: {meta_file} not found; pass a folder written by save_checkpoint."
            )
        meta = json.loads(meta_file.read_text())
        saved = (meta["world_size"], meta["zero_stage"], bool(meta.get("lora")), meta.get("critic", True))
        lora = self.settings.lora is not None
        if saved != (self.world_size, self.zero_stage, lora, self.critic_engine is not None):
            raise ValueError(
                f"PPOLearner.load_checkpoint: {d} was saved with world_size={saved[0]}, zero_stage={saved[1]}, "
                f"lora={saved[2]}, critic={saved[3]}; this learner has world_size={self.world_size}, "
                f"zero_stage={self.zero_stage}, lora={lora}, critic={self.critic_engine is not None} "
                f"(the critic follows ppo.advantage_estimator). Restart with the saved settings, or start a "
                f"new run from the HF folder {d / POLICY_DIR}."
            )
        for engine, name in self._engines_by_dir():
            path, client = engine.load_checkpoint(
                str(d / DEEPSPEED_DIR / name), tag=DS_TAG, load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
            if path is None:
                raise FileNotFoundError(
                    f"PPOLearner.load_checkpoint: DeepSpeed found no checkpoint under {d / DEEPSPEED_DIR / name}."
                )
        self.train_steps = int(client.get("train_steps", meta["train_steps"]))
        if client.get("rng"):  # checkpoints written before RNG states were saved have none
            from fgrlhf_ray.infra.rng import restore_rng_state

            restore_rng_state(client["rng"])
        for engine in self.engines:
            engine.eval()

    def _lora_record(self) -> dict | None:
        """The LoRA settings as learner_state.json records them (None: full fine-tuning)."""
        lora = self.settings.lora
        return None if lora is None else {"enabled": True, **dataclasses.asdict(lora),
                                          "target_modules": list(lora.target_modules)}

    def _engines_by_dir(self) -> list[tuple[Any, str]]:
        return [(self.policy_engine, POLICY_DIR)] + ([(self.critic_engine, CRITIC_DIR)] if self.critic_engine else [])

    def info(self) -> dict[str, Any]:
        """Small facts the Ray group needs (pad id, tied embeddings, batch geometry)."""
        return {"rank": self.rank, "world_size": self.world_size, "pad_token_id": self.pad_token_id,
                "tie_word_embeddings": self.tie_word_embeddings, "micro_batch_size": self.micro_batch_size,
                "grad_accum_steps": self.grad_accum_steps, "minibatch_per_rank": self.minibatch_per_rank,
                "zero_stage": self.zero_stage, "device": str(self.device)}
