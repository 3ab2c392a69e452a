"""fgrlhf-ray: fine-grained RLHF on Ray (vLLM rollouts, dense reward models, DeepSpeed PPO)."""

__version__ = "0.1.0"
