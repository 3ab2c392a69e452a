"""Reward functions shared by our trainer (as `kind: function` scorers) and TRL (as
`reward_funcs`), so both optimise exactly the same signal in `trl_compare.py`.

- `grounded_holistic(prompts, responses) -> list[float]`: one number per response, the
  mean over its sentences of +1 (most words occur in the prompt) / −1 (otherwise), −1 for
  a response without sentences. It is the sequence-level summary of
  `fgrlhf_ray.rewards.builtin.prompt_grounded_sentences`, whose per-sentence values are
  the fine-grained version of the same reward.

Ray's scorer actors import this module by name (`bench_rewards:grounded_holistic`), so
`benchmarks/` must be on PYTHONPATH (trl_compare.py sets it).
"""

from __future__ import annotations

from fgrlhf_ray.rewards.builtin import prompt_grounded_sentences


def grounded_holistic(prompts: list[str], responses: list[str]) -> list[float]:
    out = []
    for segments in prompt_grounded_sentences(list(prompts), list(responses)):
        out.append(sum(v for _, _, v in segments) / len(segments) if segments else -1.0)
    return out


def trl_reward(prompts, completions, **_) -> list[float]:
    """TRL `reward_funcs` signature (plain-text prompts and completions)."""
    return grounded_holistic(list(prompts), list(completions))
