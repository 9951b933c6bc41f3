"""Instruction following with verifiable rewards: ``prism_lit/InstructionFollowing-v0``.

Modules: ``env`` (the Gymnasium env), ``verifiers`` (IFEval's 25 instruction checks, strict and loose),
``text`` (sentence splitting, word counts, language detection, no downloads), ``tasks`` (the task record,
the generator with seen / held-out splits, IFEval and RLVR-IFeval loaders), ``judge`` (soft constraints, the
LLM judge and its rule-based stand-in), ``scoring`` (IFEval's four scores), ``expert`` (the oracle).
Everything this env needs lives here; its registration is the :class:`~prism_lit.envs.spec.EnvSpec` below.
Nothing here imports torch or Lightning (the optional LLM judge imports transformers when it is built).
See docs/envs/instruction_following.md.
"""

from prism_lit.envs.spec import EnvSpec, register_env

SPLITS = ("train", "test_seen", "test_unseen")

SPEC = register_env(
    EnvSpec(
        name="instruction_following",
        gym_id="prism_lit/InstructionFollowing-v0",
        entry_point="prism_lit.envs.instruction_following.env:InstructionFollowingEnv",
        # one step ends every episode; a limit of 2 only guards a step after the end, never truncates one
        max_episode_steps=2,
        expert="prism_lit.envs.instruction_following.expert:InstructionFollowingExpert",
        # the response is the action: the whole reply, one turn, nothing to list
        protocol={"reply_format": "text", "history_turns": 0, "show_admissible": False},
        splits=SPLITS,
        # IFEval's four scores per panel, the judge's precision on the policy's responses during RL
        metrics="prism_lit.envs.instruction_following.scoring:IFEvalMetrics",
        score="the fraction of the prompt's constraints satisfied (hard: IFEval strict; soft: the judge); "
        "won = all satisfied",
    )
)

INSTRUCTION_FOLLOWING_ID = SPEC.gym_id

__all__ = ["INSTRUCTION_FOLLOWING_ID", "SPEC", "SPLITS"]
