"""WebShopExpert: the oracle that searches the goal's words, opens the goal product, picks its options, buys.

It reads the goal (``asin``, ``goal_options``) from ``env.unwrapped.goal``; the agent never sees that.
On generated catalogues every goal product is among the search results of its own instruction (the
generator checks it), so the expert wins every task; on upstream data it may not find every product.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import gymnasium as gym

from prism_lit.envs.webshop.pages import NEXT_PAGE, PREV_PAGE
from prism_lit.envs.webshop.search import instruction_keywords

__all__ = ["WebShopExpert"]


# request words that carry no product information ("i am looking for", "find me", ...)
_FILLER = frozenset(["i", "im", "am", "would", "like", "need", "want", "looking", "for", "a", "an", "the", "some", "please", "find", "me", "buy", "get", "to"])


def short_query(instruction: str) -> str:
    """The product phrase of an instruction: the words before its first ``with``/price clause, minus request words.

    ``"i need height adjustable bookshelf with color: black, ..."`` → ``"height adjustable bookshelf"``.
    """
    head = instruction.split(" with ")[0].split(", and price lower than")[0]
    return " ".join(w for w in re.findall(r"[a-z0-9-]+", head.lower()) if w not in _FILLER)


class WebShopExpert:
    """Oracle policy for :class:`~prism_lit.envs.webshop.env.WebShopEnv` (construct as ``WebShopExpert(env)``).

    Args:
        env: the env it plays (the goal is read from ``env.unwrapped``).
        query: ``instruction`` searches the instruction without its price clause; ``short`` searches only the
            product phrase (a few words a small model can copy) and falls back to the instruction when the
            product is not among the results.
    """

    def __init__(self, env: gym.Env, query: Literal["instruction", "short"] = "instruction"):
        if query not in ("instruction", "short"):
            raise ValueError(f"WebShopExpert.query must be 'instruction' or 'short', got {query!r}")
        self.env = env
        self.query = query
        self._goal: dict[str, Any] | None = None
        self._searches = 0

    @property
    def _shop(self) -> Any:
        return self.env.unwrapped

    def reset(self, observation: str, info: dict) -> None:
        self._goal = self._shop.goal
        options = self._goal["goal_options"]
        self._wanted = list(options.values()) if isinstance(options, dict) else list(options)
        self._searched = False
        self._searches = 0

    def act(self, observation: str, info: dict) -> tuple[str, str | None]:
        if self._goal is None:
            raise RuntimeError("WebShopExpert.act called before reset")
        admissible = set(info["admissible_actions"])
        page = info["page"]
        target = self._goal["asin"]
        state = self._shop.purchase_state
        if page == "index":
            instruction = self._goal["instruction_text"]
            use_short = self.query == "short" and self._searches == 0
            keywords = short_query(instruction) if use_short else instruction_keywords(instruction)
            self._searches += 1
            return f"search[{keywords}]", "I should search for the product the instruction describes."
        if page == "search_results":
            if f"click[{target.lower()}]" in admissible:
                return f"click[{target.lower()}]", f"{target} matches the instruction, I should open it."
            if self.query == "short" and self._searches == 1:
                return "click[back to search]", "The product is not here, I should search with the whole instruction."
            shown = state["page_num"] * self._shop.results_per_page
            if f"click[{NEXT_PAGE.lower()}]" in admissible and shown < state["num_results"]:
                return f"click[{NEXT_PAGE.lower()}]", "The product is not on this page, I should look at the next one."
            return "click[back to search]", "The product is not in these results, I should search again."
        if page == "item_page":
            if state["asin"] != target:
                return f"click[{PREV_PAGE.lower()}]", "This is not the right product, I should go back."
            chosen = set(state["options"].values())
            for value in self._wanted:
                if value not in chosen and f"click[{value}]" in admissible:
                    return f"click[{value}]", f"The instruction asks for {value}, I should select it."
            return "click[buy now]", "The product and its options match the instruction, I should buy it."
        return f"click[{PREV_PAGE.lower()}]", "I should go back to the product."
