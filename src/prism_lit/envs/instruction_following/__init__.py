"""Instruction following with verifiable rewards: ``prism_lit/InstructionFollowing-v0``.

Everything this env needs lives in this package (env, verifiers, generator and loaders, judge, oracle),
so its registration is the three names below: the gymnasium id, the entry point and the expert path.
Nothing here imports torch or Lightning (the optional LLM judge imports transformers when it is built).
See docs/envs/instruction_following.md.
"""

from gymnasium.envs.registration import register, registry

INSTRUCTION_FOLLOWING_ID = "prism_lit/InstructionFollowing-v0"
ENV_FAMILY = "instruction_following"
ENTRY_POINT = "prism_lit.envs.instruction_following.env:InstructionFollowingEnv"
EXPERT_PATH = "prism_lit.envs.instruction_following.expert:InstructionFollowingExpert"


def register_instruction_following() -> None:
    """Register ``prism_lit/InstructionFollowing-v0`` with Gymnasium (no-op when it already is)."""
    if INSTRUCTION_FOLLOWING_ID not in registry:
        register(id=INSTRUCTION_FOLLOWING_ID, entry_point=ENTRY_POINT)  # one step by construction


register_instruction_following()

__all__ = [
    "ENTRY_POINT",
    "ENV_FAMILY",
    "EXPERT_PATH",
    "INSTRUCTION_FOLLOWING_ID",
    "register_instruction_following",
]
