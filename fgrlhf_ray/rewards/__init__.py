"""Reward models: segment classifiers (relevance C1 / factuality C2), sequence
preference RMs (completeness C3 / holistic), paper B's token-level RM, and function /
toxicity scorers — all behind one `RewardModel` interface,
`score(prompts, responses) -> list[SegmentRewards]`.

Neural RMs are loaded from a saved folder with `load_reward_model(path)`; trained with
`fgrlhf train-rm --config FILE` (`train_reward_model`); evaluated with
`fgrlhf eval-rm`. Attributes are imported lazily so that `FunctionScorer` users do not
pay for torch / transformers imports.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RewardModel": "fgrlhf_ray.rewards.base",
    "RMMetadata": "fgrlhf_ray.rewards.base",
    "TASKS": "fgrlhf_ray.rewards.base",
    "default_backbone_path": "fgrlhf_ray.rewards.base",
    "load_reward_model": "fgrlhf_ray.rewards.base",
    "HFRewardModel": "fgrlhf_ray.rewards.hf_model",
    "SegmentClassifierRM": "fgrlhf_ray.rewards.segment_classifier",
    "SequencePreferenceRM": "fgrlhf_ray.rewards.sequence_preference",
    "TokenLevelRM": "fgrlhf_ray.rewards.token_level",
    "FunctionScorer": "fgrlhf_ray.rewards.function_scorer",
    "DetoxScorer": "fgrlhf_ray.rewards.function_scorer",
    "hf_toxicity": "fgrlhf_ray.rewards.function_scorer",
    "RewardModelTrainConfig": "fgrlhf_ray.rewards.train_config",
    "train_reward_model": "fgrlhf_ray.rewards.training",
    "evaluate": "fgrlhf_ray.rewards.evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fgrlhf_ray.rewards' has no attribute {name!r}")
