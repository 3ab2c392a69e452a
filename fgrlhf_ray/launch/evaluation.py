"""`fgrlhf eval`: generate with vLLM on Ray, score, measure, report (stdout + JSON).

The run uses the training components: a `RolloutGroup` of vLLM engine actors for the
policy (and, for the win rate, one for a reference policy), one `ScorerGroup` per
reward model (plus the preference judge and the toxicity scorer), and the reference-LM
perplexity as one Ray task. Prompts go out in rounds of `batch_prompts`; each round's
rollout is put in the object store once and every scorer starts on it at once, so
scoring overlaps the next round's generation. The progress bar advances per round,
then per finished scorer shard.

Nothing here is `@ray.remote`: actors come from `fgrlhf_ray.actors`; the one-shot
perplexity computation is wrapped with `ray.remote(...)` at the call site, because it
keeps no state between calls (a task, not an actor).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgrlhf_ray.errors import DataError, FgrlhfError
from fgrlhf_ray.evaluation.config import EvalConfig, load_eval_config
from fgrlhf_ray.evaluation.data import EvalItem, load_eval_items, load_reference_outputs
from fgrlhf_ray.evaluation.report import RMSpec, format_metrics, summarize
from fgrlhf_ray.types import RolloutBatch

log = logging.getLogger(__name__)


def _judge_config(path: str):
    from fgrlhf_ray.config import RewardModelConfig

    return RewardModelConfig(name="eval_preference_judge", kind="sequence_preference", density="sequence", path=path)


def required_cpus(config: EvalConfig) -> float:
    """Logical CPUs the eval's actors and task ask for (a local cluster is sized to fit)."""
    engines = config.rollout.num_engines * (2 if config.win_rate.reference_policy else 1)
    cpus = engines * config.rollout.num_cpus_per_engine
    cpus += sum(rm.num_replicas * rm.num_cpus for rm in config.reward_models)
    cpus += 1.0 if config.win_rate.preference_rm else 0.0
    cpus += config.toxicity.num_cpus if config.toxicity else 0.0
    cpus += config.perplexity.num_cpus if config.perplexity.reference_lm else 0.0
    return cpus


def _init_ray(config: EvalConfig) -> bool:
    """Start or join Ray; True when this call started (and so owns) the cluster connection."""
    import ray

    from fgrlhf_ray.launch.placement import ACTOR_ENV

    if ray.is_initialized():
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": dict(ACTOR_ENV)}
    tox = config.toxicity
    if tox is not None and tox.target and os.environ.get(tox.token_env):
        # The toxicity API key must reach the scorer actor, possibly on another node.
        runtime_env["env_vars"][tox.token_env] = os.environ[tox.token_env]
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        num_cpus = max(math.ceil(required_cpus(config)), os.cpu_count() or 1)
        # address="local": always a fresh cluster of our own, even when a `ray start` cluster runs
        # on this machine (plain ray.init() would silently join that one). Join it with
        # ray_address: auto (or RAY_ADDRESS=auto).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=True)
    return True


class _Bar:
    def __init__(self, enabled: bool, total: int, desc: str, unit: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _wait_all(refs: dict[str, list], *, timeout: float, bar: _Bar) -> dict[str, list]:
    """ray.get every list of refs, advancing `bar` as each ref finishes."""
    import ray

    flat = [r for rs in refs.values() for r in rs]
    pending, start = list(flat), time.perf_counter()
    while pending:
        remaining = timeout - (time.perf_counter() - start)
        if remaining <= 0:
            raise TimeoutError(f"eval: scoring did not finish within {timeout:.0f} s (get_timeout_s)")
        done, pending = ray.wait(pending, num_returns=1, timeout=remaining)
        bar.update(len(done))
    return {name: ray.get(rs) for name, rs in refs.items()}


def user_error(exc: BaseException) -> BaseException:
    """The `FgrlhfError` behind a Ray task/actor error (CLI prints it without a traceback), else `exc`."""
    cause = exc
    for _ in range(5):  # RayTaskError(.cause) chains, e.g. a task whose argument came from a failed task
        inner = getattr(cause, "cause", None)
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    return cause if isinstance(cause, FgrlhfError) else exc


def _concat(parts: list[list]) -> list:
    return [x for part in parts for x in part]


def _load_items(config: EvalConfig) -> tuple[list[EvalItem], dict[str, str] | None]:
    """The eval items and, with `win_rate.reference_outputs`, the reference response per prompt.

    Split out of `run_eval` so a prompt without a reference response fails before Ray starts.
    """
    items = load_eval_items(config.data.file, fmt=config.data.format, prompt_field=config.data.prompt_field,
                            references_field=config.data.references_field, limit=config.data.limit)
    prompts = [it.prompt for it in items]
    ref_map = None
    if config.win_rate.reference_outputs:
        ref_map = load_reference_outputs(config.win_rate.reference_outputs)
        missing = [p for p in prompts if p not in ref_map]
        if missing:
            raise DataError(f"{config.win_rate.reference_outputs}: no reference response for {len(missing)} of "
                            f"{len(prompts)} eval prompts (first: {missing[0][:80]!r}); generate them with "
                            "`fgrlhf eval` on the same --data")
    return items, ref_map


@dataclass
class _EvalActors:
    """Every actor group the eval starts, in one place, so `run_eval`'s `finally` stops each
    one that did start, even when start-up fails half-way."""

    engine_groups: list[Any] = field(default_factory=list)  # RolloutGroups, in the order they started
    scorer_groups: list[Any] = field(default_factory=list)  # one per reward model, then judge, then toxicity
    judge: Any = None  # ScorerGroup of the preference judge (win_rate.preference_rm), or None
    toxic: Any = None  # ScorerGroup of the toxicity scorer, or None

    def shutdown(self) -> None:
        import ray

        for group in self.engine_groups:
            group.shutdown()
        for g in self.scorer_groups:
            for actor in g.actors:
                ray.kill(actor)


def _engine_group(config: EvalConfig, model_path: str, tokenizer_path: str | None) -> Any:
    """A `RolloutGroup` of vLLM engines for one policy folder, from `config.rollout` (the policy
    and the reference policy are started alike)."""
    from fgrlhf_ray.actors.rollout import RolloutGroup
    from fgrlhf_ray.launch.placement import ACTOR_ENV

    rollout_cfg = config.rollout
    return RolloutGroup(
        num_engines=rollout_cfg.num_engines,
        engine_kwargs=dict(model_path=model_path, tokenizer_path=tokenizer_path,
                           tensor_parallel_size=rollout_cfg.tensor_parallel_size,
                           gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
                           kv_cache_space_gib=rollout_cfg.kv_cache_space_gib, dtype=config.policy.dtype,
                           seed=config.seed, enforce_eager=rollout_cfg.enforce_eager,
                           max_model_len=rollout_cfg.max_model_len),
        num_cpus=rollout_cfg.num_cpus_per_engine, num_gpus=rollout_cfg.num_gpus_per_engine,
        env_vars={**ACTOR_ENV, "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(rollout_cfg.kv_cache_space_gib)))},
    )


def _start_actors(config: EvalConfig, actors: _EvalActors) -> tuple[Any, Any]:
    """Start the scorer groups, then the policy and reference engine groups in parallel;
    returns (policy group, reference group or None).

    Each group is recorded in `actors` as soon as it exists (so a failure later in start-up
    still stops it). Scorers start first so that they load while the engines start.
    """
    from fgrlhf_ray.actors.scorer import ScorerGroup

    def engine_group(model_path: str, tokenizer_path: str | None) -> Any:
        group = _engine_group(config, model_path, tokenizer_path)
        actors.engine_groups.append(group)
        return group

    actors.scorer_groups.extend(ScorerGroup(config=rm) for rm in config.reward_models)
    judge = ScorerGroup(config=_judge_config(config.win_rate.preference_rm)) if config.win_rate.preference_rm else None
    toxic = ScorerGroup(config=config.toxicity.as_reward_model()) if config.toxicity else None
    actors.judge, actors.toxic = judge, toxic
    actors.scorer_groups.extend(g for g in (judge, toxic) if g is not None)
    with ThreadPoolExecutor(2) as pool:  # two engine groups start in parallel
        policy_f = pool.submit(engine_group, config.policy.model_path, config.policy.tokenizer_path)
        ref_f = (pool.submit(engine_group, config.win_rate.reference_policy, None)
                 if config.win_rate.reference_policy else None)
        policy_group = policy_f.result()
        ref_group = ref_f.result() if ref_f else None
    return policy_group, ref_group


def _generate_rounds(config: EvalConfig, prompts: list[str], policy: Any, reference: Any, actors: _EvalActors, *,
                     progress: bool) -> tuple[RolloutBatch, list[RolloutBatch], dict[str, list]]:
    """Generate in rounds of `batch_prompts`; every scorer but the judge starts on a round as
    soon as it is out, so scoring overlaps the next round's generation.

    Returns the merged policy rollout (`len(prompts) * n_samples_per_prompt` responses,
    `prompt_index` into `prompts`), the reference policy's per-round rollouts (one response
    per prompt; empty without a reference policy) and the score refs per scorer name (one
    ref per round).
    """
    import ray

    from fgrlhf_ray.actors.group import collect
    from fgrlhf_ray.actors.rollout import merge_rollouts

    sampling = config.rollout.sampling.model_dump()
    k = config.rollout.sampling.n_samples_per_prompt
    parts, ref_parts = [], []
    score_refs: dict[str, list] = {g.name: [] for g in actors.scorer_groups if g is not actors.judge}
    bar = _Bar(progress, len(prompts), "eval: generate", "prompt")
    for lo in range(0, len(prompts), config.batch_prompts):
        chunk = prompts[lo : lo + config.batch_prompts]
        # seed + lo: prompt i is sampled with seed + i whatever the round size.
        generated = policy.generate(chunk, n=k, sampling=sampling, seed=config.seed + lo)
        ref_generated = (reference.generate(chunk, n=1, sampling=sampling, seed=config.seed + lo)
                         if reference else None)  # both policies generate at once
        batch: RolloutBatch = collect(generated, timeout_s=config.get_timeout_s, what="eval: generate")
        batch.prompt_index = [lo + i for i in batch.prompt_index]
        parts.append(batch)
        handle = ray.put(batch)
        for g in actors.scorer_groups:
            if g is not actors.judge:
                score_refs[g.name].append(g.score(handle, len(batch)))
        if ref_generated is not None:
            ref_parts.append(collect(ref_generated, timeout_s=config.get_timeout_s,
                                     what="eval: generate (reference policy)"))
        bar.update(len(chunk))
    bar.close()
    return merge_rollouts(parts), ref_parts, score_refs


def _submit_whole_rollout_scores(config: EvalConfig, rollout: RolloutBatch, ref_parts: list[RolloutBatch],
                                 ref_map: dict[str, str] | None, judge: Any,
                                 score_refs: dict[str, list]) -> list[str] | None:
    """Start what needs every response: the reference-LM perplexity task (`score_refs["__perplexity"]`)
    and the preference judge (`score_refs["__judge"]`); returns the reference responses the judge
    compares against (one per policy response), or None without a judge.

    The judge scores one batch of `2 * len(rollout)` rows: the policy's responses, then the
    reference's for the same prompts.
    """
    import ray

    from fgrlhf_ray.actors.rollout import merge_rollouts
    from fgrlhf_ray.evaluation.perplexity import reference_lm_nll

    if config.perplexity.reference_lm:
        ppl = config.perplexity
        task = ray.remote(reference_lm_nll).options(num_cpus=ppl.num_cpus, num_gpus=ppl.num_gpus)
        score_refs["__perplexity"] = [task.remote(ppl.reference_lm, rollout.prompts, rollout.responses,
                                                  batch_size=ppl.batch_size, max_length=ppl.max_length,
                                                  num_threads=max(1, int(ppl.num_cpus)))]
    reference_responses = None
    if judge is not None:
        if ref_map is not None:
            reference_responses = [ref_map[p] for p in rollout.prompts]
        else:
            first = merge_rollouts(ref_parts)
            reference_responses = [first.responses[i] for i in rollout.prompt_index]
        pairs = RolloutBatch(prompts=rollout.prompts * 2, prompt_ids=[],
                             responses=rollout.responses + reference_responses, response_ids=[], logprobs=[],
                             prompt_index=[])
        score_refs["__judge"] = [judge.score(ray.put(pairs), 2 * len(rollout))]
    return reference_responses


def _summarize(config: EvalConfig, items: list[EvalItem], rollout: RolloutBatch, results: dict[str, list],
               normalizations: list, actors: _EvalActors,
               reference_responses: list[str] | None) -> tuple[dict, list[dict]]:
    """The metrics and the per-generation rows from the gathered scorer results (`summarize`'s
    arguments unpacked from the per-scorer lists of per-round verdicts)."""
    weights = config.effective_reward_weights()
    specs = [RMSpec(rm.name, weights[rm.name], mean, std)
             for rm, (mean, std) in zip(config.reward_models, normalizations)]
    verdicts = {rm.name: _concat(results[rm.name]) for rm in config.reward_models}
    preference = None
    if actors.judge is not None:
        scores = [sum(s.value for s in v.segments) for v in results["__judge"][0]]
        preference = (scores[: len(rollout)], scores[len(rollout):])
    toxicity = None
    if actors.toxic is not None:
        toxicity = [v.segments[0].probability for v in _concat(results[actors.toxic.name])]
    return summarize(
        items=items, rollout=rollout, verdicts=verdicts, specs=specs, relevance=config.ratios.relevance,
        factuality=config.ratios.factuality, completeness=config.ratios.completeness,
        nll=results["__perplexity"][0] if "__perplexity" in results else None, preference=preference,
        reference_responses=reference_responses, tie_tolerance=config.win_rate.tie_tolerance, toxicity=toxicity,
        toxicity_threshold=config.toxicity.threshold if config.toxicity else 0.5,
    )


def run_eval(config: EvalConfig, *, progress: bool = True) -> dict:
    """Evaluate `config.policy` on `config.data`; writes the report and generations; returns the report."""
    import ray
    from transformers import AutoTokenizer

    from fgrlhf_ray.launch.services import RolloutService

    t_start = time.perf_counter()
    config.check_paths()
    items, ref_map = _load_items(config)
    prompts = [it.prompt for it in items]
    tok_path = config.policy.tokenizer_path or config.policy.model_path
    tokenizer = AutoTokenizer.from_pretrained(tok_path)

    owns_ray = _init_ray(config)
    actors = _EvalActors()
    try:
        policy_group, ref_group = _start_actors(config, actors)
        normalizations = ray.get([g.normalization() for g in actors.scorer_groups[: len(config.reward_models)]],
                                 timeout=config.get_timeout_s)
        startup_s = time.perf_counter() - t_start
        policy = RolloutService(policy_group, tokenizer, config.data.max_prompt_tokens)
        reference = (RolloutService(ref_group, AutoTokenizer.from_pretrained(config.win_rate.reference_policy),
                                    config.data.max_prompt_tokens) if ref_group else None)

        t_gen = time.perf_counter()
        rollout, ref_parts, score_refs = _generate_rounds(config, prompts, policy, reference, actors,
                                                          progress=progress)
        generate_s = time.perf_counter() - t_gen

        t_score = time.perf_counter()
        reference_responses = _submit_whole_rollout_scores(config, rollout, ref_parts, ref_map, actors.judge,
                                                           score_refs)
        bar = _Bar(progress, sum(map(len, score_refs.values())), "eval: score", "part")
        results = _wait_all(score_refs, timeout=config.get_timeout_s, bar=bar)
        bar.close()
        score_s = time.perf_counter() - t_score
    except Exception as exc:
        # A user error raised inside an actor (a refused API key, a bad model folder) arrives
        # wrapped in Ray's RayTaskError with the remote traceback: show the plain message.
        raise user_error(exc) from None
    finally:
        actors.shutdown()
        if owns_ray:
            ray.shutdown()

    metrics, rows = _summarize(config, items, rollout, results, normalizations, actors, reference_responses)
    report = {
        "metrics": metrics,
        "timing": {"total_s": time.perf_counter() - t_start, "startup_s": startup_s, "generate_s": generate_s,
                   "score_s": score_s},
        "policy": config.policy.model_path,
        "data": config.data.file,
        "generations": str(config.generations_path()),
        "config": config.model_dump(mode="json"),
    }
    _write_atomic(config.generations_path(), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_atomic(Path(config.output), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a crash never leaves a half-written report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------ CLI


def _flag(key: str, value: Any) -> str:
    """A `--set`-style override for a command-line flag (JSON is valid YAML: paths stay strings)."""
    return f"{key}={json.dumps(value)}"


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The explicit flags as overrides. They are applied before the user's `--set`s and
    validated together with them, so `--toxicity URL --set toxicity.threshold=0.3` works."""
    from fgrlhf_ray.config import load_config

    out: list[str] = []
    if args.policy:
        out.append(_flag("policy.model_path", args.policy))
    if args.data:
        out.append(_flag("data.file", args.data))
    if args.limit:
        out.append(_flag("data.limit", args.limit))
    if args.samples:
        out.append(_flag("rollout.sampling.n_samples_per_prompt", args.samples))
    if args.reward_config:
        run = load_config(args.reward_config)  # a run config, or a file holding just `reward_models:`
        weights = run.effective_reward_weights()
        rms = [rm.model_dump(mode="json", exclude_unset=True) | {"weight": weights[rm.name]}
               for rm in run.reward_models]
        out.append(_flag("reward_models", rms))
    if args.reference_lm:
        out.append(_flag("perplexity.reference_lm", args.reference_lm))
    for key in ("preference_rm", "reference_outputs", "reference_policy"):
        if getattr(args, key):
            out.append(_flag(f"win_rate.{key}", getattr(args, key)))
    if args.reference_outputs:
        out.append(_flag("win_rate.reference_policy", None))
    if args.reference_policy:
        out.append(_flag("win_rate.reference_outputs", None))
    if args.toxicity:
        source, other = ("target", "path") if args.toxicity.startswith(("http://", "https://")) else ("path", "target")
        out += [_flag(f"toxicity.{source}", args.toxicity), _flag(f"toxicity.{other}", None)]
    if args.out:
        out.append(_flag("output", args.out))
    return out


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The eval config: `--config` (or defaults), then the explicit flags, then `--set`."""
    return load_eval_config(args.config, flag_overrides(args) + list(args.overrides))


def _eval(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    report = run_eval(config, progress=not args.no_progress)
    print(f"eval: {config.policy.model_path} on {config.data.file}")
    print(format_metrics(report["metrics"]))
    t = report["timing"]
    print(f"wrote {config.output} and {report['generations']} ({t['total_s']:.1f} s: start-up {t['startup_s']:.1f}, "
          f"generate {t['generate_s']:.1f}, score {t['score_s']:.1f})", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from fgrlhf_ray.cli import add_config_arguments

    p = subparsers.add_parser(
        "eval", help="generate with vLLM on Ray and report Rouge, RM rewards and ratios, length, dist-n, "
                     "perplexity, win rate, toxicity (stdout + JSON)")
    p.add_argument("--policy", help="policy folder to evaluate (policy.model_path)")
    p.add_argument("--data", help="eval prompts: QA-FEEDBACK JSON, JSONL, RealToxicityPrompts JSONL (data.file)")
    p.add_argument("--reward-config", help="YAML with `reward_models:` (a training config works): reported RMs")
    p.add_argument("--config", help="eval config YAML (see configs/eval_qa.yaml, configs/eval_detox.yaml)")
    add_config_arguments(p)
    p.add_argument("--out", help="report JSON (default eval/report.json); generations beside it")
    p.add_argument("--samples", type=int, help="samples per prompt (rollout.sampling.n_samples_per_prompt)")
    p.add_argument("--limit", type=int, help="evaluate only the first N prompts")
    p.add_argument("--reference-lm", help="HF causal LM for perplexity (perplexity.reference_lm)")
    p.add_argument("--preference-rm", help="sequence_preference RM judging the win rate (win_rate.preference_rm)")
    p.add_argument("--reference-outputs", help="generations JSONL of the reference policy (win_rate.reference_outputs)")
    p.add_argument("--reference-policy", help="reference policy folder to generate with (win_rate.reference_policy)")
    p.add_argument("--toxicity", help="toxicity classifier folder or Perspective-style API URL (toxicity.path/target)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_eval)
