"""fgrlhf-ray: fine-grained RLHF on Ray (vLLM rollouts, dense reward models, DeepSpeed PPO)."""

__version__ = "0.1.0"

from fgrlhf_ray import _moved

_moved.install()  # old flat module paths (`fgrlhf_ray.trainer`, ...) still import
