"""``prism_lit/WebShop-v0``: a Gymnasium port of the text mode of princeton-nlp/WebShop.

Observation: the visible text of the current page joined with ``" [SEP] "`` (upstream ``text`` mode).
Actions: ``search[keywords]`` (any page, as in upstream's text env) or ``click[x]`` with ``x`` one of the
page's clickables, lowercased: buttons (``back to search``, ``next >``, ``< prev``, ``description``,
``features``, ``reviews``, ``buy now``), product ASINs, option values. Anything else (garbage, non-strings and
actions over the action space's 1,024 characters included) leaves the state unchanged with reward 0 and
``valid_action`` false. The episode terminates only at ``click[buy now]``, with
upstream's purchase reward (:func:`prism_lit.envs.webshop.reward.get_reward`).

``info``: ``admissible_actions`` (the page's ``click[...]`` actions), ``has_search_bar``, ``won``
(reward == 1), ``score`` (purchase reward, 0 before), ``task_id`` (``webshop/<split>/<goal index>``),
``task_type`` (goal category), ``instruction``, ``page`` and ``valid_action``.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from prism_lit.envs.webshop import pages
from prism_lit.envs.webshop.data import SPLITS, WebShopData, build_data, load_upstream, split_bounds
from prism_lit.envs.webshop.generator import generate_catalogue
from prism_lit.envs.webshop.reward import reward_info
from prism_lit.envs.webshop.search import SEARCH_RETURN_N, ProductSearch

__all__ = ["CHARSET", "Catalogue", "WebShopEnv", "load_catalogue", "parse_action"]

CHARSET = string.printable
MAX_OBS_CHARS = 1 << 16
MAX_ACTION_CHARS = 1024
_ACTION_RE = re.compile(r"(.+)\[(.+)\]")  # upstream's parser, kept as the reference of parse_action's tests


def parse_action(action: str) -> tuple[str, str | None]:
    r"""Upstream's parser, ``re.match(r"(.+)\[(.+)\]", action)`` (greedy, from the start, no newlines), else
    ``(action, None)``, in linear time: the regex backtracks quadratically (16,000 ``[`` took 0.74 s).

    The match lies in the first line. Its ``]`` is that line's last ``]`` (greedy second group), and its ``[`` the last
    one that leaves at least one character on either side (greedy first group).
    """
    line = action.split("\n", 1)[0]
    close = line.rfind("]")
    if close < 3:
        return action, None
    open_ = line.rfind("[", 1, close - 1)
    if open_ < 0:
        return action, None
    return line[:open_], line[open_ + 1:close]


@dataclass
class Catalogue:
    """Loaded data plus its search index; shared (read-only) by every env built with the same settings."""

    data: WebShopData
    search: ProductSearch


#: catalogues at least this large keep their search index in the user cache (built once, memory-mapped after)
INDEX_CACHE_MIN_PRODUCTS = 20_000


@functools.lru_cache(maxsize=8)
def load_catalogue(
    data_dir: str | None = None,
    num_products: int | None = None,
    num_goals: int | None = None,
    catalogue_seed: int = 0,
    human_goals: bool = True,
) -> Catalogue:
    """Upstream files from ``data_dir``, or a generated catalogue (``num_products`` default 1000).

    Catalogues of :data:`INDEX_CACHE_MIN_PRODUCTS` or more products index once per machine
    (:meth:`ProductSearch.cached`); smaller ones index in memory (a few seconds at most).
    """
    if data_dir is not None:
        data = load_upstream(data_dir, num_products=num_products, human=human_goals, seed=catalogue_seed)
    else:
        files = generate_catalogue(1000 if num_products is None else num_products, num_goals, catalogue_seed)
        data = build_data(files["products"], files["attributes"], files["human"], human=human_goals,
                          seed=catalogue_seed, source=f"generated(seed={catalogue_seed})")
    if len(data.products) >= INDEX_CACHE_MIN_PRODUCTS:
        return Catalogue(data=data, search=ProductSearch.cached(data.products))
    return Catalogue(data=data, search=ProductSearch(data.products))


class WebShopEnv(gym.Env):
    """WebShop text environment. See the module docstring for observations, actions and ``info``.

    Args:
        data_dir: folder with upstream's ``items_shuffle*.json``, ``items_ins_v2*.json`` and
            ``items_human_ins.json``; ``None`` generates a catalogue instead.
        num_products: products to keep (upstream files: the first N, default all; generated: default 1000).
        num_goals: generated goals (default ``2 * num_products``); ignored for upstream files.
        catalogue_seed: seed of the generator and of price draws.
        split: ``train``, ``eval`` or ``test`` (upstream: goals [1500:], [500:1500], [:500]; smaller goal
            sets keep the proportions, see :func:`~prism_lit.envs.webshop.data.split_bounds`).
        split_sizes: explicit ``(n_test, n_eval)``.
        results_per_page: products per results page (upstream 10).
        task_types: keep only goals of these categories (e.g. ``["beauty", "food"]``).
        human_goals: human-instruction goals (upstream's default for agents) or synthetic ones.
        show_attrs: show the ``Attributes`` tab on item pages (upstream's ``show_attrs``).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        data_dir: str | None = None,
        num_products: int | None = None,
        num_goals: int | None = None,
        catalogue_seed: int = 0,
        split: str = "train",
        split_sizes: tuple[int, int] | None = None,
        results_per_page: int = 10,
        task_types: Sequence[str] | None = None,
        human_goals: bool = True,
        show_attrs: bool = False,
        render_mode: str | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"WebShopEnv: split must be one of {SPLITS}, got {split!r}")
        if results_per_page < 1:
            raise ValueError(f"WebShopEnv: results_per_page must be >= 1, got {results_per_page}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"WebShopEnv: render_mode must be None or 'ansi', got {render_mode!r}")
        self.env_name = "webshop"
        self.render_mode = render_mode
        self.split = split
        self.results_per_page = results_per_page
        self.show_attrs = show_attrs
        catalogue = load_catalogue(None if data_dir is None else str(data_dir), num_products, num_goals,
                                   catalogue_seed, human_goals)
        self.data, self.engine = catalogue.data, catalogue.search
        self.bounds = split_bounds(len(self.data.goals), None if split_sizes is None else tuple(split_sizes))
        goals = self.data.goals
        indices = list(self.bounds[split])
        if task_types is not None:
            wanted = set(task_types)
            known = {g["category"] for g in goals}
            if not wanted <= known:
                raise ValueError(f"WebShopEnv: unknown task_types {sorted(wanted - known)}; known: {sorted(known)}")
            indices = [i for i in indices if goals[i]["category"] in wanted]
            if not indices:
                raise ValueError(f"WebShopEnv: no {split} goal has a category in {sorted(wanted)}")
        self._indices = indices
        self.task_ids = [f"webshop/{split}/{i}" for i in indices]
        self.task_types = sorted({goals[i]["category"] for i in indices})

        self.observation_space = spaces.Text(max_length=MAX_OBS_CHARS, charset=CHARSET)
        self.action_space = spaces.Text(max_length=MAX_ACTION_CHARS, charset=CHARSET)

        self.goal: dict[str, Any] | None = None
        self.task_id = ""
        self._page: pages.Page | None = None
        self._done = False
        self.last_reward_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ task selection
    def _goal_index(self, task_id: str) -> int:
        parts = str(task_id).split("/")
        if len(parts) != 3 or parts[0] != "webshop" or parts[1] not in SPLITS or not parts[2].isdigit():
            raise ValueError(f"WebShopEnv.reset: bad task_id {task_id!r}; expected 'webshop/<split>/<goal index>'")
        index = int(parts[2])
        if index not in self.bounds[parts[1]]:
            where = next((s for s, r in self.bounds.items() if index in r), None)
            raise ValueError(
                f"WebShopEnv.reset: task_id {task_id!r}: goal {index} is "
                + (f"in split '{where}'" if where else f"out of range (0..{len(self.data.goals) - 1})")
            )
        return index

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        if options and options.get("task_id") is not None:
            index = self._goal_index(options["task_id"])
            split = options["task_id"].split("/")[1]
        else:
            index = self._indices[int(self.np_random.integers(len(self._indices)))]
            split = self.split
        self.goal = self.data.goals[index]
        self.task_id = f"webshop/{split}/{index}"
        self._keywords: str | None = None
        self._results: list[int] = []
        self._page_num = 1
        self._asin: str | None = None
        self._options: dict[str, str] = {}
        self._score = 0.0
        self._done = False
        self.last_reward_info: dict[str, Any] | None = None
        self._page = pages.search_page(self.goal["instruction_text"])
        return self._page.text, self._info(valid=True)

    # ------------------------------------------------------------------ dynamics
    def step(self, action: Any) -> tuple[str, float, bool, bool, dict]:
        if self._page is None:
            raise RuntimeError("WebShopEnv.step called before reset")
        if self._done:
            return self._page.text, 0.0, True, False, self._info(valid=False)
        if not isinstance(action, str) or len(action) > MAX_ACTION_CHARS:  # outside the action space: invalid
            return self._page.text, 0.0, False, False, self._info(valid=False)
        name, arg = parse_action(action)
        reward, valid = 0.0, True
        if arg is not None:
            arg = arg.lower()
        if name == "search" and arg:
            self._search(arg)
        elif name == "click" and arg in self._page.clickables and arg != "search":
            reward = self._click(arg)
        else:
            valid = False
        return self._page.text, reward, self._done, False, self._info(valid=valid)

    def _search(self, keywords: str) -> None:
        self._keywords = keywords
        self._results = self.engine.search(keywords, SEARCH_RETURN_N)
        self._show_results(1)

    def _show_results(self, page_num: int) -> None:
        self._page_num = page_num
        self._asin, self._options = None, {}
        start = (page_num - 1) * self.results_per_page
        shown = [self.data.products[i] for i in self._results[start : start + self.results_per_page]]
        self._page = pages.results_page(self.goal["instruction_text"], shown, page_num, len(self._results))

    def _show_item(self) -> None:
        self._page = pages.item_page(self.goal["instruction_text"], self.data.by_asin[self._asin], self.show_attrs)

    def _click(self, arg: str) -> float:
        current = self._page.name
        clickable = self._page.clickables[arg]
        instruction = self.goal["instruction_text"]
        if arg == pages.END_BUTTON.lower():
            return self._buy()
        if arg == pages.BACK_TO_SEARCH.lower():
            self._keywords, self._results, self._asin, self._options = None, [], None, {}
            self._page = pages.search_page(instruction)
        elif arg == pages.NEXT_PAGE.lower() and current == "search_results":
            self._show_results(self._page_num + 1)
        elif arg == pages.PREV_PAGE.lower() and current == "search_results":
            self._show_results(self._page_num - 1)
        elif arg == pages.PREV_PAGE.lower() and current == "item_sub_page":
            self._show_item()
        elif arg == pages.PREV_PAGE.lower() and current == "item_page":
            self._show_results(self._page_num)
        elif arg in (t.lower() for t in pages.SUB_PAGES):
            tab = next(t for t in pages.SUB_PAGES if t.lower() == arg)
            self._page = pages.sub_page(instruction, self.data.by_asin[self._asin], tab)
        else:
            if clickable.kind == "product":
                self._asin = clickable.value
            elif clickable.kind == "option":
                self._options[clickable.option_name] = arg
            self._show_item()
        return 0.0

    def _buy(self) -> float:
        product = self.data.by_asin[self._asin]
        info = reward_info(product, self.goal, self.data.prices[self._asin], self._options)
        self.last_reward_info = info
        self._score = float(info["reward"])
        self._done = True
        self._page = pages.done_page(self._score)
        return self._score

    # ------------------------------------------------------------------ info / render
    @property
    def admissible_actions(self) -> list[str]:
        return [f"click[{c}]" for c in self._page.clickables if c != "search"]

    @property
    def purchase_state(self) -> dict[str, Any]:
        """Session state (oracle/debug use): page, search keywords, results page and count, the ASINs the results
        page lists (in order), product, options."""
        start = (self._page_num - 1) * self.results_per_page
        listed = [self.data.products[i]["asin"] for i in self._results[start : start + self.results_per_page]]
        return {"page": self._page.name, "keywords": self._keywords, "page_num": self._page_num,
                "num_results": len(self._results), "listed": listed, "asin": self._asin,
                "options": dict(self._options)}

    def _info(self, valid: bool) -> dict[str, Any]:
        return {
            "admissible_actions": self.admissible_actions,
            "has_search_bar": self._page.name == "index",
            "won": self._done and self._score == 1.0,
            "score": self._score,
            "task_id": self.task_id,
            "task_type": self.goal["category"],
            "instruction": self.goal["instruction_text"],
            "page": self._page.name,
            "valid_action": valid,
        }

    def render(self) -> str | None:
        if self.render_mode == "ansi" and self._page is not None:
            return self._page.text
        return None
