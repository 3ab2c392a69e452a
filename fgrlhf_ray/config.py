"""The typed configuration tree of a whole run (pydantic v2), YAML loading and overrides.

One `RunConfig` describes a training run: policy, rollout engines, the list of reward
models, PPO, the DeepSpeed learner, Ray placement, data, logging and checkpoints.
Every field carries a docstring (exported as its JSON-schema description) and a default
matching DESIGN.md's paper-A defaults. Unknown keys are errors (`extra="forbid"`).

Loading goes through `load_config(path, overrides)`, which turns every problem
(missing file, YAML syntax, unknown key, wrong type, cross-field rule) into one
`ConfigError` whose message lists each problem with its field path, the bad value,
what is allowed, a close match for misspelt keys and, where known, the YAML line.

This module imports no ray / vllm / deepspeed (a test enforces it).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fgrlhf_ray.errors import ConfigError

RewardKind = Literal["segment_classifier", "sequence_preference", "token_level", "function", "http", "serve",
                     "toxicity"]
RewardDensity = Literal["sub_sentence", "sentence", "sequence", "token"]

# Which densities each reward-model kind can produce. Function / HTTP / Serve scorers
# wrap arbitrary user code or remote models, so they may declare any density.
ALLOWED_DENSITIES: dict[str, tuple[str, ...]] = {
    "segment_classifier": ("sub_sentence", "sentence"),
    "sequence_preference": ("sequence",),
    "token_level": ("token",),
    "function": ("sub_sentence", "sentence", "sequence", "token"),
    "http": ("sub_sentence", "sentence", "sequence", "token"),
    "serve": ("sub_sentence", "sentence", "sequence", "token"),
    # Detoxification (paper A): holistic 1 − P(y), or −ΔP after each sentence.
    "toxicity": ("sentence", "sequence"),
}
MODEL_KINDS = ("segment_classifier", "sequence_preference", "token_level")

# Paper A, section "LM customization": the relevance weight steers response length.
RELEVANCE_WEIGHT_PRESETS: dict[str, float] = {"short": 0.4, "medium": 0.3, "long": 0.2}

#: An environment variable's name (the `token_env` fields of run and serve configs).
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, docstrings are descriptions."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- policy


class PolicyConfig(StrictModel):
    model_path: str = "outputs/demo/sft"
    """HF folder (or hub id on a networked cluster) of the initial policy; also the frozen reference."""

    tokenizer_path: str | None = None
    """Tokenizer folder; defaults to `model_path`."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype for vLLM and the reference model (the learner's mixed precision is `learner.bf16`)."""


# -------------------------------------------------------------------------- rollout


class SamplingConfig(StrictModel):
    temperature: float = Field(0.7, ge=0.0)
    """Sampling temperature (paper A: 0.7). 0 means greedy."""

    top_k: int = Field(20, ge=-1)
    """Sample from the k most likely tokens (paper A: 20); -1 disables."""

    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass; 1.0 disables."""

    max_new_tokens: int = Field(200, ge=1)
    """Maximum response length in policy tokens (paper A: 200)."""

    n_samples_per_prompt: int = Field(1, ge=1)
    """Responses sampled per prompt in each rollout."""

    @property
    def logprob_temperature(self) -> float:
        """τ of the learner's and the reference's log-probs: softmax(logits / τ) is the distribution
        the engines sample from (top-k / top-p aside). Greedy (0) has none: the raw logits."""
        return self.temperature or 1.0


class RolloutConfig(StrictModel):
    num_engines: int = Field(1, ge=1)
    """Number of vLLM engine actors; prompts are sharded across them."""

    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (vLLM tensor parallelism); must be 1 on CPU."""

    gpu_memory_utilization: float = Field(0.15, gt=0.0, le=1.0)
    """Share of accelerator memory vLLM may take (on CPU: share of RAM). Low on CPU."""

    kv_cache_space_gib: float = Field(1.0, gt=0.0)
    """KV-cache size in GiB for vLLM-CPU (`VLLM_CPU_KVCACHE_SPACE`); ignored on GPU."""

    max_model_len: int = Field(1024, ge=16)
    """Longest prompt + response the engine accepts, in tokens."""

    enforce_eager: bool = True
    """Skip graph capture / compilation: faster start-up, slower steady state."""

    async_steps: Literal[0, 1] = 0
    """0: each step generates, then scores and learns. 1 (one step off): while the learner trains on
    step k, the engines already sample step k+1 from the weights before step k's update; the PPO
    ratio uses the learner's recomputed logprobs, `rollout/staleness` logs the lag, and a checkpoint
    keeps the in-flight batch's prompts so a resume samples them again."""

    num_cpus_per_engine: float = Field(1.0, ge=0.0)
    """CPUs reserved for each engine actor."""

    num_gpus_per_engine: float = Field(0.0, ge=0.0)
    """GPUs reserved for each engine actor (set to tensor_parallel_size on a GPU cluster)."""

    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Sampling parameters for training rollouts."""


# -------------------------------------------------------------------- reward models


class RewardModelConfig(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Unique name; used in logs and metrics (e.g. `relevance`, `factuality`)."""

    kind: RewardKind
    """segment_classifier (C1/C2), sequence_preference (C3 / holistic), token_level (paper B),
    function (`module:function`), http (a URL speaking /v1/score), serve (a Ray Serve deployment) or
    toxicity (detoxification rewards from a toxicity classifier `path` or a Perspective-style API `target`)."""

    path: str | None = None
    """Saved reward-model folder (for segment_classifier, sequence_preference, token_level)."""

    target: str | None = None
    """`module:function` for kind function; base URL for http; `app/deployment` for serve."""

    density: RewardDensity
    """Where the reward lands: per sub-sentence, sentence, whole sequence or token."""

    weight: float = 1.0
    """Multiplier on this model's rewards (paper A: relevance 0.3, factuality 0.5, completeness 0.3)."""

    normalize_mean: float | None = None
    """Subtract this from raw rewards before weighting; null = take the value stored with the model (sequence RMs) or 0."""

    normalize_std: float | None = Field(None, gt=0.0)
    """Divide raw rewards by this before weighting; null = take the value stored with the model or 1."""

    num_replicas: int = Field(1, ge=1)
    """Scorer actors (or Serve replicas) for this model."""

    num_cpus: float = Field(1.0, ge=0.0)
    """CPUs per scorer replica."""

    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs per scorer replica."""

    batch_size: int = Field(16, ge=1)
    """Responses per forward pass inside a scorer."""

    timeout_s: float = Field(60.0, gt=0.0)
    """Per-request timeout for http scorers."""

    max_retries: int = Field(3, ge=0)
    """Retries with exponential backoff for http scorers."""

    max_concurrency: int = Field(4, ge=1)
    """Concurrent in-flight requests for http scorers."""

    token_env: str = Field("FGRLHF_SERVE_TOKEN", pattern=ENV_VAR_PATTERN)
    """http scorers: environment variable holding the bearer token sent to the server (unset: none sent).
    toxicity scorers with a `target`: the variable holding the API key (default there: PERSPECTIVE_API_KEY)."""

    requests_per_second: float | None = Field(None, gt=0.0)
    """toxicity scorers with a `target`: client-side rate limit (e.g. the Perspective API quota); null = none."""

    @model_validator(mode="after")
    def _check_kind(self) -> "RewardModelConfig":
        allowed = ALLOWED_DENSITIES[self.kind]
        if self.density not in allowed:
            raise ValueError(
                f"reward model {self.name!r} of kind {self.kind!r} cannot have density {self.density!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        if not math.isfinite(self.weight):
            raise ValueError(f"reward model {self.name!r}: weight must be a finite number, got {self.weight}")
        if self.normalize_mean is not None and not math.isfinite(self.normalize_mean):
            raise ValueError(f"reward model {self.name!r}: normalize_mean must be finite")
        if self.kind in MODEL_KINDS and not self.path:
            raise ValueError(f"reward model {self.name!r} of kind {self.kind!r} needs `path` (a saved RM folder)")
        if self.kind == "function" and not re.fullmatch(r"[\w.]+:[\w.]+", self.target or ""):
            raise ValueError(
                f"reward model {self.name!r} of kind 'function' needs `target` as 'module:function', got {self.target!r}"
            )
        if self.kind == "http" and not re.match(r"^https?://", self.target or ""):
            raise ValueError(
                f"reward model {self.name!r} of kind 'http' needs `target` as an http(s):// URL, got {self.target!r}"
            )
        if self.kind == "toxicity" and bool(self.path) == bool(self.target):
            raise ValueError(
                f"reward model {self.name!r} of kind 'toxicity' needs exactly one of `path` (a Hugging Face "
                f"sequence-classification folder) or `target` (an http(s):// Perspective-style API URL)"
            )
        if self.kind == "toxicity" and self.target and not re.match(r"^https?://", self.target):
            raise ValueError(
                f"reward model {self.name!r} of kind 'toxicity' needs `target` as an http(s):// URL, got {self.target!r}"
            )
        if self.kind == "serve" and not self.target:
            raise ValueError(f"reward model {self.name!r} of kind 'serve' needs `target` (Serve app or deployment name)")
        return self


# ------------------------------------------------------------------------------ PPO


# The values of ppo.advantage_estimator (fgrlhf_ray.algo.estimators.ADVANTAGE_ESTIMATORS; a test
# checks they agree). A name, so that other configs (the demo's) offer exactly the same choice.
AdvantageEstimator = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"]

# Estimators whose baseline comes from the other samples of the same prompt (the same tuple
# as fgrlhf_ray.algo.estimators.GROUP_ESTIMATORS, kept here so config stays torch-free; a test
# checks they agree).
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


class PPOConfig(StrictModel):
    total_steps: int = Field(100, ge=1)
    """PPO steps (rollout → score → learn → sync) to run."""

    prompts_per_step: int = Field(16, ge=1)
    """Prompts drawn per step; the rollout batch is prompts_per_step × n_samples_per_prompt."""

    kl_coef: float = Field(0.3, ge=0.0)
    """β of the per-token KL penalty −β·(log π − log π_ref) (paper A: 0.3; holistic: 0.2)."""

    kl_estimator: Literal["k1", "k3", "abs"] = "k1"
    """Per-token KL estimator: k1 = log-ratio, k3 = Schulman's unbiased non-negative one, abs = |log-ratio|."""

    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    """Fixed β, or Ziegler et al.'s adaptive controller steering KL towards `kl_target`."""

    kl_target: float = Field(6.0, gt=0.0)
    """Target KL (nats per sequence) for the adaptive controller."""

    kl_horizon: int = Field(10000, ge=1)
    """Horizon (in samples) of the adaptive controller."""

    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """GAE discount γ (paper A: 1.0)."""

    lam: float = Field(0.95, ge=0.0, le=1.0)
    """GAE λ (paper A: 0.95; holistic baseline 0.99)."""

    policy_clip: float = Field(0.2, gt=0.0)
    """PPO ratio clip ε for the policy loss."""

    value_clip: float = Field(0.2, gt=0.0)
    """Clip range of the value prediction around the old value."""

    dual_clip: float | None = Field(None, gt=1.0)
    """Dual-clip constant c > 1 bounding the loss for negative advantages; null disables."""

    value_loss_coef: float = Field(0.5, ge=0.0)
    """c in the critic's loss c · max((V − R)², (V_clip − R)²) (0.5: the usual ½ of a squared error).
    The critic has its own optimiser, so c scales only the critic's gradient; under Adam that matters
    mostly through the gradient clipping (`max_grad_norm`) and `adam_eps`."""

    ppo_epochs: int = Field(4, ge=1)
    """Passes over each rollout batch (paper A: 4)."""

    minibatch_size: int = Field(8, ge=1)
    """Samples per optimiser step (across all learner ranks)."""

    loss_aggregation: Literal["token_mean", "seq_mean"] = "token_mean"
    """Average the policy loss over all tokens, or per sequence then over sequences."""

    scale_rewards_by_std: bool = True
    """Divide per-token rewards by their std over the batch, mean kept (paper A)."""

    whiten_advantages: bool = True
    """Whiten advantages over valid tokens (paper A; `gae` only: the others normalise themselves)."""

    advantage_estimator: AdvantageEstimator = "gae"
    """`gae`: GAE with a critic (paper A). Critic-free, over the dense rewards (no critic is started):
    `grpo` (DeepSeekMath's process supervision: every segment reward normalised over its prompt's
    samples, a token's advantage = the sum of normalised rewards at or after it), `dr_grpo` (the same,
    centred but not divided by the group's std), `rloo` (returns-to-go minus the leave-one-out mean of
    the prompt's other samples), `reinforce_pp` (REINFORCE++: returns-to-go, whitened over the batch).
    grpo, dr_grpo and rloo need rollout.sampling.n_samples_per_prompt >= 2 (fgrlhf_ray.algo.estimators)."""

    kl_in: Literal["reward", "loss"] = "reward"
    """Where the KL to the reference enters: `reward` (−β·KL in every token's reward, paper A) or
    `loss` (β · k3 KL added to the policy loss, as GRPO does; needs kl_controller 'fixed')."""

    lr: float = Field(1e-5, gt=0.0)
    """Policy Adam learning rate (paper A: 1e-5)."""

    critic_lr: float = Field(1e-5, gt=0.0)
    """Critic Adam learning rate."""

    adam_eps: float = Field(1e-5, gt=0.0)
    """Adam ε (paper A: 1e-5)."""

    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradient clipping norm."""


# -------------------------------------------------------------------------- learner


class LoRAConfig(StrictModel):
    enabled: bool = False
    """Train LoRA adapters instead of all policy weights (merged before each weight sync)."""

    r: int = Field(8, ge=1)
    """LoRA rank."""

    alpha: float = Field(16.0, gt=0.0)
    """LoRA scaling α."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA path."""

    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that receive adapters."""


class CriticConfig(StrictModel):
    model_path: str | None = None
    """Backbone of the critic (its own copy, trained by its own optimiser); null = start from the
    policy's weights."""

    @model_validator(mode="before")
    @classmethod
    def _accept_removed_default(cls, data: Any) -> Any:
        # Runs saved before `shared_backbone` was removed wrote `shared_backbone: false` into their
        # config.yaml: that is today's behaviour, so such files still load. `true` was never
        # supported and stays an error (REMOVED_FIELDS says why).
        if isinstance(data, dict) and data.get("shared_backbone") is False:
            data = {k: v for k, v in data.items() if k != "shared_backbone"}
        return data


class LearnerConfig(StrictModel):
    world_size: int = Field(1, ge=1)
    """Learner ranks (one DeepSpeed data-parallel group)."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage."""

    offload_optimizer: bool = False
    """Keep optimizer states on CPU (DeepSpeed offload)."""

    bf16: bool = False
    """bfloat16 mixed precision (on GPU; CPU runs stay float32)."""

    grad_accum_steps: int | None = Field(None, ge=1)
    """Micro-batches accumulated per optimiser step. None (default): derived, so that one
    optimiser step covers one PPO minibatch: ppo.minibatch_size / (world_size × micro_batch_size).
    If set, it must equal that quotient (the learner refuses a contradiction)."""

    micro_batch_size: int | None = Field(None, ge=1)
    """Samples per forward/backward pass on one rank; it must divide the rank's minibatch
    (ppo.minibatch_size / world_size). None (default): derived, the largest divisor of the rank's
    minibatch that is at most 4 (`batch_geometry`)."""

    num_cpus_per_rank: float = Field(1.0, ge=0.0)
    """CPUs reserved per learner rank."""

    num_gpus_per_rank: float = Field(0.0, ge=0.0)
    """GPUs reserved per learner rank."""

    weight_sync: Literal["object_store", "broadcast"] = "object_store"
    """How new weights reach vLLM after each update. object_store: learner rank 0 serialises the
    state dict once, `ray.put`, every engine loads the same object (any cluster; fine for small
    models). broadcast: learner rank 0 and every vLLM worker form one extra process group and the
    weights go out in flat buckets (`broadcast_backend`; NCCL is the GPU-cluster path)."""

    broadcast_backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend of `weight_sync: broadcast`. auto: nccl when learner ranks have GPUs
    (`num_gpus_per_rank` > 0), else gloo."""

    broadcast_bucket_mb: float = Field(256.0, gt=0.0)
    """Bucket size of `weight_sync: broadcast` (MiB): bigger = fewer collectives, more memory."""

    broadcast_timeout_s: float = Field(300.0, gt=0.0)
    """Bound on the broadcast group's rendezvous and on each bucket; past it the sync raises
    (and the controller recovers the engines) instead of hanging."""

    sync_probe_tolerance: float = Field(1e-2, gt=0.0)
    """Max |log π_vLLM − log π_learner| on the probe sequence after a sync before the run fails."""

    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    """Optional LoRA training."""

    critic: CriticConfig = Field(default_factory=CriticConfig)
    """Critic (value model) setup."""

    @model_validator(mode="after")
    def _check_broadcast_backend(self) -> "LearnerConfig":
        if self.weight_sync == "broadcast" and self.broadcast_backend == "nccl" and self.num_gpus_per_rank <= 0:
            raise ValueError("broadcast_backend 'nccl' needs GPU learner ranks (num_gpus_per_rank > 0); "
                             "use 'gloo' or 'auto' on CPU")
        return self

    def weight_broadcast_backend(self) -> str:
        """The process-group backend `weight_sync: broadcast` uses ("nccl" or "gloo")."""
        if self.broadcast_backend != "auto":
            return self.broadcast_backend
        return "nccl" if self.num_gpus_per_rank > 0 else "gloo"


# ------------------------------------------------------------------------------ Ray


class RayConfig(StrictModel):
    address: str | None = None
    """Cluster to join (`auto`, `ray://host:10001`); null = `RAY_ADDRESS` if set, else a local cluster."""

    placement: Literal["separate", "colocate"] = "separate"
    """separate: each actor group gets its own bundles; colocate: rollout, reference and learner share bundles."""

    rollout_resources: dict[str, float] = Field(default_factory=dict)
    """Extra custom resources per rollout actor (e.g. `{node:10.0.0.5: 0.01}` to pin to a node)."""

    learner_resources: dict[str, float] = Field(default_factory=dict)
    """Extra custom resources per learner rank."""

    scorer_resources: dict[str, float] = Field(default_factory=dict)
    """Extra custom resources per scorer actor."""

    max_restarts: int = Field(2, ge=-1)
    """Ray restarts for rollout / scorer / reference actors (-1 = unlimited)."""

    phase_retries: int = Field(2, ge=0)
    """Times the controller retries a failed phase after an actor dies."""

    get_timeout_s: float = Field(1800.0, gt=0.0)
    """Timeout of each phase's `ray.get` (no phase waits longer; see `phase_timeouts`)."""

    phase_timeouts: dict[Literal["generate", "score", "learn", "sync", "checkpoint"], float] = Field(
        default_factory=dict)
    """Per-phase timeouts in seconds overriding `get_timeout_s`, e.g. `{generate: 600, score: 120}`.
    A restartable phase (generate, score) that times out is recovered and retried like a crashed actor."""

    retry_backoff_s: float = Field(1.0, ge=0.0)
    """Wait before the first retry of a failed phase; doubles on each further retry (capped at 60 s)."""

    memory_limit_gib: float | None = Field(None, gt=0.0)
    """Report (log a warning, metric `memory/over_limit`) any actor whose resident memory exceeds this; null = off."""


# ----------------------------------------------------------------------------- data


class DataConfig(StrictModel):
    train_file: str = "outputs/demo/data/train.json"
    """Prompts for RL: QA-FEEDBACK-style JSON list (`text` field) or JSONL with `prompt`."""

    dev_file: str | None = None
    """Prompts for periodic evaluation."""

    format: Literal["qa_feedback", "jsonl"] = "qa_feedback"
    """qa_feedback: a JSON list whose `text` is the prompt; jsonl: one object per line."""

    prompt_field: str = "text"
    """Field holding the prompt text."""

    max_prompt_tokens: int = Field(512, ge=1)
    """Prompts longer than this (policy tokens) are cut from the left (the question stays)."""

    shuffle: bool = True
    """Shuffle prompts each epoch (seeded)."""


# ------------------------------------------------------------------ logging, checkpoint


class LoggingConfig(StrictModel):
    dir: str = "runs/default"
    """Run folder: metrics.jsonl, TensorBoard events, the effective config."""

    tensorboard: bool = True
    """Also write TensorBoard scalars."""

    eval_every: int = Field(0, ge=0)
    """Evaluate on `data.dev_file` every k steps (0 = never)."""


class CheckpointConfig(StrictModel):
    dir: str | None = None
    """Checkpoint folder; null = `<logging.dir>/checkpoints`."""

    every: int = Field(0, ge=0)
    """Save every k steps (0 = only at the end)."""

    keep_last: int = Field(3, ge=1)
    """Complete checkpoints kept; older ones are deleted."""


# ------------------------------------------------------------- reward diagnostics, audit


class DiagnosticsConfig(StrictModel):
    enabled: bool = True
    """Compute per-RM reward-signal statistics every step (`diag/<rm>/...` metrics) and warn about
    reward models that look blind or gamed (see docs/reward_diagnostics.md)."""

    patience: int = Field(3, ge=1)
    """A condition must hold this many consecutive steps before its warning fires (once; again only
    after it cleared)."""

    max_label_share: float = Field(0.9, gt=0.5, le=1.0)
    """Warn when a segment RM gives one label (error or no_error) to at least this share of the
    batch's segments: its reward is then mostly a segment-count bonus or penalty. A healthy RM on a
    policy that really makes fewer than 1 − this errors also warns: raise it then (or audit)."""

    min_total_std: float = Field(0.01, ge=0.0)
    """Warn when the std over the batch of an RM's per-sample total is at most this many times its
    normalisation std (`normalize_std`, the stored σ, else 1): every answer gets the same reward."""

    max_length_corr: float = Field(0.95, gt=0.0, le=1.0)
    """Warn when |Pearson(per-sample total, response length in policy tokens)| reaches this."""

    max_segment_corr: float = Field(0.98, gt=0.0, le=1.0)
    """Warn when |Pearson(per-sample total, number of segments)| reaches this."""

    max_pair_corr: float = Field(0.99, gt=0.0, le=1.0)
    """Warn when two RMs' per-sample totals correlate at least this much (|Pearson|)."""

    min_samples: int = Field(8, ge=3)
    """Correlation-based warnings need a rollout batch of at least this many samples (fewer give
    noise); the statistics are logged regardless."""


class AuditConfig(StrictModel):
    judge: RewardModelConfig | None = None
    """The audit judge: any scorer, written like a reward model (`kind: function | http | serve`, or a
    saved RM `path`); null = no audit. It scores a sample of each audited step's rollouts in its own
    actor, off the critical path; its verdicts never enter the reward (its `weight` and normalisation are
    ignored)."""

    sample_rate: float = Field(0.25, gt=0.0, le=1.0)
    """Share of an audited step's rollout samples the judge scores (at least `min_samples`)."""

    every: int = Field(1, ge=1)
    """Audit every k-th step."""

    min_samples: int = Field(2, ge=1)
    """Fewest samples per audit (Spearman needs two)."""

    record_responses: bool = True
    """Write the audited prompts and responses to `<logging.dir>/audit.jsonl` with the verdicts."""

    flush_timeout_s: float = Field(300.0, gt=0.0)
    """At the end of the run, wait at most this long for the last audit's result."""


# ------------------------------------------------------------------- batch arithmetic

#: The largest micro-batch `batch_geometry` derives when learner.micro_batch_size is unset.
DEFAULT_MAX_MICRO_BATCH = 4


@dataclass(frozen=True)
class BatchGeometry:
    """How one rollout batch is cut up for the learner (every count is in samples).

    The batch of R samples is split into W equal rank shards; each PPO epoch cuts every shard
    into minibatches of M / W (one optimiser step over all ranks takes M samples), and each
    minibatch into `grad_accum_steps` forward/backward passes of `micro_batch_size`.
    """

    rollout_batch: int | None  # R = ppo.prompts_per_step × rollout.sampling.n_samples_per_prompt (None: unknown)
    minibatch_size: int  # M = ppo.minibatch_size, over all ranks
    world_size: int  # W = learner.world_size
    micro_batch_size: int  # per rank and pass (learner.micro_batch_size, or derived)

    @property
    def minibatch_per_rank(self) -> int:
        """M / W: the samples one rank contributes to an optimiser step."""
        return self.minibatch_size // self.world_size

    @property
    def grad_accum_steps(self) -> int:
        """M / (W · micro_batch_size): micro-batches accumulated per optimiser step."""
        return self.minibatch_per_rank // self.micro_batch_size

    @property
    def optimizer_steps_per_epoch(self) -> int | None:
        """R / M (None while R is unknown)."""
        return None if self.rollout_batch is None else self.rollout_batch // self.minibatch_size


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _listed(values: list[int]) -> str:
    return ", ".join(map(str, values)) if values else "none"


def batch_geometry(
    *,
    rollout_batch: int | None,
    minibatch_size: int,
    world_size: int,
    micro_batch_size: int | None = None,
    grad_accum_steps: int | None = None,
) -> BatchGeometry:
    """Check the batch arithmetic and derive the per-rank sizes (pure; the config validator and
    the learner both call it, so they cannot disagree).

    Rules (R rollout batch, M minibatch, W learner ranks, μ micro-batch; all ≥ 1):
        M ≤ R and M | R        each PPO epoch cuts the batch into whole minibatches
        W | M                  every rank takes M / W samples per optimiser step (so W | R too)
        μ | M / W              DeepSpeed accumulates a whole number of micro-batches
        grad_accum_steps ∈ {None, M / (W μ)}
    μ = None derives the largest divisor of M / W that is at most `DEFAULT_MAX_MICRO_BATCH`.
    `rollout_batch` None skips the rules that need R (the learner's constructor does not know it).

    Raises ValueError naming the config fields involved and the values that would work.
    """
    R, M, W = rollout_batch, minibatch_size, world_size
    for name, value in (("ppo.minibatch_size", M), ("learner.world_size", W), ("the rollout batch", R),
                        ("learner.micro_batch_size", micro_batch_size), ("learner.grad_accum_steps", grad_accum_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    step = W * (micro_batch_size or 1)  # every workable M is a multiple of this
    def rollout_problem(problem: str) -> ValueError:
        allowed = [d for d in _divisors(R) if d % step == 0]
        of = "" if step == 1 else (f" (the divisors of {R} that are multiples of learner.world_size"
                                   f"{' × learner.micro_batch_size' if micro_batch_size else ''} = {step})")
        return ValueError(
            f"ppo.minibatch_size ({M}) {problem} (ppo.prompts_per_step × rollout.sampling.n_samples_per_prompt "
            f"= {R}): each PPO epoch cuts the batch into whole minibatches. Allowed ppo.minibatch_size: "
            f"{_listed(allowed)}{of}; or change ppo.prompts_per_step or rollout.sampling.n_samples_per_prompt so "
            f"that the rollout batch is a multiple of {M}")

    if R is not None and M > R:
        raise rollout_problem("exceeds the rollout batch")
    if M % W:
        raise ValueError(
            f"ppo.minibatch_size ({M}) must be divisible by learner.world_size ({W}): every rank takes "
            f"minibatch_size / world_size samples per optimiser step; use a multiple of {step}")
    if R is not None and R % M:
        raise rollout_problem("does not divide the rollout batch")
    per_rank = M // W
    derived = micro_batch_size is None
    if derived:
        micro_batch_size = max(d for d in _divisors(per_rank) if d <= DEFAULT_MAX_MICRO_BATCH)
    elif per_rank % micro_batch_size:
        raise ValueError(
            f"learner.micro_batch_size ({micro_batch_size}) does not divide each rank's minibatch "
            f"(ppo.minibatch_size / learner.world_size = {M} / {W} = {per_rank}); allowed "
            f"learner.micro_batch_size: {_listed(_divisors(per_rank))}, or leave it unset (derived)")
    geometry = BatchGeometry(rollout_batch=R, minibatch_size=M, world_size=W, micro_batch_size=micro_batch_size)
    if grad_accum_steps is not None and grad_accum_steps != geometry.grad_accum_steps:
        raise ValueError(
            f"learner.grad_accum_steps ({grad_accum_steps}) contradicts ppo.minibatch_size ({M}), "
            f"learner.world_size ({W}) and learner.micro_batch_size "
            f"({micro_batch_size}{', derived' if derived else ''}), "
            f"which give {geometry.grad_accum_steps} micro-batches per optimiser step; set it to "
            f"{geometry.grad_accum_steps} or leave it unset (derived)")
    return geometry


# ---------------------------------------------------------------------- reward-model sets
# Shared by the run config and the serve config (`fgrlhf_ray.serve.config`).


def require_reward_models(value: list) -> list:
    """Field validator body: a config lists at least one reward model."""
    if not value:
        raise ValueError("at least one reward model is required")
    return value


def check_reward_model_set(reward_models: Sequence["RewardModelConfig"], preset: str | None) -> None:
    """Names are unique, and a length `preset` has a model named `relevance` to act on."""
    names = [rm.name for rm in reward_models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"reward_models: names must be unique, repeated: {', '.join(duplicates)}")
    if preset is not None and "relevance" not in names:
        raise ValueError(
            f"preset {preset!r} sets the weight of the reward model named 'relevance', "
            f"but there is none (reward models: {', '.join(names)})"
        )


# ----------------------------------------------------------------------------- root


def reward_weights(reward_models: Sequence["RewardModelConfig"], preset: str | None) -> dict[str, float]:
    """Weight per reward model name; a named preset overrides the relevance weight (paper A's
    length presets), for training and evaluation alike."""
    weights = {rm.name: rm.weight for rm in reward_models}
    if preset is not None:
        weights["relevance"] = RELEVANCE_WEIGHT_PRESETS[preset]
    return weights


class RunConfig(StrictModel):
    seed: int = 42
    """Seed for data order, sampling and initialisation."""

    preset: Literal["short", "medium", "long"] | None = None
    """Paper A's length presets: sets the weight of the reward model named `relevance`
    (short 0.4, medium 0.3, long 0.2)."""

    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    """Initial policy (and reference)."""

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """vLLM rollout engines."""

    reward_models: list[RewardModelConfig]
    """Reward models whose weighted rewards are summed per token (at least one)."""

    ppo: PPOConfig = Field(default_factory=PPOConfig)
    """PPO hyper-parameters."""

    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    """DeepSpeed learner."""

    ray: RayConfig = Field(default_factory=RayConfig)
    """Ray cluster and placement."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Training / evaluation prompts."""

    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Metrics and TensorBoard."""

    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpointing."""

    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    """Per-RM reward-signal statistics and warnings about blind or gamed reward models."""

    audit: AuditConfig = Field(default_factory=AuditConfig)
    """An audit judge comparing each reward model with a trusted scorer on sampled rollouts."""

    @field_validator("reward_models")
    @classmethod
    def _at_least_one_reward_model(cls, value: list[RewardModelConfig]) -> list[RewardModelConfig]:
        # A field validator (not the model validator below) so it is reported together
        # with every other field error instead of being masked by them.
        return require_reward_models(value)

    @model_validator(mode="after")
    def _check_run(self) -> "RunConfig":
        check_reward_model_set(self.reward_models, self.preset)
        self.batch_geometry()  # raises ValueError naming the fields and the allowed values
        batch = self.ppo.prompts_per_step * self.rollout.sampling.n_samples_per_prompt
        if self.audit.judge is not None and self.audit.min_samples > batch:
            raise ValueError(
                f"audit.min_samples ({self.audit.min_samples}) exceeds the rollout batch (ppo.prompts_per_step × "
                f"rollout.sampling.n_samples_per_prompt = {batch}); lower it or raise the batch"
            )
        if (self.learner.weight_sync == "broadcast" and self.learner.weight_broadcast_backend() == "nccl"
                and self.ray.placement == "colocate"):
            # Colocated, learner rank 0 and an engine share a GPU, and one NCCL communicator
            # cannot hold two ranks on the same device.
            raise ValueError("learner.weight_sync 'broadcast' over NCCL needs ray.placement 'separate' "
                             "(colocated ranks share a GPU); use weight_sync 'object_store' when colocating")
        return self

    @model_validator(mode="after")
    def _check_estimator(self) -> "RunConfig":
        n = self.rollout.sampling.n_samples_per_prompt
        if self.ppo.advantage_estimator in GROUP_ESTIMATORS and n < 2:
            raise ValueError(
                f"ppo.advantage_estimator {self.ppo.advantage_estimator!r} compares the samples of one prompt "
                f"with each other and needs rollout.sampling.n_samples_per_prompt >= 2, got {n}; raise it "
                f"(4-8 is usual) or choose 'gae' or 'reinforce_pp', which work with one sample per prompt"
            )
        if self.ppo.kl_in == "loss" and self.ppo.kl_controller != "fixed":
            raise ValueError("ppo.kl_in 'loss' needs ppo.kl_controller 'fixed' (the KL term's β is the learner's "
                             "constant ppo.kl_coef); use kl_in 'reward' with the adaptive controller")
        return self

    def effective_reward_weights(self) -> dict[str, float]:
        """Weight per reward model after applying `preset`."""
        return reward_weights(self.reward_models, self.preset)

    def batch_geometry(self) -> "BatchGeometry":
        """How each rollout batch is cut over learner ranks, minibatches and micro-batches."""
        return batch_geometry(
            rollout_batch=self.ppo.prompts_per_step * self.rollout.sampling.n_samples_per_prompt,
            minibatch_size=self.ppo.minibatch_size, world_size=self.learner.world_size,
            micro_batch_size=self.learner.micro_batch_size, grad_accum_steps=self.learner.grad_accum_steps)

    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.dir, "checkpoints")


# ------------------------------------------------------------------- YAML & overrides

M = TypeVar("M", bound=BaseModel)

#: Fields that older versions accepted, with what to do about them (shown with "unknown field").
REMOVED_FIELDS: dict[str, str] = {
    "learner.critic.shared_backbone": "removed: a critic sharing the policy's backbone was never implemented, "
                                      "the critic always trains its own copy; delete the key",
}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], typed value); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set ppo.kl_coef=0.2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.(\w+))*", key):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted field path like ppo.kl_coef")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `a.b.c=value` override applied (list items by index)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, where, text)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            else:
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_list_index(node, last, text, text)] = value
        else:
            node[last] = value
    return data


def _list_index(node: list, part: str, where: str, text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {text!r}: {where} must be a list index 0..{len(node) - 1}, got {part!r}")
    return int(part)


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                sub = path + (str(key_node.value),)
                lines[sub] = key_node.start_mark.line + 1
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (str(i),)] = item.start_mark.line + 1
                walk(item, path + (str(i),))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _model_fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model reached by `loc` (for "did you mean" suggestions)."""
    cls: Any = model_cls
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or ()
        candidates = [annotation, *args]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(
    exc: ValidationError,
    model_cls: type[BaseModel],
    *,
    source: str,
    lines: dict[tuple, int] | None = None,
    overridden: set[tuple] | None = None,
) -> str:
    """One line per problem: `line N: field.path: problem (got VALUE)`, with hints.

    `lines` maps YAML key paths to line numbers; `overridden` holds the key paths set by
    `--set`, which are reported as such instead of with a (misleading) file line.
    """
    lines = lines or {}
    overridden = overridden or set()
    out = [f"{source}: invalid configuration ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        path = ".".join(loc) or "(top level)"
        if any(loc[: len(o)] == o for o in overridden):
            where = "--set "
        else:
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            where = f"line {line}: " if line else ""
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _model_fields_at(model_cls, err["loc"][:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
            hint = f" — did you mean `{close[0]}`?" if close else ""
            if model_cls is RunConfig and path in REMOVED_FIELDS:
                hint = f" ({REMOVED_FIELDS[path]})"
            out.append(f"  {where}{path}: unknown field{hint} (allowed: {', '.join(allowed)})")
            continue
        if kind == "missing":
            out.append(f"  {where}{path}: required field is missing")
            continue
        shown = err.get("input")
        shown_text = "" if isinstance(shown, (dict, list)) and kind == "value_error" else f" (got {shown!r})"
        out.append(f"  {where}{path}: {msg}{shown_text}")
    return "\n".join(out)


def load_model_from_yaml(model_cls: type[M], path: str | os.PathLike, overrides: list[str] | None = None) -> M:
    """Load `model_cls` from a YAML file, apply `--set` overrides, validate.

    Raises `ConfigError` with a readable, complete message for every kind of bad input.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config path is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    overrides = list(overrides or [])
    data = apply_overrides(data, overrides)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        overridden = {tuple(parse_override(o)[0]) for o in overrides}
        message = format_validation_error(
            exc, model_cls, source=str(path), lines=_yaml_lines(text), overridden=overridden
        )
        raise ConfigError(message) from None


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Load a run configuration (see `load_model_from_yaml`)."""
    return load_model_from_yaml(RunConfig, path, overrides)


def dump_config(config: BaseModel) -> str:
    """The effective configuration as YAML, defaults filled in, in field order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
