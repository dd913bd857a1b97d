"""Supervised fine-tuning on the project's own episodes: gold-patch demonstrations
and reward-filtered rollouts (rejection sampling), loss on sampled tokens only."""
