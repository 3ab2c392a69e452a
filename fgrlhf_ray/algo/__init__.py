"""Pure-torch RLHF maths: reward placement, KL, GAE, PPO losses, batch padding.

Imports nothing from ray, vllm or deepspeed (enforced by a test), so it runs anywhere
— in the controller, in learner actors, and in plain unit tests.

    rewards     segment → token placement, per-token total reward (score − β·KL)
    weighting   the one rule w · (v − μ) / σ that turns an RM's raw values into reward
    kl          per-token KL estimators, the KL loss term, fixed / adaptive KL controllers
    advantages  GAE, whitening, paper A's reward scaling
    estimators  ppo.advantage_estimator: GAE and the critic-free grpo, dr_grpo, rloo, reinforce_pp
    losses      PPO policy / value losses, log-probs from logits, masked means
    experience  RolloutBatch → padded tensors, response log-probs from LM logits, assembly
"""

from fgrlhf_ray.algo.advantages import compute_gae, masked_mean_var, scale_rewards_by_std, whiten
from fgrlhf_ray.algo.experience import (
    PaddedRollout,
    assemble_experience,
    gather_response_logprobs,
    pad_rollout,
    position_ids_from_attention_mask,
)
from fgrlhf_ray.algo.estimators import CRITIC_FREE_ESTIMATORS, GROUP_ESTIMATORS, compute_advantages, needs_critic
from fgrlhf_ray.algo.kl import AdaptiveKLController, FixedKLController, kl_loss, kl_penalty
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
from fgrlhf_ray.algo.weighting import RewardSpec, sample_rewards, weighted_values

__all__ = [
    "CRITIC_FREE_ESTIMATORS",
    "GROUP_ESTIMATORS",
    "RewardSpec",
    "assemble_experience",
    "compute_advantages",
    "kl_loss",
    "needs_critic",
    "sample_rewards",
    "weighted_values",
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
