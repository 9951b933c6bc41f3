"""WebShopExpert: the oracle that searches the goal's words, opens a product that satisfies it, picks the options, buys.

It reads the goal (``asin``, ``goal_options``) from ``env.unwrapped.goal``; the agent never sees that.
On generated catalogues every goal product is among the search results of its own instruction (the
generator checks it), so the expert wins every task; on upstream data it may not find every product.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import gymnasium as gym

from prism_lit.envs.webshop.pages import NEXT_PAGE, PREV_PAGE
from prism_lit.envs.webshop.reward import reward_info
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
        product: ``goal`` opens the very product the goal was written from (hidden from the agent: the expert
            passes over other products that fit the instruction just as well); ``first_match`` opens the first
            listed product that earns the full reward (its title, category and price fit and it offers the
            wanted options), as a person shopping would, so the demonstrations depend on what the page shows.
    """

    def __init__(self, env: gym.Env, query: Literal["instruction", "short"] = "instruction",
                 product: Literal["goal", "first_match"] = "goal"):
        if query not in ("instruction", "short"):
            raise ValueError(f"WebShopExpert.query must be 'instruction' or 'short', got {query!r}")
        if product not in ("goal", "first_match"):
            raise ValueError(f"WebShopExpert.product must be 'goal' or 'first_match', got {product!r}")
        self.env = env
        self.query = query
        self.product = product
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

    def _satisfies(self, asin: str) -> bool:
        """Whether buying ``asin`` with the wanted options it offers earns the full reward."""
        if asin == self._goal["asin"]:
            return True
        data = self._shop.data
        product = data.by_asin.get(asin)
        if product is None:
            return False
        offered = {v: name for name, values in product["options"].items() for v in values}
        chosen = {offered[v]: v for v in self._wanted if v in offered}
        return reward_info(product, self._goal, data.prices[asin], chosen)["reward"] == 1.0

    def _wanted_product(self, admissible: set[str]) -> str | None:
        """The product to open among the listed ones (``click[<asin>]``), or None."""
        target = self._goal["asin"].lower()
        if self.product == "goal":
            return f"click[{target}]" if f"click[{target}]" in admissible else None
        for asin in self._shop.purchase_state["listed"]:
            if self._satisfies(asin):
                return f"click[{asin.lower()}]"
        return None

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
            wanted = self._wanted_product(admissible)
            if wanted is not None:
                return wanted, f"{wanted[6:-1].upper()} matches the instruction, I should open it."
            if self.query == "short" and self._searches == 1:
                return "click[back to search]", "The product is not here, I should search with the whole instruction."
            shown = state["page_num"] * self._shop.results_per_page
            if f"click[{NEXT_PAGE.lower()}]" in admissible and shown < state["num_results"]:
                return f"click[{NEXT_PAGE.lower()}]", "The product is not on this page, I should look at the next one."
            return "click[back to search]", "The product is not in these results, I should search again."
        if page == "item_page":
            if not (state["asin"] == target if self.product == "goal" else self._satisfies(state["asin"])):
                return f"click[{PREV_PAGE.lower()}]", "This is not the right product, I should go back."
            chosen = set(state["options"].values())
            for value in self._wanted:
                if value not in chosen and f"click[{value}]" in admissible:
                    return f"click[{value}]", f"The instruction asks for {value}, I should select it."
            return "click[buy now]", "The product and its options match the instruction, I should buy it."
        return f"click[{PREV_PAGE.lower()}]", "I should go back to the product."
