"""WebShop data: upstream's JSON files (or our generator's, same formats) turned into products and goals.

Mirrors upstream ``engine.load_products`` / ``generate_product_prices`` and ``goal.get_human_goals`` /
``get_synthetic_goals``, with one difference: every random draw (a price inside a price range, a goal's
``price_upper``) comes from ``random.Random(seed)`` instead of the unseeded global RNG, so loading is
reproducible. Goals are then shuffled with ``random.Random(233)``, which gives the same permutation as
upstream's ``random.seed(233); random.shuffle(goals)``.

Files (upstream names; the ``_1000`` variants are the small download):
``items_shuffle[_1000].json`` (list of scraped products), ``items_ins_v2[_1000].json`` (asin -> attributes and
synthetic instruction), ``items_human_ins.json`` (asin -> list of human instructions with attributes/options).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = [
    "PRICE_RANGE",
    "UPSTREAM_HUMAN_GOALS",
    "WebShopData",
    "WebShopDataError",
    "build_data",
    "find_upstream_files",
    "human_goals",
    "load_json",
    "load_upstream",
    "process_products",
    "product_prices",
    "split_bounds",
    "synthetic_goals",
]

PRICE_RANGE = [10.0 * i for i in range(1, 100)]
NO_PRICE_LIMIT = 1000000
GOAL_SHUFFLE_SEED = 233
# upstream's crowd-sourced goal count; its split is test = goals[:500], eval = [500:1500], train = the rest
UPSTREAM_HUMAN_GOALS = 12087
UPSTREAM_TEST, UPSTREAM_EVAL = 500, 1000
SPLITS = ("train", "eval", "test")
# keys upstream's clean_product_keys drops from scraped records
_DROPPED_KEYS = ("product_information", "brand", "brand_url", "list_price", "availability_quantity",
                 "availability_status", "total_reviews", "total_answered_questions", "seller_id", "seller_name",
                 "fulfilled_by_amazon", "fast_track_message", "aplus_present", "small_description_old")


class WebShopDataError(ValueError):
    """Malformed WebShop data; the message names the file, the record and the field."""

    def __init__(self, path: str | os.PathLike | None, record: Any, field: str | None, problem: str):
        where = [str(path) if path else "<memory>"]
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {problem}")
        self.path, self.record, self.field, self.problem = path, record, field, problem


@dataclass
class WebShopData:
    """Processed products (upstream's in-memory format), their prices and the shuffled goal list."""

    products: list[dict[str, Any]]
    prices: dict[str, float]
    goals: list[dict[str, Any]]
    source: str
    by_asin: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_asin = {p["asin"]: p for p in self.products}


def load_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise WebShopDataError(path, None, None, "file not found") from None
    except json.JSONDecodeError as err:
        raise WebShopDataError(path, None, None, f"malformed JSON at line {err.lineno}: {err.msg}") from None


def find_upstream_files(data_dir: str | os.PathLike) -> dict[str, Path | None]:
    """Locate upstream's files in ``data_dir`` (full names preferred over the ``_1000`` ones)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise WebShopDataError(root, None, None, "data_dir is not a directory")

    def first(*names: str) -> Path | None:
        return next((root / n for n in names if (root / n).is_file()), None)

    files = {
        "products": first("items_shuffle.json", "items_shuffle_1000.json"),
        "attributes": first("items_ins_v2.json", "items_ins_v2_1000.json"),
        "human": first("items_human_ins.json"),
    }
    if files["products"] is None:
        raise WebShopDataError(root, None, None, "no items_shuffle.json or items_shuffle_1000.json in data_dir")
    if files["attributes"] is None:
        raise WebShopDataError(root, None, None, "no items_ins_v2.json or items_ins_v2_1000.json in data_dir")
    return files


def _parse_pricing(raw: Any, path: Any, index: int) -> tuple[list[float], str]:
    if not raw:
        return [100.0], "$100.0"
    if not isinstance(raw, str):
        raise WebShopDataError(path, index, "pricing", f"expected a string like '$12.99', got {raw!r}")
    try:
        pricing = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in raw.split("$")[1:]]
    except InvalidOperation:
        raise WebShopDataError(path, index, "pricing", f"cannot parse price {raw!r}") from None
    if not pricing:
        raise WebShopDataError(path, index, "pricing", f"no '$' amount in {raw!r}")
    if len(pricing) == 1:
        return pricing, f"${pricing[0]}"
    return pricing[:2], f"${pricing[0]} to ${pricing[1]}"


def process_products(
    raw_products: list[dict[str, Any]],
    attributes: dict[str, Any],
    human_attributes: dict[str, Any] | None = None,
    *,
    num_products: int | None = None,
    human: bool = True,
    path: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Upstream ``load_products``: raw scraped records -> products with Title/Description/BulletPoints/...

    Skips ASINs that are ``'nan'``, longer than 10 characters or repeated, as upstream does.
    """
    if not isinstance(raw_products, list):
        raise WebShopDataError(path, None, None, f"expected a JSON list of products, got {type(raw_products).__name__}")
    if num_products is not None:
        raw_products = raw_products[:num_products]
    seen: set[str] = set()
    products = []
    for i, raw in enumerate(raw_products):
        if not isinstance(raw, dict):
            raise WebShopDataError(path, i, None, f"expected an object, got {type(raw).__name__}")
        for key in ("asin", "name", "query", "category", "product_category", "full_description",
                    "small_description", "customization_options"):
            if key not in raw:
                raise WebShopDataError(path, i, key, "missing required field")
        asin = raw["asin"]
        if not isinstance(asin, str):
            raise WebShopDataError(path, i, "asin", f"must be a string, got {asin!r}")
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        p = {k: v for k, v in raw.items() if k not in _DROPPED_KEYS}
        p["Title"] = raw["name"]
        p["Description"] = raw["full_description"] or ""
        p["Reviews"] = []
        p["Rating"] = "N.A."
        bullets = raw["small_description"]
        p["BulletPoints"] = bullets if isinstance(bullets, list) else [bullets]
        p["pricing"], p["Price"] = _parse_pricing(raw.get("pricing"), path, i)
        options: dict[str, list[str]] = {}
        option_to_image: dict[str, Any] = {}
        for name, contents in (raw["customization_options"] or {}).items():
            if contents is None:
                continue
            values = []
            for j, content in enumerate(contents):
                if not isinstance(content, dict) or "value" not in content:
                    raise WebShopDataError(path, i, f"customization_options.{name}[{j}].value", "missing")
                value = str(content["value"]).strip().replace("/", " | ").lower()
                values.append(value)
                option_to_image[value] = content.get("image")
            options[name.lower()] = values
        p["options"], p["option_to_image"] = options, option_to_image
        entry = attributes.get(asin)
        p["Attributes"] = entry["attributes"] if isinstance(entry, dict) and "attributes" in entry else ["DUMMY_ATTR"]
        if human:
            if human_attributes and asin in human_attributes:
                p["instructions"] = human_attributes[asin]
        else:
            entry = entry if isinstance(entry, dict) else {}
            p["instruction_text"] = entry.get("instruction")
            p["instruction_attributes"] = entry.get("instruction_attributes")
        images = raw.get("images") or [None]
        p["MainImage"] = images[0]
        p["query"] = str(raw["query"]).lower().strip()
        products.append(p)
    return products


def product_prices(products: list[dict[str, Any]], rng: random.Random) -> dict[str, float]:
    """One price per product: its single price, or a uniform draw inside its price range."""
    prices = {}
    for p in products:
        pricing = p["pricing"]
        if not pricing:
            prices[p["asin"]] = 100.0
        elif len(pricing) == 1:
            prices[p["asin"]] = pricing[0]
        else:
            prices[p["asin"]] = rng.uniform(*pricing[:2])
    return prices


def _price_constraint(price: float, rng: random.Random) -> tuple[float, str]:
    above = [p for p in PRICE_RANGE if p > price][:4]
    if len(above) >= 2:
        _, upper = sorted(rng.sample(above, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return NO_PRICE_LIMIT, ""


def human_goals(products: list[dict[str, Any]], prices: dict[str, float], rng: random.Random) -> list[dict]:
    """Upstream ``get_human_goals``: one goal per human instruction with at least one attribute."""
    goals = []
    for item in products:
        for k, ins in enumerate(item.get("instructions", [])):
            attrs = ins.get("instruction_attributes")
            if not attrs:
                continue
            if "instruction" not in ins:
                raise WebShopDataError(None, f"{item['asin']}[{k}]", "instruction", "missing in human instruction")
            upper, price_text = _price_constraint(prices[item["asin"]], rng)
            goals.append({
                "asin": item["asin"],
                "category": item["category"],
                "query": item["query"],
                "name": item["name"],
                "product_category": item["product_category"],
                "instruction_text": ins["instruction"].strip(".") + price_text,
                "attributes": attrs,
                "price_upper": upper,
                "goal_options": ins.get("instruction_options", []),
                "weight": 1,
            })
    return goals


def synthetic_goals(products: list[dict[str, Any]], prices: dict[str, float], rng: random.Random) -> list[dict]:
    """Upstream ``get_synthetic_goals``: every option combination of every product with an instruction."""
    goals = []
    counts: dict[str, int] = {}
    for p in products:
        if p.get("instruction_text") is None:
            continue
        attrs = p.get("instruction_attributes") or []
        if not attrs:
            raise WebShopDataError(None, p["asin"], "instruction_attributes", "empty for a product with an instruction")
        upper, price_text = _price_constraint(prices[p["asin"]], rng)
        names = sorted(p["options"])
        for combo in itertools.product(*(p["options"][n] for n in names)):
            goal_options = dict(zip(names, combo))
            option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            option_text = " with " + option_text if option_text else ""
            goals.append({
                "asin": p["asin"],
                "category": p["category"],
                "query": p["query"],
                "name": p["Title"],
                "product_category": p["product_category"],
                "instruction_text": f"{p['instruction_text']}{option_text}{price_text}",
                "attributes": attrs,
                "price_upper": upper,
                "goal_options": goal_options,
            })
            for a in attrs:
                counts[a] = counts.get(a, 0) + 1
    for g in goals:
        g["weight"] = sum(1.0 / counts[a] for a in g["attributes"]) / len(g["attributes"])
    return goals


def build_data(
    raw_products: list[dict[str, Any]],
    attributes: dict[str, Any],
    human_attributes: dict[str, Any] | None,
    *,
    num_products: int | None = None,
    human: bool = True,
    seed: int = 0,
    source: str = "<memory>",
) -> WebShopData:
    """Products, prices and shuffled goals from upstream-format records (files or the generator)."""
    if human and not human_attributes:
        raise WebShopDataError(source, None, None, "human goals need items_human_ins.json (or pass human_goals=False)")
    products = process_products(raw_products, attributes, human_attributes, num_products=num_products,
                                human=human, path=source)
    rng = random.Random(seed)
    prices = product_prices(products, rng)
    goals = human_goals(products, prices, rng) if human else synthetic_goals(products, prices, rng)
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    if not goals:
        raise WebShopDataError(source, None, None, "no goals: no product has a usable instruction")
    return WebShopData(products=products, prices=prices, goals=goals, source=source)


def load_upstream(
    data_dir: str | os.PathLike, *, num_products: int | None = None, human: bool = True, seed: int = 0
) -> WebShopData:
    """Load upstream's WebShop files from ``data_dir`` (see :func:`find_upstream_files`)."""
    files = find_upstream_files(data_dir)
    raw = load_json(files["products"])
    attributes = load_json(files["attributes"])
    if not isinstance(attributes, dict):
        raise WebShopDataError(files["attributes"], None, None, "expected a JSON object keyed by asin")
    human_attrs = None
    if human:
        if files["human"] is None:
            raise WebShopDataError(data_dir, None, None, "no items_human_ins.json in data_dir (or pass human_goals=False)")
        human_attrs = load_json(files["human"])
        if not isinstance(human_attrs, dict):
            raise WebShopDataError(files["human"], None, None, "expected a JSON object keyed by asin")
    try:
        return build_data(raw, attributes, human_attrs, num_products=num_products, human=human, seed=seed,
                          source=str(files["products"]))
    except WebShopDataError as err:
        if err.path in (None, "<memory>"):
            raise WebShopDataError(files["products"], err.record, err.field, err.problem) from None
        raise


def split_bounds(n_goals: int, split_sizes: tuple[int, int] | None = None) -> dict[str, range]:
    """Goal index ranges of the splits: ``test`` first, then ``eval``, then ``train``.

    Upstream uses 500 test and 1000 eval goals out of 12,087. Smaller goal sets keep those proportions
    (at least one goal each); ``split_sizes=(n_test, n_eval)`` sets them explicitly.
    """
    if split_sizes is not None:
        n_test, n_eval = split_sizes
    elif n_goals >= UPSTREAM_HUMAN_GOALS:
        n_test, n_eval = UPSTREAM_TEST, UPSTREAM_EVAL
    else:
        n_test = max(1, round(n_goals * UPSTREAM_TEST / UPSTREAM_HUMAN_GOALS))
        n_eval = max(1, round(n_goals * UPSTREAM_EVAL / UPSTREAM_HUMAN_GOALS))
    if n_test < 0 or n_eval < 0 or n_test + n_eval >= n_goals:
        raise ValueError(
            f"split sizes test={n_test}, eval={n_eval} leave no training goals out of {n_goals}"
        )
    return {
        "test": range(n_test),
        "eval": range(n_test, n_test + n_eval),
        "train": range(n_test + n_eval, n_goals),
    }
