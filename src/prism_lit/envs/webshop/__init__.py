"""WebShop (Yao et al. 2022), a faithful re-implementation of upstream's text mode.

Modules: ``env`` (the Gymnasium env), ``pages`` (page text), ``search`` (bm25s index), ``reward``
(upstream's ``get_reward``), ``normalize`` (colour normalisation), ``data`` (upstream file loading, goals,
splits), ``generator`` (catalogue + goals in upstream's formats), ``expert`` (oracle policy).
Importing this package imports nothing heavy; ``gymnasium.make("prism_lit/WebShop-v0")`` loads the env.
"""

from prism_lit.envs.spec import EnvSpec, register_env

SPEC = register_env(EnvSpec(
    name="webshop", gym_id="prism_lit/WebShop-v0", entry_point="prism_lit.envs.webshop.env:WebShopEnv",
    max_episode_steps=15, expert="prism_lit.envs.webshop.expert:WebShopExpert", splits=("train", "eval", "test"),
    score="upstream's purchase reward in [0, 1] (attributes, options and price matched, times the type match); "
          "won = reward 1",
))
