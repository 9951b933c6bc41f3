"""prism_lit: PRISM hybrid SFT→RL training of LLM agents on Lightning (arXiv 2601.07224)."""

__version__ = "0.1.0"
