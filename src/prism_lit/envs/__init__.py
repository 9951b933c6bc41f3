"""Gymnasium environments (WebShop, ALFWorld) and the agent protocol.

Importing this package registers the environment ids with Gymnasium. Entry points are strings, so the
ALFWorld engine (an optional extra) is imported only when that env is made. No training code is imported here.
"""

from gymnasium.envs.registration import register, registry

WEBSHOP_ID = "prism_lit/WebShop-v0"
ALFWORLD_ID = "prism_lit/ALFWorld-v0"

if WEBSHOP_ID not in registry:
    register(id=WEBSHOP_ID, entry_point="prism_lit.envs.webshop.env:WebShopEnv", max_episode_steps=15)
if ALFWORLD_ID not in registry:
    register(id=ALFWORLD_ID, entry_point="prism_lit.envs.alfworld.env:ALFWorldEnv", max_episode_steps=50)

__all__ = ["ALFWORLD_ID", "WEBSHOP_ID"]
import prism_lit.envs.guess_word  # noqa: F401  registers prism_lit/GuessWord-v0 (a tiny env for tests and smoke runs)
import prism_lit.envs.instruction_following  # noqa: E402,F401  registers prism_lit/InstructionFollowing-v0
