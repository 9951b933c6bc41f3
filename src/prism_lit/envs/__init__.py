"""Gymnasium environments (WebShop, ALFWorld, instruction following, guess-word) and the agent protocol.

Importing this package registers every environment's :class:`~prism_lit.envs.spec.EnvSpec` (and its Gymnasium id).
Entry points are strings, so the ALFWorld engine (an optional extra) is imported only when that env is made. No
training code is imported here.
"""

from prism_lit.envs import alfworld, instruction_following, webshop
from prism_lit.envs.spec import ENV_SPECS, EnvMetrics, EnvSpec, env_metrics, env_spec, register_env

WEBSHOP_ID = webshop.SPEC.gym_id
ALFWORLD_ID = alfworld.SPEC.gym_id
INSTRUCTION_FOLLOWING_ID = instruction_following.SPEC.gym_id

# a tiny env for tests and smoke runs (registered by name only; its module is imported when it is made)
register_env(EnvSpec(
    name="guess_word", gym_id="prism_lit/GuessWord-v0", entry_point="prism_lit.envs.guess_word:GuessWordEnv",
    max_episode_steps=20, task_types=("fruit", "animal"), score="1 when the word is guessed, else 0",
))

__all__ = [
    "ALFWORLD_ID", "ENV_SPECS", "INSTRUCTION_FOLLOWING_ID", "WEBSHOP_ID", "EnvMetrics", "EnvSpec", "env_metrics",
    "env_spec", "register_env",
]
