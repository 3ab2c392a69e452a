"""`fgrlhf train`: build the Ray actor groups from a `RunConfig` and drive the controller.

This module is the only place that knows both the config tree and the actor groups:
it starts (or joins) Ray, creates placement groups, rollout engines, scorer replicas,
the reference policy and the learner ranks, adapts them to the controller's service
interfaces, and runs the loop with metrics, evaluation and checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from fgrlhf_ray.infra import checkpoint
from fgrlhf_ray.control.audit import Auditor
from fgrlhf_ray.config import RunConfig, dump_config, load_config
from fgrlhf_ray.control.controller import PPOController, ScorerSpec
from fgrlhf_ray.control.services import PhaseFailed
from fgrlhf_ray.errors import ConfigError, FgrlhfError, RunFailed
from fgrlhf_ray.infra.chaos import ChaosMonkey
from fgrlhf_ray.infra.metrics import MetricsLogger, truncate_after
from fgrlhf_ray.launch.placement import ACTOR_ENV, init_ray, placement_groups
from fgrlhf_ray.launch.runtime import RayRuntime
from fgrlhf_ray.launch.services import RolloutService
from fgrlhf_ray.data.prompts import load_prompts
from fgrlhf_ray.infra.reliability import memory_over_limit
from fgrlhf_ray.workers.learner import LearnerSettings, LoRASettings
from fgrlhf_ray.rewards.diagnostics import progress_summary

log = logging.getLogger(__name__)

def learner_settings(config: RunConfig, *, pad_token_id: int) -> LearnerSettings:
    """The `LearnerSettings` every learner rank is built from (the one place config → learner)."""
    ppo, learner = config.ppo, config.learner
    lora = learner.lora
    return LearnerSettings(
        policy_path=config.policy.model_path, critic_path=learner.critic.model_path,
        zero_stage=learner.zero_stage, offload_optimizer=learner.offload_optimizer, bf16=learner.bf16,
        lr=ppo.lr, critic_lr=ppo.critic_lr, adam_eps=ppo.adam_eps,
        minibatch_size=ppo.minibatch_size, micro_batch_size=learner.micro_batch_size,
        grad_accum_steps=learner.grad_accum_steps, ppo_epochs=ppo.ppo_epochs,
        policy_clip=ppo.policy_clip, value_clip=ppo.value_clip, dual_clip=ppo.dual_clip,
        value_loss_coef=ppo.value_loss_coef, loss_aggregation=ppo.loss_aggregation, max_grad_norm=ppo.max_grad_norm,
        lora=(LoRASettings(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=tuple(lora.target_modules))
              if lora.enabled else None),
        seed=config.seed, pad_token_id=pad_token_id,
        use_critic=ppo.advantage_estimator == "gae",
        kl_loss_coef=ppo.kl_coef if ppo.kl_in == "loss" else 0.0,
        logprob_temperature=config.rollout.sampling.logprob_temperature,
    )


# ------------------------------------------------------------------ the run


class Trainer:
    """Owns the actor groups of one run; `run()` trains, `shutdown()` releases them."""

    def __init__(self, config: RunConfig, *, resume: str | None = None, force: bool = False,
                 config_path: str | None = None) -> None:
        self.config = config
        self.resume = resume
        self.force = force
        self.config_path = config_path  # for the "how to resume" messages
        self._stop_requested = False
        self._interrupts = 0
        self._failed_saves: list[dict] = []  # fault events of the checkpoint saves failed since the last good one
        self._unsaved: list[dict] = []  # those and the injected faults behind them: recovered at the next good save

    # -- construction -------------------------------------------------------------------

    def build(self) -> PPOController:
        """Start every actor group and wire them into the controller."""
        import ray

        config = self.config
        prompts, tokenizer, pad_token_id = self._load_inputs()
        init_ray(config)
        rollout_pg, learner_pg = placement_groups(config)
        ray.get([rollout_pg.ready(), learner_pg.ready()], timeout=config.ray.get_timeout_s)
        self.placement_groups = [rollout_pg] if rollout_pg is learner_pg else [rollout_pg, learner_pg]

        t0 = time.perf_counter()
        self.learner = self._start_learner(learner_pg, pad_token_id)
        self.reference = self._start_reference(pad_token_id)
        self.scorer_groups, self.audit_judge = self._start_scorers()
        self.rollout = self._start_rollout(rollout_pg)
        normalizations = ray.get([g.normalization() for g in self.scorer_groups], timeout=config.ray.get_timeout_s)
        self.startup_s = time.perf_counter() - t0
        log.info("placement (actor: node id): %s", json.dumps(self.actor_nodes()))
        weights = config.effective_reward_weights()
        specs = [ScorerSpec(name=rm.name, weight=weights[rm.name], mean=mean, std=std)
                 for rm, (mean, std) in zip(config.reward_models, normalizations)]

        probe_prompt = tokenizer(prompts[0])["input_ids"][: config.data.max_prompt_tokens]
        probe_response = tokenizer(" The answer is in the passage.", add_special_tokens=False)["input_ids"]
        run_dir = Path(config.logging.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(config))
        self.controller = PPOController(
            config=config,
            prompts=prompts,
            rollout=RolloutService(self.rollout, tokenizer, config.data.max_prompt_tokens),
            scorers=self.scorer_groups,
            scorer_specs=specs,
            reference=self.reference,
            learner=self.learner,
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            pad_token_id=pad_token_id,
            runtime=RayRuntime(),
            metrics=MetricsLogger(run_dir, tensorboard=config.logging.tensorboard),
            probe=(probe_prompt, probe_response),
            push_weights=self._weight_pusher(),
            auditor=(Auditor(config=config.audit, judge=self.audit_judge, seed=config.seed)
                     if self.audit_judge is not None else None),
            chaos=ChaosMonkey.from_env(),  # None unless a test set FGRLHF_CHAOS_SCHEDULE
        )
        return self.controller

    def _load_inputs(self):
        """Prompts, the policy tokenizer and its pad id; fails fast on missing files (before Ray starts)."""
        from transformers import AutoTokenizer

        config = self.config
        policy_path = config.policy.model_path
        if not Path(policy_path).exists() and not config.ray.address and not os.environ.get("RAY_ADDRESS"):
            raise ConfigError(f"policy.model_path: {policy_path} does not exist (train or SFT a policy first)")
        prompts = load_prompts(config.data.train_file, format=config.data.format,
                               prompt_field=config.data.prompt_field)
        self.dev_prompts = (load_prompts(config.data.dev_file, format=config.data.format,
                                         prompt_field=config.data.prompt_field) if config.data.dev_file else [])
        for rm in config.reward_models:
            if rm.path and not Path(rm.path).exists():
                raise ConfigError(f"reward model {rm.name!r}: path {rm.path} does not exist (train it first)")
        tokenizer = AutoTokenizer.from_pretrained(config.policy.tokenizer_path or policy_path)
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return prompts, tokenizer, pad_token_id

    def _start_learner(self, learner_pg, pad_token_id: int):
        from fgrlhf_ray.actors.learner import LearnerGroup

        config = self.config
        return LearnerGroup(
            world_size=config.learner.world_size,
            settings=learner_settings(config, pad_token_id=pad_token_id),
            placement_group=learner_pg,
            # colocate: rank i shares bundle i with engine i (the bundle holds both's CPUs).
            num_cpus_per_actor=config.learner.num_cpus_per_rank,
            num_gpus_per_actor=config.learner.num_gpus_per_rank,
            runtime_env={"env_vars": dict(ACTOR_ENV)},
            setup_timeout_s=config.ray.get_timeout_s,
            sync_dtype=config.policy.dtype,
        )

    def _start_reference(self, pad_token_id: int):
        from fgrlhf_ray.actors.reference import ReferenceGroup

        config = self.config
        # Ray restarts crashed actors (max_restarts) without re-running their tasks: the
        # controller retries the phase itself (ray.phase_retries), logging each fault.
        return ReferenceGroup(
            options=dict(num_cpus=1, max_restarts=config.ray.max_restarts, max_task_retries=0,
                         runtime_env={"env_vars": dict(ACTOR_ENV)}),
            num_threads=1, model_path=config.policy.model_path, dtype=config.policy.dtype,
            micro_batch_size=config.batch_geometry().micro_batch_size, pad_token_id=pad_token_id,
            logprob_temperature=config.rollout.sampling.logprob_temperature,
        )

    def _start_scorers(self):
        """One `ScorerGroup` per reward model, and the audit judge if configured."""
        from fgrlhf_ray.actors.scorer import ScorerGroup

        config = self.config
        groups = [ScorerGroup(config=rm, max_restarts=config.ray.max_restarts, resources=config.ray.scorer_resources)
                  for rm in config.reward_models]
        judge = None
        if config.audit.judge is not None:
            from fgrlhf_ray.actors.audit import AuditJudge

            judge = AuditJudge(config=config.audit.judge, max_restarts=config.ray.max_restarts,
                               resources=config.ray.scorer_resources)
        return groups, judge

    def _start_rollout(self, rollout_pg):
        from fgrlhf_ray.actors.rollout import RolloutGroup

        config, rollout = self.config, self.config.rollout
        return RolloutGroup(
            num_engines=rollout.num_engines,
            engine_kwargs=dict(
                model_path=config.policy.model_path, tokenizer_path=config.policy.tokenizer_path,
                tensor_parallel_size=rollout.tensor_parallel_size,
                gpu_memory_utilization=rollout.gpu_memory_utilization,
                kv_cache_space_gib=rollout.kv_cache_space_gib, dtype=config.policy.dtype, seed=config.seed,
                enforce_eager=rollout.enforce_eager, max_model_len=rollout.max_model_len,
            ),
            placement_group=rollout_pg,
            num_cpus=rollout.num_cpus_per_engine,
            num_gpus=rollout.num_gpus_per_engine,
            env_vars={**ACTOR_ENV, "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(rollout.kv_cache_space_gib)))},
            startup_timeout_s=config.ray.get_timeout_s,
            max_restarts=config.ray.max_restarts,
        )

    def _weight_pusher(self):
        """The broadcast sync's `push` for `learner.weight_sync: broadcast`; None: through the object store."""
        config = self.config
        if config.learner.weight_sync != "broadcast":
            return None
        from fgrlhf_ray.actors.weight_broadcast import BroadcastWeightSync

        self.weight_broadcast = BroadcastWeightSync(
            self.learner, self.rollout, backend=config.learner.weight_broadcast_backend(),
            bucket_bytes=int(config.learner.broadcast_bucket_mb * 1024**2),
            timeout_s=config.learner.broadcast_timeout_s, dtype=config.policy.dtype,
        )
        return self.weight_broadcast.push

    # -- checkpoints --------------------------------------------------------------------

    def save_checkpoint(self, *, last: bool = False) -> Path | None:
        """Write a checkpoint of the current step (`last`: the run's final one); None if the
        write failed (see `_save_failed`)."""
        import ray

        config = self.config
        root = config.checkpoint_dir()
        step = self.controller.step
        injected = self.controller.inject_chaos("checkpoint", step)  # tests only: a scheduled ENOSPC
        tmp = None
        try:
            tmp = checkpoint.begin(root, step)
            ray.get(self.learner.save_checkpoint(str(tmp)), timeout=self.controller.phase_timeout("checkpoint"))
            final = checkpoint.commit(root, tmp, step, controller_state=self.controller.state_dict(),
                                      config_yaml=dump_config(config), keep_last=config.checkpoint.keep_last)
        except OSError as exc:  # disk full, quota, permissions (a remote one arrives as a RayTaskError that is one)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            self._unsaved.extend(injected)
            self._save_failed(step, exc, last=last)
            return None
        now = time.time()
        for event in self._unsaved:
            event["recovered_after_s"] = now - event.get("injected_at", event.get("detected_at"))
        self._failed_saves.clear()
        self._unsaved.clear()
        log.info("checkpoint: %s", final)
        return final

    def _save_failed(self, step: int, exc: OSError, *, last: bool) -> None:
        """A failed save is a fault: the partial folder is gone, the previous checkpoint stays valid
        (`latest` still names it), and training goes on — unless this was the run's last save, or
        more than `ray.phase_retries` saves in a row failed (`RunFailed`)."""
        root = self.config.checkpoint_dir()
        previous = checkpoint.latest_checkpoint(root, warn=lambda _: None)
        kept = f"the last complete checkpoint {previous} stays valid" if previous else "no complete checkpoint exists yet"
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        event = {"step": step, "phase": "checkpoint", "participants": ["checkpoint"], "kind": "error",
                 "error": what, "attempt": len(self._failed_saves) + 1, "detected_at": time.time(),
                 "outcome": f"skipped; {kept}"}
        self.controller.fault_events.append(event)
        self._failed_saves.append(event)
        self._unsaved.append(event)
        log.error("checkpoint of step %d under %s failed (%s); %s", step, root, what, kept)
        if last or len(self._failed_saves) > self.config.ray.phase_retries:
            which = "the run's last checkpoint save" if last else f"{len(self._failed_saves)} checkpoint saves in a row"
            raise RunFailed(f"run stopped: {which} failed, the last at step {step} under {root} ({what}); {kept}. "
                            f"Free space there (or set checkpoint.dir) and resume with: {self._resume_command()}")

    def find_resume_checkpoint(self) -> Path | None:
        """The checkpoint `resume` names ("auto" = latest), checked against this run's config.

        Runs before any actor starts, so a wrong `--resume` fails in a second, not after
        the engines have loaded.
        """
        import yaml

        root = self.config.checkpoint_dir()
        # auto: the newest *valid* checkpoint; half-written or corrupt ones are skipped with a warning.
        target = checkpoint.latest_checkpoint(root) if self.resume == "auto" else Path(self.resume)
        if target is None:
            log.info("resume=auto: no checkpoint under %s, starting from scratch", root)
            return None
        if not (target / "controller.json").is_file() or not (target / "config.yaml").is_file():
            raise FgrlhfError(f"--resume {target}: not a complete checkpoint (no controller.json / config.yaml)")
        problem = checkpoint.checkpoint_problem(target)
        if problem:
            raise FgrlhfError(f"--resume {target}: the checkpoint is damaged ({problem}); pass an older one, "
                              f"or --resume auto to use the newest valid one")
        saved = yaml.safe_load((target / "config.yaml").read_text())
        mismatch = _incompatible(saved, self.config.model_dump(mode="json"))
        if mismatch and not self.force:
            raise FgrlhfError(f"checkpoint {target} was written by a different run ({mismatch}); "
                              f"pass --force to resume anyway")
        return target

    def restore(self, target: Path) -> int:
        """Load learner and controller state from `target`; returns its step."""
        import ray

        ray.get(self.learner.load_checkpoint(str(target)), timeout=self.controller.phase_timeout("checkpoint"))
        self.controller.load_state_dict(json.loads((target / "controller.json").read_text()))
        # The engines still hold the initial policy: bring them to the checkpoint's weights.
        self.controller.sync_weights({})
        # Steps after the checkpoint were lost with the interrupted run: drop their metric
        # rows so the file holds each step once (the earlier rows stay; new ones append).
        dropped = truncate_after(Path(self.config.logging.dir) / "metrics.jsonl", self.controller.step)
        if dropped:
            log.warning("resume: dropped %d metrics row(s) of step(s) after %d, lost with the interrupted run",
                        dropped, self.controller.step)
        log.info("resumed from %s at step %d", target, self.controller.step)
        return self.controller.step

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> list[dict]:
        from tqdm.auto import tqdm

        target = self.find_resume_checkpoint() if self.resume else None
        controller = self.build()
        if self.config.ray.memory_limit_gib:
            controller.step_hooks.append(lambda step: self.check_memory())
        if target is not None:
            self.restore(target)
        config = self.config
        total = config.ppo.total_steps
        every = config.checkpoint.every
        history: list[dict] = []
        saved_step: int | None = None
        # SIGTERM / first Ctrl-C: finish the current step, checkpoint, exit; a second
        # Ctrl-C abandons the step (the last checkpoint stays valid: saves are atomic).
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with tqdm(total=total, initial=controller.step, desc="ppo", unit="step", dynamic_ncols=True) as bar:
                while controller.step < total and not self._stop_requested:
                    try:
                        result = controller.train_step()
                    except PhaseFailed as exc:
                        if not exc.learner and history and saved_step != controller.step:
                            self.save_checkpoint()  # the learner is fine: keep the finished steps
                        raise RunFailed(self._failure_message(exc)) from exc
                    m = result.metrics
                    if config.logging.eval_every and self.dev_prompts and result.step % config.logging.eval_every == 0:
                        m.update(self.evaluate())
                    history.append(m)
                    bar.set_postfix(reward=f"{m['reward/total_mean']:.3f}", kl=f"{m['kl']:.3f}",
                                    s_per_step=f"{m['time/step']:.1f}",
                                    **progress_summary(m, [rm.name for rm in config.reward_models]))
                    bar.update(1)
                    if every and result.step % every == 0 and self.save_checkpoint() is not None:
                        saved_step = result.step
            controller.collect_audit(wait=True)  # the last audit's result, into audit.jsonl
            if self._stop_requested:
                log.warning("stop requested: saving a checkpoint at step %d", controller.step)
            if history and saved_step != controller.step:
                self.save_checkpoint(last=True)
            if self._stop_requested and controller.step < total:
                log.warning("stopped at step %d of %d; resume with: %s", controller.step, total, self._resume_command())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._write_fault_log()
            if controller.metrics is not None:
                controller.metrics.close()
        return history

    def _resume_command(self) -> str:
        return f"fgrlhf train --config {self.config_path or 'FILE'} --resume auto"

    def _failure_message(self, exc: PhaseFailed) -> str:
        last = checkpoint.latest_checkpoint(self.config.checkpoint_dir(), warn=lambda _: None)
        where = f"the last complete checkpoint is {last}" if last else "no checkpoint was written yet"
        return (f"run stopped: {exc}. Nothing after the last checkpoint is kept; {where}. "
                f"Resume with: {self._resume_command()}")

    def _write_fault_log(self) -> None:
        """Append this run's fault events to `<logging.dir>/faults.jsonl` (one JSON per fault)."""
        controller = getattr(self, "controller", None)
        events = getattr(controller, "fault_events", []) + getattr(controller, "injected_faults", [])
        if not events:
            return
        events = sorted(events, key=lambda e: e.get("detected_at", e.get("armed_at", 0.0)))
        with (Path(self.config.logging.dir) / "faults.jsonl").open("a", encoding="utf-8") as f:
            for event in events:
                f.write(json.dumps(event) + "\n")

    def actor_handles(self) -> dict[str, Any]:
        """Every actor of the run by name (rollout engines, scorer replicas, reference, learner ranks)."""
        handles = {f"rollout/{i}": a for i, a in enumerate(self.rollout.actors)}
        for group in self.scorer_groups:
            handles.update({f"scorer/{group.name}/{i}": a for i, a in enumerate(group.actors)})
        handles["reference"] = self.reference.actor
        if getattr(self, "audit_judge", None) is not None:
            handles["audit"] = self.audit_judge.actor
        handles.update({f"learner/{i}": a for i, a in enumerate(self.learner.actors)})
        return handles

    def actor_nodes(self) -> dict[str, str | None]:
        """{actor name: Ray node id} of every actor (where the placement put them)."""
        import ray

        handles = self.actor_handles()
        reports = ray.get([a.health.remote() for a in handles.values()], timeout=self.config.ray.get_timeout_s)
        return {name: r["node_id"] for name, r in zip(handles, reports)}

    def check_memory(self) -> dict[str, float]:
        """Resident memory of every actor; warns about those over `ray.memory_limit_gib`."""
        import ray

        handles = self.actor_handles()
        refs = {name: a.health.remote() for name, a in handles.items()}
        reports = {}
        for name, ref in refs.items():
            try:
                reports[name] = ray.get(ref, timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                log.warning("memory check: %s did not answer (%s)", name, type(exc).__name__)
        over = memory_over_limit(reports, self.config.ray.memory_limit_gib)
        for name, gib in over.items():
            log.warning("memory: actor %s (pid %s) uses %.2f GiB, over ray.memory_limit_gib=%g", name,
                        reports[name]["pid"], gib, self.config.ray.memory_limit_gib)
        return {"memory/max_actor_rss_gib": max((r["rss_bytes"] / 2**30 for r in reports.values()), default=0.0),
                "memory/over_limit": float(len(over))}

    def evaluate(self) -> dict[str, float]:
        """Mean reward of each RM on the dev prompts (one sample each, training sampling)."""
        return self.controller.evaluate(self.dev_prompts)

    def _request_stop(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt  # second Ctrl-C: abandon the step now
        log.warning("%s received: finishing the current step, then checkpointing and stopping "
                    "(Ctrl-C again to abandon the step)", signal.Signals(signum).name)
        self._stop_requested = True

    def shutdown(self) -> None:
        import ray

        for name in ("rollout", "learner"):
            group = getattr(self, name, None)
            if group is not None:
                group.shutdown()
        if ray.is_initialized():
            ray.shutdown()


def _incompatible(saved: dict, current: dict) -> str | None:
    """What makes a checkpoint unusable for this run: a different policy or RM set."""
    if saved.get("policy", {}).get("model_path") != current["policy"]["model_path"]:
        return f"policy.model_path {saved.get('policy', {}).get('model_path')!r} != {current['policy']['model_path']!r}"
    names = lambda cfg: [(rm["name"], rm["kind"], rm.get("path"), rm.get("target")) for rm in cfg.get("reward_models", [])]  # noqa: E731
    if names(saved) != names(current):
        return "a different reward-model set"
    return None


# ------------------------------------------------------------------ CLI


def _train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, args.overrides)
    trainer = Trainer(config, resume=args.resume, force=args.force, config_path=args.config)
    try:
        history = trainer.run()
    except KeyboardInterrupt:
        print(f"interrupted; resume with: fgrlhf train --config {args.config} --resume auto")
        return 130
    finally:
        trainer.shutdown()
    if history:
        last = history[-1]
        print(f"done: {len(history)} steps, last reward {last['reward/total_mean']:.4f}, "
              f"metrics in {Path(config.logging.dir) / 'metrics.jsonl'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from fgrlhf_ray.cli import add_config_arguments

    parser = subparsers.add_parser("train", help="fine-grained PPO on Ray (vLLM rollouts, RM scorers, DeepSpeed)")
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="DIR|auto",
                        help="continue from a checkpoint folder, or the latest complete one (auto)")
    parser.add_argument("--force", action="store_true", help="resume even if the checkpoint's config differs")
    parser.set_defaults(handler=_train)
