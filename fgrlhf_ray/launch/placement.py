"""Starting or joining Ray, and where the actor groups go (placement groups)."""

from __future__ import annotations

import os

from fgrlhf_ray.config import RunConfig

# vLLM-CPU / DeepSpeed-CPU need these in every actor process (runtime_env), and
# `VLLM_ALLOW_INSECURE_SERIALIZATION` lets vLLM's collective_rpc carry our weight loader.
ACTOR_ENV = {
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
}


def required_cpus(config: RunConfig) -> float:
    """Logical CPUs the actor groups ask for (a local cluster is sized to fit them)."""
    rollout = config.rollout.num_engines * config.rollout.num_cpus_per_engine
    scorers = sum(rm.num_replicas * rm.num_cpus for rm in config.reward_models)
    learner = config.learner.world_size * config.learner.num_cpus_per_rank
    reference = 1.0
    judge = config.audit.judge.num_cpus if config.audit.judge is not None else 0.0
    return rollout + scorers + learner + reference + judge


def init_ray(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": dict(ACTOR_ENV)}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    # Local cluster: logical CPUs sized to the actor groups so the run schedules on a
    # small laptop too; the OS shares the real cores between them.
    num_cpus = max(int(required_cpus(config) + 0.999), os.cpu_count() or 1)
    # address="local": start our own cluster even if `ray start` left one on this machine
    # (a bare ray.init() would join it, and then refuse num_cpus).
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=True)


def placement_groups(config: RunConfig):
    """Placement groups per config: one per group (separate) or one shared (colocate)."""
    from ray.util.placement_group import placement_group

    if config.ray.placement == "colocate":
        width = max(config.rollout.num_engines, config.learner.world_size)
        bundles = [{"CPU": config.rollout.num_cpus_per_engine + config.learner.num_cpus_per_rank,
                    **({"GPU": config.learner.num_gpus_per_rank} if config.learner.num_gpus_per_rank else {})}
                   for _ in range(width)]
        pg = placement_group(bundles, strategy="PACK")
        return pg, pg
    rollout_pg = placement_group([{"CPU": config.rollout.num_cpus_per_engine,
                                   **({"GPU": config.rollout.num_gpus_per_engine}
                                      if config.rollout.num_gpus_per_engine else {}),
                                   **config.ray.rollout_resources} for _ in range(config.rollout.num_engines)],
                                 strategy="PACK")
    learner_pg = placement_group([{"CPU": config.learner.num_cpus_per_rank,
                                   **({"GPU": config.learner.num_gpus_per_rank}
                                      if config.learner.num_gpus_per_rank else {}),
                                   **config.ray.learner_resources} for _ in range(config.learner.world_size)],
                                 strategy="PACK")
    return rollout_pg, learner_pg
