"""WebShop pages in upstream's "simple" text mode: the visible strings of each HTML template, in order.

Each ``*_page`` function returns a :class:`Page`: its text segments (joined with ``" [SEP] "`` to make the
observation) and its clickables in upstream's order (buttons, then product links, then option radios),
keyed by the lowercased text an agent writes inside ``click[...]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACK_TO_SEARCH",
    "END_BUTTON",
    "NEXT_PAGE",
    "PREV_PAGE",
    "SEP",
    "SUB_PAGES",
    "Clickable",
    "Page",
    "done_page",
    "item_page",
    "results_page",
    "search_page",
    "sub_page",
]

SEP = " [SEP] "
END_BUTTON = "Buy Now"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BACK_TO_SEARCH = "Back to Search"
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")


@dataclass(frozen=True)
class Clickable:
    """What a click hits: a ``button``, a ``product`` link (``value`` = ASIN) or an ``option`` radio."""

    kind: str
    value: str
    option_name: str | None = None


@dataclass
class Page:
    name: str  # "index", "search_results", "item_page", "item_sub_page" or "done"
    segments: list[str]
    clickables: dict[str, Clickable]

    @property
    def text(self) -> str:
        return SEP.join(s for s in (seg.strip() for seg in self.segments) if s)


def _buttons(*labels: str) -> dict[str, Clickable]:
    return {label.lower(): Clickable("button", label) for label in labels}


def _header(instruction: str) -> list[str]:
    return ["Instruction:", instruction]


def search_page(instruction: str) -> Page:
    return Page("index", ["WebShop", "Instruction:", instruction, "Search"], _buttons("Search"))


def results_page(instruction: str, products: Sequence[dict[str, Any]], page: int, total: int) -> Page:
    segments = _header(instruction) + [BACK_TO_SEARCH, f"Page {page} (Total results: {total})"]
    labels = [BACK_TO_SEARCH]
    if page > 1:
        segments.append(PREV_PAGE)
        labels.append(PREV_PAGE)
    segments.append(NEXT_PAGE)  # upstream always shows "Next >", even past the last result
    labels.append(NEXT_PAGE)
    clickables = _buttons(*labels)
    for p in products:
        segments += [p["asin"], p["Title"], p["Price"]]
        clickables[p["asin"].lower()] = Clickable("product", p["asin"])
    return Page("search_results", segments, clickables)


def item_page(instruction: str, product: dict[str, Any], show_attrs: bool = False) -> Page:
    segments = _header(instruction) + [BACK_TO_SEARCH, PREV_PAGE]
    options: dict[str, Clickable] = {}
    for name, values in product["options"].items():
        segments.append(name)
        for value in values:
            segments.append(value)
            options[value] = Clickable("option", value, name)
    tabs = ["Description", "Features", "Reviews"] + (["Attributes"] if show_attrs else [])
    segments += [product["Title"], f"Price: {product['Price']}", f"Rating: {product['Rating']}"] + tabs
    segments.append(END_BUTTON)
    clickables = _buttons(BACK_TO_SEARCH, PREV_PAGE, *tabs, END_BUTTON)
    clickables.update(options)
    return Page("item_page", segments, clickables)


def sub_page(instruction: str, product: dict[str, Any], tab: str) -> Page:
    segments = _header(instruction) + [BACK_TO_SEARCH, PREV_PAGE]
    if tab == "Description":
        segments.append(product["Description"])
    elif tab == "Features":
        bullets = product["BulletPoints"]
        segments += [str(b) for b in (bullets if isinstance(bullets, list) else [bullets])]
    elif tab == "Reviews":
        for review in product.get("Reviews", []):
            segments += [f'"{review.get("title", "")}"', str(review.get("score", "")), str(review.get("body", ""))]
    elif tab == "Attributes":
        segments += [str(a) for a in product["Attributes"]]
        segments += [product.get("category", ""), product["query"], product["product_category"]]
    else:
        raise ValueError(f"unknown sub page {tab!r}; expected one of {SUB_PAGES}")
    return Page("item_sub_page", segments, _buttons(BACK_TO_SEARCH, PREV_PAGE))


def done_page(reward: float) -> Page:
    # Upstream's done page also prints an MTurk code and (hidden in HTML, but present in text mode) the goal;
    # we keep only the visible thank-you line and the score.
    return Page("done", ["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", str(reward)], {})
