"""The SFT stage: SFTModule trains the policy on the trajectories routed to SFT."""

from prism_lit.sft.module import SFTModule

__all__ = ["SFTModule"]
