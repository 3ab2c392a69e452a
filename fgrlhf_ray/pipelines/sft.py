"""Supervised fine-tuning of the (tiny) policy on (prompt, answer) pairs, plain torch.

`run_sft(config)` reads a QA-FEEDBACK-style prompts file (`text` = prompt, `answer[0]` =
target), builds a fresh tiny policy (`fgrlhf_ray.pipelines.tiny_policy`) or loads `init_from`, trains
with AdamW on the answer tokens (prompt tokens get `prompt_loss_weight`, 0 by default;
padding is masked out; EOS is appended to every answer so that sampling stops), saves
model + tokenizer, then
samples dev answers with HF `generate` (top-k 20, temperature 0.7 by default) and, for
the synthetic task, scores them with the oracle (`fgrlhf_ray.data.synthetic`).

CLI: `fgrlhf sft --config configs/sft_demo.yaml [--set key=value ...]`.
Imports no ray / vllm / deepspeed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pydantic import Field

from fgrlhf_ray.config import StrictModel
from fgrlhf_ray.errors import DataError
from fgrlhf_ray.pipelines.tiny_policy import TinyPolicyConfig


class SFTEvalConfig(StrictModel):
    """Sampling after training, scored with the synthetic oracle when the data allow it."""

    n_prompts: int = Field(64, ge=0)
    """Dev prompts to answer after training (0 = skip the evaluation)."""

    samples_per_prompt: int = Field(1, ge=1)
    """Sampled answers per prompt."""

    temperature: float = Field(0.7, gt=0.0)
    """Sampling temperature (paper A: 0.7)."""

    top_k: int = Field(20, ge=0)
    """Top-k sampling (paper A: 20; 0 disables)."""

    max_new_tokens: int = Field(96, ge=1)
    """Maximum answer length in tokens."""

    batch_size: int = Field(32, ge=1)
    """Prompts per `generate` call."""

    greedy: bool = True
    """Also decode greedily and report its oracle metrics (the policy's mode)."""


class SFTConfig(StrictModel):
    """Supervised fine-tuning of the policy (`fgrlhf sft`)."""

    data_dir: str = "outputs/demo/data"
    """Folder with the prompts files (`fgrlhf data synth --out` writes one)."""

    train_file: str = "train.json"
    """Training prompts in `data_dir`: a JSON list with `text` (prompt) and `answer` (list; [0] is the target)."""

    eval_file: str = "dev.json"
    """Evaluation prompts in `data_dir` (same format)."""

    synthesize_if_missing: bool = True
    """If `data_dir/train_file` does not exist, generate the synthetic world there first."""

    synth_n: int = Field(2000, ge=10)
    """Questions to generate when synthesizing (80/10/10 train/dev/test)."""

    synth_seed: int = 0
    """World seed when synthesizing."""

    output_dir: str = "outputs/demo/sft"
    """Where the fine-tuned model, tokenizer and `sft_metrics.json` are written."""

    init_from: str | None = None
    """An existing HF causal-LM folder to fine-tune; null = build a new tiny policy from `policy`."""

    policy: TinyPolicyConfig = Field(default_factory=TinyPolicyConfig)
    """Architecture and tokenizer size of a newly built policy (ignored with `init_from`)."""

    answer_prefix: str = " "
    """Put between prompt and answer; the synthetic prompts end in "answer:", so answers start with a space."""

    seed: int = 0
    """Seed of initialisation, data order and sampling."""

    epochs: float = Field(3.0, gt=0)
    """Passes over the training pairs (fractional allowed); `max_steps` caps it."""

    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (null = run the epochs)."""

    batch_size: int = Field(16, ge=1)
    """Pairs per optimizer step."""

    lr: float = Field(2e-3, gt=0)
    """Peak AdamW learning rate."""

    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine decay ends at lr * min_lr_ratio."""

    warmup_steps: int = Field(30, ge=0)
    """Linear warm-up steps."""

    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""

    grad_clip: float = Field(1.0, gt=0)
    """Clip the global gradient norm to this value."""

    prompt_loss_weight: float = Field(0.0, ge=0, le=1)
    """Weight of next-token loss on prompt tokens relative to answer tokens (0 = answer-only SFT).
    A small weight teaches a tiny from-scratch model to copy names: every passage repeats its
    title, so prompts are full of copy examples that answer tokens alone supply too slowly."""

    max_prompt_tokens: int = Field(448, ge=1)
    """Pairs whose prompt is longer are skipped (and counted in the log)."""

    max_answer_tokens: int = Field(96, ge=1)
    """Answers (EOS included) are cut to this many tokens."""

    num_threads: int | None = Field(None, ge=1)
    """torch CPU threads (null = torch's default)."""

    log_every: int = Field(20, ge=1)
    """Record the mean training loss every k steps."""

    progress_bar: bool = True
    """Show a tqdm bar with the running loss."""

    eval: SFTEvalConfig = Field(default_factory=SFTEvalConfig)
    """Sampling and oracle scoring after training."""


@dataclass
class SFTResult:
    output_dir: Path
    steps: int
    losses: list[float]  # (steps,) answer-token loss of each optimizer step
    wall_time_s: float  # training loop only
    eval: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ data


def load_pairs(path: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """(records, [(prompt, answer)]) from a prompts file; raises DataError naming the row."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"SFT data file not found: {path}. Generate it with `fgrlhf data synth --out {path.parent}` "
            "or set data_dir / train_file."
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    pairs = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise DataError(f"{path}: row {i} has no string 'text' field")
        ans = r.get("answer")
        if not (isinstance(ans, list) and ans and isinstance(ans[0], str)):
            raise DataError(f"{path}: row {i} needs 'answer' as a non-empty list of strings")
        pairs.append((r["text"], ans[0]))
    return rows, pairs


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], *, answer_prefix: str,
                 max_prompt_tokens: int, max_answer_tokens: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Token ids (prompt_ids, answer_ids + [eos]) per pair, and how many were skipped.

    Prompt and answer are tokenized separately — exactly how the policy sees them at
    rollout time (prompt tokens, then sampled tokens).
    """
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    answers = tokenizer([answer_prefix + a for _, a in pairs], add_special_tokens=False)["input_ids"]
    out, skipped = [], 0
    for p, a in zip(prompts, answers):
        if len(p) > max_prompt_tokens:
            skipped += 1
            continue
        out.append((p, (a + [tokenizer.eos_token_id])[:max_answer_tokens]))
    return out, skipped


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded batch. Returns input_ids (B, T), attention_mask (B, T) and labels (B, T)
    where labels = input_ids on answer tokens and −100 on prompt and padding (ignored).
    `attention_mask - (labels != -100)` marks the prompt tokens."""
    import torch

    T = max(len(p) + len(a) for p, a in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, (p, a) in enumerate(examples):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(a)
    return ids, mask, labels


def sft_loss(logits, input_ids, attention_mask, labels, prompt_weight: float = 0.0):
    """Weighted next-token cross-entropy. Returns (loss, answer_loss).

    logits: (B, T, V) for input_ids (B, T); position t predicts token t+1. Weights of
    target tokens: 1 on answer tokens (labels != −100), `prompt_weight` on prompt tokens,
    0 on padding.
        loss        = Σ_t w_t · CE_t / Σ_t w_t
        answer_loss = mean CE over answer tokens (the answer-only SFT loss; reported)
    """
    import torch.nn.functional as F

    targets = input_ids[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                         reduction="none").view_as(targets)
    is_answer = (labels[:, 1:] != -100).float()
    is_prompt = attention_mask[:, 1:].float() - is_answer
    answer_loss = (ce * is_answer).sum() / is_answer.sum().clamp(min=1)
    w = is_answer + prompt_weight * is_prompt
    return (ce * w).sum() / w.sum().clamp(min=1e-8), answer_loss


def lr_at(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr: linear warm-up over `warmup` steps, then cosine to `min_ratio`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# -------------------------------------------------------------------------- sampling


def generate_responses(model, tokenizer, prompts: Sequence[str], *, temperature: float = 0.7,
                       top_k: int = 20, max_new_tokens: int = 96, batch_size: int = 32,
                       greedy: bool = False, seed: int = 0) -> list[str]:
    """Decode answers with HF `generate` (left-padded batches); returns the new text only."""
    import torch

    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False)
            kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature,
                                                               top_k=top_k or None, top_p=1.0)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def evaluate_policy(model, tokenizer, records: Sequence[dict], cfg: SFTEvalConfig, *, seed: int) -> dict:
    """Sample answers for `records` and score them with the synthetic oracle.

    Returns {"sampled": metrics, "greedy": metrics (if cfg.greedy), "examples": [...]};
    metrics are `oracle_metrics` plus `seconds`. For non-synthetic records (the oracle
    raises DataError) only lengths and examples are reported.
    """
    from fgrlhf_ray.data.synthetic import oracle_metrics

    records = list(records)[: cfg.n_prompts]
    prompts = [r["text"] for r in records]
    result: dict = {}
    modes = [("sampled", False)] + ([("greedy", True)] if cfg.greedy else [])
    for name, greedy in modes:
        t0 = time.perf_counter()
        reps = 1 if greedy else cfg.samples_per_prompt
        flat = generate_responses(model, tokenizer, [p for p in prompts for _ in range(reps)],
                                  temperature=cfg.temperature, top_k=cfg.top_k,
                                  max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                  greedy=greedy, seed=seed)
        secs = time.perf_counter() - t0
        grouped = [flat[i * reps : (i + 1) * reps] for i in range(len(records))]
        try:
            metrics = oracle_metrics(records, grouped)
        except DataError:
            metrics = {"mean_words": sum(len(x.split()) for x in flat) / max(1, len(flat))}
        metrics["seconds"] = secs
        result[name] = metrics
        result.setdefault("examples", [])
        for r, g in list(zip(records, grouped))[:5]:
            result["examples"].append({"mode": name, "question": r.get("question"),
                                       "gold": r["answer"][0], "response": g[0]})
    return result


# -------------------------------------------------------------------------- training


def _ensure_data(cfg: SFTConfig) -> Path:
    data_dir = Path(cfg.data_dir)
    if not (data_dir / cfg.train_file).exists() and cfg.synthesize_if_missing:
        from fgrlhf_ray.data.synthetic import write_synthetic_dataset

        write_synthetic_dataset(data_dir, n=cfg.synth_n, seed=cfg.synth_seed)
    return data_dir


def _train_loop(cfg: SFTConfig, model, tokenizer, examples, opt, gen, bar, total: int,
                losses: list[float], log: list[dict], log_file, t0: float) -> None:
    """The optimizer steps; appends to `losses` (answer loss per step) and `log`."""
    import torch

    order: list[int] = []
    for step in bar:
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch_idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        ids, mask, labels = collate([examples[i] for i in batch_idx], tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_at(step, total=total, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss, answer_loss = sft_loss(logits, ids, mask, labels, cfg.prompt_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(answer_loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            recent = losses[-cfg.log_every:]
            log.append({"step": step + 1, "loss": sum(recent) / len(recent),
                        "grad_norm": float(gnorm), "lr": opt.param_groups[0]["lr"],
                        "elapsed_s": time.perf_counter() - t0})
            log_file.write(json.dumps(log[-1]) + "\n")
            log_file.flush()


def run_sft(cfg: SFTConfig) -> SFTResult:
    """Train, save, evaluate (see module docstring). Writes `output_dir/sft_metrics.json`."""
    import torch
    from tqdm.auto import tqdm

    from fgrlhf_ray.pipelines.tiny_policy import build_tiny_policy, save_policy, train_tokenizer

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    data_dir = _ensure_data(cfg)
    _, pairs = load_pairs(data_dir / cfg.train_file)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    if cfg.init_from:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.init_from)
        model = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        if tokenizer.eos_token_id is None:
            raise DataError(f"init_from={cfg.init_from}: the tokenizer has no eos_token; SFT appends it to answers.")
        if tokenizer.pad_token_id is None:  # padding is masked out, any id will do
            tokenizer.pad_token = tokenizer.eos_token
    else:
        # The tokenizer sees prompts and answers: byte-level BPE merges for the names.
        texts = [p for p, _ in pairs] + [cfg.answer_prefix + a for _, a in pairs]
        tokenizer = train_tokenizer(texts, vocab_size=cfg.policy.vocab_size,
                                    model_max_length=cfg.policy.max_position_embeddings)
        model = build_tiny_policy(tokenizer=tokenizer, config=cfg.policy, seed=cfg.seed)
    max_pos = model.config.max_position_embeddings
    examples, skipped = encode_pairs(tokenizer, pairs, answer_prefix=cfg.answer_prefix,
                                     max_prompt_tokens=min(cfg.max_prompt_tokens, max_pos - cfg.max_answer_tokens),
                                     max_answer_tokens=cfg.max_answer_tokens)
    if not examples:
        raise DataError(
            f"{data_dir / cfg.train_file}: all {len(pairs)} prompts exceed max_prompt_tokens="
            f"{cfg.max_prompt_tokens} (or max_position_embeddings - max_answer_tokens); raise them."
        )

    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)  # no decay on norms and biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = (out_dir / "sft_log.jsonl").open("w")  # progress readable while training runs
    model.train()
    losses: list[float] = []
    log: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(range(total), desc="sft", disable=not cfg.progress_bar, dynamic_ncols=True)
    try:
        _train_loop(cfg, model, tokenizer, examples, opt, gen, bar, total, losses, log, log_file, t0)
    finally:
        bar.close()
        log_file.close()
    wall = time.perf_counter() - t0

    out = save_policy(model, tokenizer, cfg.output_dir,
                      extra={"sft_config": cfg.model_dump(), "steps": total})
    metrics: dict = {"steps": total, "train_pairs": len(examples), "skipped_long_prompts": skipped,
                     "wall_time_s": wall, "n_parameters": sum(p.numel() for p in model.parameters()),
                     "vocab_size": len(tokenizer), "log": log}
    eval_result: dict = {}
    eval_path = data_dir / cfg.eval_file
    if cfg.eval.n_prompts > 0 and eval_path.exists():
        records, _ = load_pairs(eval_path)
        eval_result = evaluate_policy(model, tokenizer, records, cfg.eval, seed=cfg.seed)
        metrics["eval"] = eval_result
    (out / "sft_metrics.json").write_text(json.dumps(metrics, indent=2))
    return SFTResult(output_dir=out, steps=total, losses=losses, wall_time_s=wall, eval=eval_result)


# ------------------------------------------------------------------------------- CLI


def _load_config(path: str, overrides: list[str]) -> SFTConfig:
    from fgrlhf_ray.config import load_model_from_yaml

    return load_model_from_yaml(SFTConfig, path, overrides)


def cmd_sft(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config, args.overrides)
    res = run_sft(cfg)
    line = f"SFT: {res.steps} steps in {res.wall_time_s:.0f}s; final loss {res.losses[-1]:.3f}; saved {res.output_dir}"
    print(line)
    for mode in ("sampled", "greedy"):
        m = res.eval.get(mode)
        if m and "mean_quality" in m:
            print(f"  oracle ({mode}): quality {m['mean_quality']:.2f}, perfect {m['perfect_rate']:.2f}, "
                  f"missing {m['missing_rate']:.2f}, any-error {m['frac_with_any_error']:.2f}, "
                  f"words {m['mean_words']:.1f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `fgrlhf sft --config FILE [--set key=value ...]`."""
    p = subparsers.add_parser("sft", help="supervised fine-tuning of the (tiny) policy",
                              description="Train the policy on (prompt, answer) pairs; see configs/sft_demo.yaml.")
    p.add_argument("--config", required=True, help="SFT YAML config (fields: fgrlhf_ray.pipelines.sft.SFTConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set max_steps=100 (value parsed as YAML; repeatable)")
    p.set_defaults(handler=cmd_sft)
    return p
