"""Small-scale evidence: GRPO vs GRPO+AEM on a toy multi-turn, sparse-reward game.

A tiny recurrent policy trained from scratch on CPU (no pretrained model), using the
trainer's own algorithm code (swe_aem.algo) for advantages, AEM and the PPO-clip loss.
"""
