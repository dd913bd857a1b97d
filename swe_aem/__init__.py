"""swe-aem: RL for software-engineering agents with Adaptive Entropy Modulation."""

__version__ = "0.1.0"
