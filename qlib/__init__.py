"""qlib: step-level Q-value models for LLM agents, reproduced offline (Zhai et al., arXiv 2409.09345)."""
import os

# torch and llama.cpp share one OpenMP runtime, which reads this once at the first import of either:
# with the default busy-waiting, both run 5-13x slower whenever the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
