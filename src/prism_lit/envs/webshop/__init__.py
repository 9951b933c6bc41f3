"""WebShop (Yao et al. 2022), a faithful re-implementation of upstream's text mode.

Modules: ``env`` (the Gymnasium env), ``pages`` (page text), ``search`` (bm25s index), ``reward``
(upstream's ``get_reward``), ``normalize`` (colour normalisation), ``data`` (upstream file loading, goals,
splits), ``generator`` (catalogue + goals in upstream's formats), ``expert`` (oracle policy).
Importing this package imports nothing heavy; ``gymnasium.make("prism_lit/WebShop-v0")`` loads the env.
"""
