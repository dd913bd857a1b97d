"""Small-scale evidence (`swe-aem evidence`): GRPO vs GRPO+AEM on a toy multi-turn,
sparse-reward game, and on the LLM agent from one SFT warm start (`--llm`).

The toy game: a tiny recurrent policy trained from scratch on CPU (no pretrained model),
using the trainer's own algorithm code (swe_aem.algo) for advantages, AEM and the PPO-clip
loss. The LLM arms run the real trainer (swe_aem.train) from the warm start (swe_aem.sft)
and compare with swe_aem.eval's code, so this package sits at the edge of the layering.
"""
