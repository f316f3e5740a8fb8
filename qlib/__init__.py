"""qlib: step-level Q-value models for LLM agents, reproduced offline (Zhai et al., arXiv 2409.09345)."""
__version__ = "0.1.0"
