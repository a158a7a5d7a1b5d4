"""mathrl: teach language models to solve math word problems with reinforcement learning.

Implements the system of Havrilla et al. 2024, "Teaching Large Language Models to Reason with Reinforcement
Learning" (arXiv 2403.04642): SFT, Expert Iteration, PPO, return-conditioned RL, GRPO/RLOO, outcome and stepwise
reward models, and the maj@1 / maj@K / rerank@K / pass@K evaluation.
"""

__version__ = "0.1.0"
