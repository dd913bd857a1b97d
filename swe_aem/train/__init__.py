"""The RL loop: rollouts, rewards, advantages, AEM, PPO on DeepSpeed, weight sync."""
