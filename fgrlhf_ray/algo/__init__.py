"""Pure-torch RLHF maths: reward placement, KL, GAE, PPO losses, batch padding.

Imports nothing from ray, vllm or deepspeed (enforced by a test), so it runs anywhere
— in the controller, in learner actors, and in plain unit tests.

    rewards     segment → token placement, per-token total reward (score − β·KL)
    kl          per-token KL estimators, fixed / adaptive KL controllers
    advantages  GAE, whitening, paper A's reward scaling
    losses      PPO policy / value losses, log-probs from logits, masked means
    experience  RolloutBatch → padded tensors, response log-probs from LM logits
"""

from fgrlhf_ray.algo.advantages import compute_gae, masked_mean_var, scale_rewards_by_std, whiten
from fgrlhf_ray.algo.experience import (
    PaddedRollout,
    gather_response_logprobs,
    pad_rollout,
    position_ids_from_attention_mask,
)
from fgrlhf_ray.algo.kl import AdaptiveKLController, FixedKLController, kl_penalty
from fgrlhf_ray.algo.losses import (
    aggregate,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    ppo_policy_loss,
    ppo_value_loss,
)
from fgrlhf_ray.algo.rewards import (
    ScorerOutput,
    char_ends_to_token_index,
    detox_holistic_reward,
    detox_sentence_rewards,
    place_segment_rewards,
    segment_rewards_from_labels,
    token_char_offsets,
    total_token_rewards,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PaddedRollout",
    "ScorerOutput",
    "aggregate",
    "char_ends_to_token_index",
    "compute_gae",
    "detox_holistic_reward",
    "detox_sentence_rewards",
    "entropy_from_logits",
    "gather_response_logprobs",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_mean_var",
    "masked_sum",
    "pad_rollout",
    "place_segment_rewards",
    "position_ids_from_attention_mask",
    "ppo_policy_loss",
    "ppo_value_loss",
    "scale_rewards_by_std",
    "segment_rewards_from_labels",
    "token_char_offsets",
    "total_token_rewards",
    "whiten",
]
