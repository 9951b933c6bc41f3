"""Colour normalisation used by WebShop's option reward (upstream ``web_agent_site/engine/normalize.py``).

Upstream scans a fixed, alphabetically ordered colour list and returns the *first* entry contained in the
option string, so ``"navy blue"`` normalises to ``"blue"`` (``blue`` precedes ``navy``) and ``"dark grey"`` to
``"dark"``. For a goal given as a dict, upstream passes ``(name, value)`` tuples; ``in`` then tests tuple
membership (exact element equality), not substrings. :func:`normalize_color` keeps both behaviours.
"""

from __future__ import annotations

from typing import Any

# Upstream's colour vocabulary, in upstream's order (the order decides which colour wins).
COLOR_SET: tuple[str, ...] = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure",
    "banana", "beige", "black", "blue", "blush", "bordeaux", "bronze",
    "brown", "burgundy", "camel", "camo", "caramel", "champagne",
    "charcoal", "cheetah", "chestnut", "chocolate", "christmas", "coffee",
    "cognac", "copper", "coral", "cranberry", "cream", "crystal", "dark",
    "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite",
    "grape", "graphite", "grass", "gray", "green", "grey", "heather", "indigo",
    "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light", "lilac",
    "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha",
    "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive",
    "orange", "peach", "pewter", "pink", "plum", "purple", "rainbow", "red",
    "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver", "skull",
    "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal",
    "tiger", "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
)


def normalize_color(value: Any) -> Any:
    """The first colour of :data:`COLOR_SET` found in ``value``, else ``value`` unchanged.

    For a string this is a case-sensitive substring test (``"Red"`` is not normalised, as upstream);
    for a tuple or list it is element membership, which is what upstream does with dict goal options.
    """
    for color in COLOR_SET:
        if color in value:
            return color
    return value
