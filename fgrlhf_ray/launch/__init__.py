"""Starting a run on Ray: the `Trainer` (builds actors and services, checkpoints, resume), the Ray runtime and cluster placement. The only core package that imports `fgrlhf_ray.actors`."""
