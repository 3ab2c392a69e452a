"""Reward-model training: data → split → (Ray Train) workers → best checkpoint → saved RM.

`train_reward_model(cfg)` is what `fgrlhf train-rm` runs:

1. `prepare_splits` reads the data (QA-FEEDBACK or JSONL), maps it to the task's
   examples and splits *groups* (questions / prompts) into train / dev / test;
2. `train_loop_per_worker` runs on every worker — Ray Train's `TorchTrainer` workers
   (DDP, or DeepSpeed ZeRO for several GPUs) or, with `use_ray_train: false`, in this
   process. Each epoch: train with a tqdm bar, evaluate on dev (the segment RMs also
   tune their P(error) threshold there), save a checkpoint;
3. the best checkpoint by the dev metric becomes `output_dir`; sequence RMs then get
   μ/σ of their training-response scores, and the metadata records the config, the
   split (hashes of the held-out groups) and timings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgrlhf_ray.data.rm_data import (
    SplitSpec,
    group_fingerprint,
    read_edit_jsonl,
    read_preference_jsonl,
    read_segment_jsonl,
    split_groups,
)
from fgrlhf_ray.errors import ConfigError, DataError
from fgrlhf_ray.infra.ports import free_port
from fgrlhf_ray.rewards.base import METADATA_FILE, TASKS, RMMetadata
from fgrlhf_ray.rewards.hf_model import HFRewardModel
from fgrlhf_ray.rewards.evaluation import best_threshold, evaluate, segment_predictions
from fgrlhf_ray.rewards.losses import IGNORE_INDEX
from fgrlhf_ray.rewards.train_config import RMDataConfig, RewardModelTrainConfig

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "train_summary.json"


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info warnings (they drown the log)."""
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers is a hard dependency
        pass


# ------------------------------------------------------------------------------ data


def detect_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "jsonl" if str(path).endswith(".jsonl") else "qa_feedback"


def _map_records(task: str, records: list, data: RMDataConfig, min_words: int, stats: dict) -> list:
    from fgrlhf_ray.data import qa_feedback as qf

    if task == "relevance":
        return qf.relevance_examples(records, min_words=min_words, min_error_span_words=data.min_error_span_words, stats=stats)
    if task == "factuality":
        return qf.factuality_examples(records, ignore_relevance_error_sentences=data.ignore_relevance_error_sentences, stats=stats)
    if task == "completeness":
        return qf.completeness_pairs(records, min_containment=data.min_containment, stats=stats)
    if task == "holistic":
        return qf.holistic_pairs(records, stats=stats)
    if task == "edit_preference":
        return [p.as_preference() for p in qf.edit_pairs(records, stats=stats)]
    if task == "token_level":
        return qf.edit_pairs(records, stats=stats)
    raise ConfigError(f"unknown task {task!r}")


def load_examples(
    task: str, path: str, *, fmt: str = "auto", data: RMDataConfig | None = None, min_words: int = 5
) -> tuple[list, list[str], dict]:
    """Examples of `task` from `path`, the file's groups (for splitting) and mapping stats.

    For QA-FEEDBACK the groups are all questions of the file (so every task splits the
    same questions the same way, even when a mapping skips some); for JSONL they are the
    examples' `group` fields.
    """
    data = data or RMDataConfig(train_path=path)
    fmt = detect_format(path, fmt)
    stats: dict = {}
    if fmt == "qa_feedback":
        from fgrlhf_ray.data.qa_feedback import load_qa_feedback

        records = load_qa_feedback(path)
        examples = _map_records(task, records, data, min_words, stats)
        groups = [r.question for r in records]
    else:
        if task in ("relevance", "factuality"):
            examples = read_segment_jsonl(path, density=TASKS[task][1], min_words=min_words)
        elif task in ("completeness", "holistic"):
            examples = read_preference_jsonl(path)
        elif task == "edit_preference":
            examples = [p.as_preference() for p in read_edit_jsonl(path)]
        else:
            examples = read_edit_jsonl(path)
        groups = [e.group for e in examples]
    if not examples:
        raise DataError(f"{path}: no {task} examples could be made from this file (see the log for skipped rows)")
    return examples, groups, stats


def prepare_splits(cfg: RewardModelTrainConfig) -> tuple[dict[str, list], dict]:
    """{"train", "dev", "test"} examples and the split record stored with the model."""
    d = cfg.data
    examples, groups, stats = load_examples(cfg.task, d.train_path, fmt=d.format, data=d, min_words=cfg.sub_sentence_min_words)
    spec = SplitSpec(test_size=d.test_size, dev_size=d.effective_dev_size(), seed=d.split_seed)
    assign = split_groups(groups, spec)
    splits: dict[str, list] = {"train": [], "dev": [], "test": []}
    for ex in examples:
        splits[assign[ex.group]].append(ex)
    if d.transfer_labels:
        if cfg.task not in ("relevance", "factuality") or detect_format(d.train_path, d.format) != "qa_feedback":
            raise ConfigError("data.transfer_labels applies to relevance / factuality on QA-FEEDBACK files only")
        from fgrlhf_ray.data.qa_feedback import load_qa_feedback, transfer_segment_labels

        train_records = [r for r in load_qa_feedback(d.train_path) if assign[r.question] == "train"]
        stats["transfer"] = {}
        extra = transfer_segment_labels(splits["train"], train_records, density=TASKS[cfg.task][1],
                                        min_words=cfg.sub_sentence_min_words, stats=stats["transfer"])
        splits["train"] += extra
    if d.dev_path:
        splits["dev"], _, _ = load_examples(cfg.task, d.dev_path, fmt=d.format, data=d, min_words=cfg.sub_sentence_min_words)
    if d.max_train_examples:
        splits["train"] = splits["train"][: d.max_train_examples]
    if not splits["train"]:
        raise DataError(f"{d.train_path}: the split left no training examples for task {cfg.task!r}")
    record = {
        "train_path": str(d.train_path),
        "test_size": d.test_size,
        "dev_size": spec.dev_size,
        "seed": spec.seed,
        "n_groups": len(set(groups)),
        "counts": {k: len(v) for k, v in splits.items()},
        "test_groups": sorted(group_fingerprint(g) for g, s in assign.items() if s == "test"),
        "dev_groups": sorted(group_fingerprint(g) for g, s in assign.items() if s == "dev"),
        "mapping_stats": stats,
    }
    logger.info("task %s: %s examples (train/dev/test) from %d groups", cfg.task, record["counts"], record["n_groups"])
    return splits, record


def select_split(examples: list, split_record: dict, which: str) -> list:
    """Examples of `which` ("train" / "dev" / "test" / "all") by a model's stored split record."""
    if which == "all":
        return list(examples)
    if which not in ("train", "dev", "test"):
        raise ConfigError(f"unknown split {which!r}; use all, train, dev or test")
    test, dev = set(split_record.get("test_groups", [])), set(split_record.get("dev_groups", []))

    def side(ex) -> str:
        h = group_fingerprint(ex.group)
        return "test" if h in test else "dev" if h in dev else "train"

    return [e for e in examples if side(e) == which]


# ------------------------------------------------------------------------- the model


def rm_class(task: str) -> type[HFRewardModel]:
    from fgrlhf_ray.rewards.segment_classifier import SegmentClassifierRM
    from fgrlhf_ray.rewards.sequence_preference import SequencePreferenceRM
    from fgrlhf_ray.rewards.token_level import TokenLevelRM

    kind = TASKS[task][0]
    return {"segment_classifier": SegmentClassifierRM, "sequence_preference": SequencePreferenceRM,
            "token_level": TokenLevelRM}[kind]


def build_rm(cfg: RewardModelTrainConfig, *, device: str | None = "cpu") -> HFRewardModel:
    """An untrained RM for `cfg` (pretrained backbone, seeded head)."""
    return rm_class(cfg.task).from_backbone(
        cfg.backbone,
        task=cfg.task,
        name=cfg.name,
        max_length=cfg.max_length,
        use_context=cfg.resolved_use_context(),
        context_selection=cfg.context_selection,
        pooling=cfg.pooling,
        min_words=cfg.sub_sentence_min_words,
        segment_features=cfg.segment_features,
        feature_names=cfg.segment_feature_names,
        feature_encoder=cfg.feature_encoder,
        seed=cfg.seed,
        device=device,
        batch_size=cfg.eval_batch_size,
    )


# --------------------------------------------------------------------------- workers


class _LocalSession:
    """In-process stand-in for Ray Train's context and `report` (use_ray_train: false)."""

    world_rank = 0
    world_size = 1

    def __init__(self, output_dir: Path, keep: int | None) -> None:
        self.dir = output_dir / CHECKPOINTS_DIR
        self.keep = keep
        self.reported: list[tuple[dict, Path]] = []

    def report(self, metrics: dict, checkpoint_dir: str | None, name: str) -> None:
        if checkpoint_dir is None:
            return
        dest = self.dir / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(checkpoint_dir, dest)
        (dest / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self.reported.append((metrics, dest))
        if self.keep:
            ranked = sorted(self.reported, key=lambda mp: mp[0]["dev_metric"], reverse=True)
            for _, path in ranked[self.keep:]:
                shutil.rmtree(path, ignore_errors=True)
            self.reported = ranked[: self.keep]


class _RaySession:
    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def report(self, metrics: dict, checkpoint_dir: str | None, name: str) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt else None)


def _param_groups(module, weight_decay: float, lr: float, head_lr: float | None = None) -> list[dict]:
    """AdamW groups: (backbone | heads) × (decayed | not decayed: biases, LayerNorms);
    the heads (`head`, `feature_head`) get `head_lr` when given."""
    groups: dict[tuple[bool, bool], list] = {}
    for n, p in module.named_parameters():
        if not p.requires_grad:
            continue
        is_head = n.startswith(("head.", "feature_head."))
        no_decay = p.ndim < 2 or "LayerNorm" in n or "layernorm" in n or n.endswith(".bias")
        groups.setdefault((is_head, no_decay), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr": (head_lr or lr) if head else lr}
            for (head, nd), ps in sorted(groups.items())]


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _feature_stats(features: list[dict]) -> dict:
    agg: Counter = Counter()
    for f in features:
        for k, v in (f.get("stats") or {}).items():
            agg[k] += v
    return dict(agg)


def _init_feature_head(rm, features: list[dict], error_weight: float, *, log: bool) -> None:
    """Store the training segments' feature statistics with the model and warm-start its
    feature head by logistic regression on the labelled ones (same result on every rank)."""
    import torch

    from fgrlhf_ray.rewards.segment_features import feature_norm, fit_feature_head, standardize

    rows = [row for f in features for _, row in f["seg_features"]]
    rm.metadata.feature_norm = feature_norm(rows)
    labelled = [(row, f["labels"][pos]) for f in features for pos, row in f["seg_features"]
                if f["labels"][pos] != IGNORE_INDEX]
    if not labelled:
        return
    x = standardize([r for r, _ in labelled], rm.metadata.feature_norm)
    w, b = fit_feature_head(x, [y for _, y in labelled], error_weight=error_weight)
    with torch.no_grad():  # logits (no_error, error) = (0, w·x + b)
        rm.network.feature_head.weight.zero_()
        rm.network.feature_head.bias.zero_()
        rm.network.feature_head.weight[1] = w.to(rm.network.feature_head.weight.device)
        rm.network.feature_head.bias[1] = b
    if log:
        logger.info("segment features: warm-started on %d labelled segments; weights %s", len(labelled),
                    ", ".join(f"{n} {v:+.2f}" for n, v in zip(rm.feature_names, w.tolist())))


def _evaluate_and_report(rm, cfg: RewardModelTrainConfig, dev_examples: list, metrics: dict, cut: dict,
                         session, engine, rank: int) -> None:
    """Evaluate on dev (tuning a segment RM's threshold if asked), then save a checkpoint
    named `epoch_{metrics["epoch"]}` and report it with `metrics` (updated in place)."""
    rm.network.eval()
    epoch = metrics["epoch"]
    # Every rank evaluates (identical work): under ZeRO-3 the forward passes gather
    # parameters collectively, so rank 0 cannot run them alone.
    if dev_examples:
        if rm.kind == "segment_classifier" and cfg.tune_threshold:
            gold, p_err = segment_predictions(rm, dev_examples)
            thr, _ = best_threshold(gold, p_err, cfg.resolved_dev_metric())
            rm.metadata.threshold = thr
        dev = evaluate(rm, dev_examples, seed=cfg.seed)
        metrics["dev_metric"] = dev[cfg.resolved_dev_metric()]
        metrics["dev"] = {k: v for k, v in dev.items() if isinstance(v, (int, float, str))}
    else:
        metrics["dev_metric"] = -metrics["train_loss"]  # no dev set: lowest training loss wins
    if rank == 0:
        loss = metrics["train_loss"]
        logger.info("[%s] epoch %d: train_loss %s, dev %s %.4f", rm.name, epoch,
                    "-" if loss is None else f"{loss:.4f}", cfg.resolved_dev_metric() if dev_examples else "(-train_loss)",
                    metrics["dev_metric"])
    rm.metadata.training = {"epoch": epoch, "metrics": metrics, "input_cuts": cut}
    with tempfile.TemporaryDirectory(prefix="fgrlhf_rm_ckpt_") as tmp:
        if cfg.zero_stage == 3 and engine is not None:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(rm.network.parameters()), modifier_rank=None):
                if rank == 0:
                    rm.save(tmp)
        elif rank == 0:
            rm.save(tmp)
        session.report(metrics, tmp if rank == 0 else None, f"epoch_{epoch}")


def _worker_device(cfg: RewardModelTrainConfig, local: bool) -> str:
    """The torch device of this worker: Ray Train's device for its GPU, "cuda" in-process, else "cpu"."""
    if not cfg.use_gpu:
        return "cpu"
    if local:
        return "cuda"
    import ray.train.torch as rtt

    return str(rtt.get_device())


def _encode_training_inputs(rm, cfg: RewardModelTrainConfig, examples: list, *, rank: int) -> tuple[list[dict], dict]:
    """Encode the training examples once (tokenisation and passage selection are the same
    every epoch); returns (the model inputs, the summed cut statistics). Rank 0 logs them.

    Raises `DataError` when no example gives an input.
    """
    features: list[dict] = []
    skipped = 0
    for ex in examples:
        f = rm.features(ex)
        skipped += not f
        features += f
    cut = _feature_stats(features)
    if rank == 0:
        logger.info("encoded %d training inputs (%d examples gave none: unchanged after tokenisation); cuts: %s",
                    len(features), skipped, cut)
        if cut.get("context_tokens"):
            logger.info("passages: %.1f%% of %d passage tokens cut (%s selection)",
                        100 * cut.get("context_tokens_cut", 0) / cut["context_tokens"], cut["context_tokens"],
                        cfg.context_selection)
    if not features:
        raise DataError("no training inputs after encoding (all examples were skipped)")
    return features, cut


@dataclass
class _Schedule:
    """How the training inputs are shared and stepped through (derived once, before the
    optimiser's learning-rate schedule is built from `total_steps`)."""

    per_rank: int  # training inputs each rank trains on per epoch (all of them with one worker)
    steps_per_epoch: int  # ceil(per_rank / batch_size)
    total_steps: int  # steps_per_epoch * epochs, capped by max_steps


def _schedule(n_features: int, world: int, cfg: RewardModelTrainConfig) -> _Schedule:
    """The per-rank share and step counts; `DataError` when a rank would get no input."""
    per_rank = n_features // world if world > 1 else n_features
    if per_rank == 0:
        raise DataError(f"{n_features} training inputs cannot be shared by {world} workers")
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    return _Schedule(per_rank, steps_per_epoch, total_steps)


@dataclass
class _Optimisation:
    """What one training step uses; built by `_prepare_optimisation` for the strategy."""

    module: Any  # what `compute_loss` runs: the network, its DDP wrapper or the DeepSpeed engine
    engine: Any  # the DeepSpeed engine (it steps optimiser and schedule itself), or None
    optimizer: Any
    scheduler: Any


def _prepare_optimisation(rm, cfg: RewardModelTrainConfig, *, world: int, total_steps: int) -> _Optimisation:
    """AdamW with linear warm-up and decay over `total_steps`, wrapped for the strategy:
    a DeepSpeed engine (ZeRO `cfg.zero_stage`), DDP over several Ray Train workers, or as is."""
    import torch

    optimizer = torch.optim.AdamW(_param_groups(rm.network, cfg.weight_decay, cfg.lr, cfg.head_lr), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, int(cfg.warmup_ratio * total_steps)))
    module: Any = rm.network
    engine = None
    if cfg.resolved_strategy() == "deepspeed":
        import deepspeed

        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.bf16},
            "steps_per_print": 10**9,
        }
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=rm.network, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        module = engine
    elif world > 1:
        import ray.train.torch as rtt

        module = rtt.prepare_model(rm.network, move_to_device=False)
    return _Optimisation(module, engine, optimizer, scheduler)


def _train_epoch(rm, cfg: RewardModelTrainConfig, features: list[dict], opt: _Optimisation, sched: _Schedule, *,
                 epoch: int, step: int, rank: int, world: int) -> tuple[int, dict]:
    """Train one epoch (stopping early at `cfg.max_steps`); returns (the global step after it,
    the epoch's metrics: epoch, step, mean train_loss, epoch_seconds).

    Each rank takes its `per_rank` share of one shuffle seeded by (seed, epoch), so every
    rank computes the same order.
    """
    import torch
    from tqdm.auto import tqdm

    order = list(range(len(features)))
    random.Random(cfg.seed * 1000 + epoch).shuffle(order)
    mine = order[rank::world][: sched.per_rank] if world > 1 else order
    rm.network.train()
    bar = tqdm(total=sched.steps_per_epoch, desc=f"[{rm.name}] epoch {epoch}/{cfg.epochs}",
               disable=rank != 0 or not cfg.progress_bar, file=sys.stderr, mininterval=2.0, dynamic_ncols=True)
    run_loss, n_loss, t0 = 0.0, 0, time.time()
    for i in range(0, len(mine), cfg.batch_size):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        batch = rm.collate([features[j] for j in mine[i : i + cfg.batch_size]])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and opt.engine is None):
            loss, _ = rm.compute_loss(batch, opt.module)
        if opt.engine is not None:
            opt.engine.backward(loss)
            opt.engine.step()
        else:
            opt.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.network.parameters(), cfg.max_grad_norm)
            opt.optimizer.step()
            opt.scheduler.step()
        step += 1
        run_loss += loss.item()
        n_loss += 1
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss / n_loss:.4f}", lr=f"{opt.scheduler.get_last_lr()[0]:.2e}")
    bar.close()
    metrics: dict = {"epoch": epoch, "step": step, "train_loss": run_loss / max(1, n_loss),
                     "epoch_seconds": time.time() - t0}
    return step, metrics


def train_loop_per_worker(loop_config: dict) -> None:
    """One worker's training (Ray Train worker or this process).

    `loop_config`: {"config": RewardModelTrainConfig as dict, "splits": {"train", "dev"}
    examples or an ObjectRef to them, "output_dir": str, "local": bool}.
    """
    import torch

    cfg = RewardModelTrainConfig.model_validate(loop_config["config"])
    local = loop_config.get("local", False)
    quiet_transformers()
    session: Any = _LocalSession(Path(loop_config["output_dir"]), cfg.keep_checkpoints) if local else _RaySession()
    rank, world = session.world_rank, session.world_size
    splits = loop_config["splits"]
    if not isinstance(splits, dict):  # an ObjectRef: workers fetch the examples from the object store
        import ray

        splits = ray.get(splits)
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)

    rm = build_rm(cfg, device=_worker_device(cfg, local))
    if rm.kind == "segment_classifier":
        rm.class_weights = torch.tensor([1.0, cfg.error_class_weight])
    if rm.kind == "token_level":
        rm.changed_token_loss_weight = cfg.changed_token_loss_weight

    features, cut = _encode_training_inputs(rm, cfg, splits["train"], rank=rank)
    if rm.metadata.segment_features:
        _init_feature_head(rm, features, cfg.error_class_weight, log=rank == 0)
    sched = _schedule(len(features), world, cfg)
    opt = _prepare_optimisation(rm, cfg, world=world, total_steps=sched.total_steps)

    if rm.metadata.segment_features and splits["dev"]:
        # The warm-started feature head alone is a candidate too ("epoch 0"): with little
        # data, fine-tuning the encoder may add more noise than signal, and dev decides.
        _evaluate_and_report(rm, cfg, splits["dev"], {"epoch": 0, "step": 0, "train_loss": None}, cut, session,
                             opt.engine, rank)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        step, metrics = _train_epoch(rm, cfg, features, opt, sched, epoch=epoch, step=step, rank=rank, world=world)
        _evaluate_and_report(rm, cfg, splits["dev"], metrics, cut, session, opt.engine, rank)
        if cfg.max_steps and step >= cfg.max_steps:
            break


# ---------------------------------------------------------------------------- driver


def pick_best(checkpoints: list[tuple[Path, dict]]) -> tuple[Path, dict]:
    """The checkpoint with the highest dev metric; the earliest epoch among equals."""
    return max(checkpoints, key=lambda cm: (cm[1]["dev_metric"], -cm[1]["epoch"]))


def _copy_model_files(src: Path, dest: Path) -> None:
    """Copy a checkpoint's model files and folders (e.g. `feature_encoder/`) over `dest`'s."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
        elif item.is_dir():
            shutil.copytree(item, dest / item.name, dirs_exist_ok=True)


def _run_ray_train(cfg: RewardModelTrainConfig, splits: dict, output_dir: Path) -> tuple[Path, dict, list[dict]]:
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = False
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # Ray Train's PlacementGroupCleaner asks the State API whether the controller
            # is alive, finding the API server by auto-detection. With several local Ray
            # clusters on one machine it can ask the wrong one, hear "no such actor" and
            # remove our placement group mid-training. Point it at our own dashboard.
            port = free_port()
            ray.init(num_cpus=max(cfg.num_workers * cfg.cpus_per_worker, os.cpu_count() or 1),
                     include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                     runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
                     log_to_driver=True)
        started = True
    try:
        splits_ref = ray.put({"train": splits["train"], "dev": splits["dev"]})
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": cfg.model_dump(mode="json"), "splits": splits_ref,
                               "output_dir": str(output_dir), "local": False},
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                               **({"GPU": 1} if cfg.use_gpu else {})}),
            run_config=RunConfig(
                name=CHECKPOINTS_DIR,
                storage_path=str(output_dir.resolve()),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                   checkpoint_score_attribute="dev_metric",
                                                   checkpoint_score_order="max"),
            ),
        )
        result = trainer.fit()
        if result.error:
            raise result.error
        kept = [(Path(ckpt.path), metrics) for ckpt, metrics in result.best_checkpoints or []]
        if not kept:
            raise RuntimeError("Ray Train finished without any checkpoint")
        best_dir, best_metrics = pick_best(kept)
        return best_dir, best_metrics, [m for _, m in kept]
    finally:
        if started:
            ray.shutdown()


def train_reward_model(cfg: RewardModelTrainConfig) -> dict:
    """Train one RM as configured; returns the summary also written to `output_dir/train_summary.json`."""
    t_start = time.time()
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits, split_record = prepare_splits(cfg)
    t_fit = time.time()
    if cfg.use_ray_train:
        best_dir, best_metrics, history = _run_ray_train(cfg, splits, output_dir)
    else:
        loop_cfg = {"config": cfg.model_dump(mode="json"), "splits": {"train": splits["train"], "dev": splits["dev"]},
                    "output_dir": str(output_dir), "local": True}
        # Run the same worker function in-process; find its checkpoints afterwards.
        train_loop_per_worker(loop_cfg)
        kept = [(d, json.loads((d / "metrics.json").read_text()))
                for d in (output_dir / CHECKPOINTS_DIR).glob("epoch_*")]
        if not kept:
            raise RuntimeError("training finished without any checkpoint")
        best_dir, best_metrics = pick_best(kept)
        history = [m for _, m in kept]
    fit_seconds = time.time() - t_fit
    _copy_model_files(best_dir, output_dir)
    (output_dir / "metrics.json").unlink(missing_ok=True)

    rm = rm_class(cfg.task).load(output_dir, batch_size=cfg.eval_batch_size, device="cuda" if cfg.use_gpu else "cpu")
    meta: RMMetadata = rm.metadata
    if rm.kind == "sequence_preference":
        # μ/σ of the scores of the (distinct) training responses, for (R − μ)/σ in PPO.
        seen = {}
        for p in splits["train"]:
            seen[(p.prompt, p.chosen)] = None
            seen[(p.prompt, p.rejected)] = None
        keys = list(seen)
        scores = rm.score_texts([k[0] for k in keys], [k[1] for k in keys])
        mu = sum(scores) / len(scores)
        sd = math.sqrt(sum((s - mu) ** 2 for s in scores) / max(1, len(scores) - 1)) or 1.0
        meta.normalization = {"mean": mu, "std": sd, "n": len(scores)}
    summary = {
        "task": cfg.task,
        "name": meta.name,
        "best_epoch": best_metrics["epoch"],
        "best_dev_metric": best_metrics["dev_metric"],
        "dev_metric_name": cfg.resolved_dev_metric() if splits["dev"] else "-train_loss",
        "best_checkpoint": str(best_dir),
        "fit_seconds": fit_seconds,
        "total_seconds": time.time() - t_start,
        "use_ray_train": cfg.use_ray_train,
        "num_workers": cfg.num_workers,
        "strategy": cfg.resolved_strategy(),
        "split": split_record,
        "history": sorted(history, key=lambda m: m["epoch"]),
        "input_cuts": meta.training.get("input_cuts", {}),
        "normalization": meta.normalization,
    }
    meta.training = {"config": cfg.model_dump(mode="json"), **summary}
    (output_dir / METADATA_FILE).write_text(meta.to_json(), encoding="utf-8")
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    logger.info("saved %s RM to %s (best epoch %s, dev %s %.4f) in %.1fs", cfg.task, output_dir,
                summary["best_epoch"], summary["dev_metric_name"], summary["best_dev_metric"], summary["total_seconds"])
    return summary
