"""A WebShop catalogue and goal generator writing upstream's file formats.

Five categories as upstream (beauty, electronics, fashion, food, furniture), each with product types,
attributes and option kinds. A product gets a brand, three attributes (the first two appear in its
title), a price and up to two option kinds; a goal (a "human" instruction in ``items_human_ins.json``
format) asks for one or two of the title attributes plus one value of each option kind. Text is kept
short on purpose: small models read these pages.

Every goal is checked at generation time: searching its instruction (without the price clause) with
:class:`~prism_lit.envs.webshop.search.ProductSearch` must return its product within the 50 results
upstream shows, so an agent that searches the goal's words can always find it. Output is deterministic
in ``seed``.
"""

from __future__ import annotations

import os
import random
import string
from pathlib import Path
from typing import Any

from prism_lit.envs.webshop.data import process_products
from prism_lit.envs.webshop.search import SEARCH_RETURN_N, ProductSearch, instruction_keywords
from prism_lit.io import atomic_write_json

__all__ = ["CATEGORIES", "FILE_NAMES", "generate_catalogue", "write_catalogue"]

FILE_NAMES = {
    "products": "items_shuffle.json",
    "attributes": "items_ins_v2.json",
    "human": "items_human_ins.json",
}

# category -> (breadcrumb root, {sub-category: [product types]}, attributes, {option kind: values})
CATEGORIES: dict[str, dict[str, Any]] = {
    "beauty": {
        "root": "Beauty & Personal Care",
        "types": {"Hair Care": ["shampoo", "conditioner", "hair oil"],
                  "Skin Care": ["face cream", "body lotion", "face mask"],
                  "Makeup": ["lipstick", "nail polish"]},
        "attributes": ["paraben free", "sulfate free", "cruelty free", "long lasting", "fragrance free",
                       "vegan", "travel size", "anti aging"],
        "options": {"scent": ["lavender", "rose", "coconut", "vanilla", "citrus", "unscented"],
                    "size": ["2 ounce", "4 ounce", "8 ounce", "16 ounce"]},
    },
    "electronics": {
        "root": "Electronics",
        "types": {"Audio": ["headphones", "bluetooth speaker", "earbuds"],
                  "Accessories": ["phone case", "usb cable", "power bank", "hdmi cable"],
                  "Computers": ["wireless mouse", "keyboard"]},
        "attributes": ["fast charging", "noise cancelling", "water resistant", "high speed", "easy install",
                       "long battery", "wireless", "lightweight"],
        "options": {"color": ["black", "white", "silver", "blue", "red", "grey"],
                    "size": ["1 pack", "2 pack", "3 pack", "5 pack"]},
    },
    "fashion": {
        "root": "Clothing, Shoes & Jewelry",
        "types": {"Women": ["dress", "blouse", "sandals"],
                  "Men": ["hoodie", "jeans", "running shoes"],
                  "Accessories": ["socks", "jacket"]},
        "attributes": ["machine wash", "slim fit", "quick drying", "cotton", "non slip", "long sleeve",
                       "breathable", "relaxed fit"],
        "options": {"color": ["black", "white", "navy", "red", "green", "beige"],
                    "size": ["small", "medium", "large", "x-large", "xx-large"]},
    },
    "food": {
        "root": "Grocery & Gourmet Food",
        "types": {"Snacks": ["protein bars", "trail mix", "beef jerky"],
                  "Beverages": ["green tea", "coffee beans"],
                  "Pantry": ["olive oil", "honey", "dark chocolate"]},
        "attributes": ["gluten free", "sugar free", "low carb", "organic", "non gmo", "high protein",
                       "keto friendly", "individually wrapped"],
        "options": {"flavor name": ["original", "vanilla", "chocolate", "peanut butter", "mixed berry", "sea salt"],
                    "size": ["pack of 1", "pack of 3", "pack of 6", "pack of 12"]},
    },
    "furniture": {
        "root": "Home & Kitchen",
        "types": {"Living Room": ["coffee table", "tv stand", "sofa"],
                  "Office": ["office chair", "bookshelf", "desk"],
                  "Bedroom": ["nightstand", "shoe rack"]},
        "attributes": ["easy assemble", "solid wood", "space saving", "storage space", "metal legs",
                       "height adjustable", "mid century", "water resistant"],
        "options": {"color": ["black", "white", "brown", "grey", "walnut", "natural"],
                    "size": ["small", "medium", "large"]},
    },
}

_LEADS = ["i need", "i am looking for", "i want", "find me", "i would like"]
_SYLLABLES = ["lu", "mo", "va", "ze", "ri", "ko", "na", "te", "po", "si", "da", "fe", "go", "bi", "ra", "xu"]


def _brands(rng: random.Random, n: int = 60) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize())
    return sorted(names)


def _asin(rng: random.Random, length: int, taken: set[str]) -> str:
    alphabet = string.ascii_uppercase + string.digits
    while True:
        asin = "B0" + "".join(rng.choice(alphabet) for _ in range(length - 2))
        if asin not in taken:
            taken.add(asin)
            return asin


def _product(rng: random.Random, category: str, brands: list[str], asin: str) -> dict[str, Any]:
    spec = CATEGORIES[category]
    sub = rng.choice(sorted(spec["types"]))
    ptype = rng.choice(spec["types"][sub])
    attrs = rng.sample(spec["attributes"], 3)
    brand = rng.choice(brands)
    title = f"{brand} {attrs[0].title()} {attrs[1].title()} {ptype.title()}"
    price = rng.uniform(5, 120)
    if rng.random() < 0.1:
        pricing = f"${int(price)}.99 to ${int(price * 1.2) + 1}.99"
    else:
        pricing = f"${int(price)}.99"
    options: dict[str, list[dict[str, Any]]] = {}
    if rng.random() >= 0.1:
        for kind, values in spec["options"].items():
            chosen = sorted(rng.sample(range(len(values)), rng.randint(2, min(4, len(values)))))
            options[kind] = [{"value": values[j], "image": None} for j in chosen]
    return {
        "asin": asin,
        "name": title,
        "category": category,
        "query": ptype,
        "product_category": f"{spec['root']} › {sub} › {ptype.title()}",
        "full_description": f"A {attrs[0]} {ptype} by {brand}, also {attrs[2]}.",
        "small_description": [f"{attrs[0]} and {attrs[1]}", f"{attrs[2]} {ptype}"],
        "pricing": pricing,
        "customization_options": options,
        "images": [None],
        "_attributes": attrs,
    }


def _instruction(rng: random.Random, product: dict[str, Any]) -> dict[str, Any]:
    attrs = product["_attributes"][:2]
    chosen = rng.sample(attrs, rng.randint(1, 2))
    option_values = {kind: rng.choice(values)["value"] for kind, values in product["customization_options"].items()}
    text = f"{rng.choice(_LEADS)} {' and '.join(chosen)} {product['query']}"
    if option_values:
        text += " with " + ", and ".join(f"{k}: {v}" for k, v in option_values.items())
    return {
        "asin": product["asin"],
        "instruction": text,
        "instruction_attributes": chosen,
        "instruction_options": list(option_values.values()),
    }


def generate_catalogue(
    num_products: int = 1000,
    num_goals: int | None = None,
    seed: int = 0,
    *,
    asin_length: int = 10,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    """A catalogue and goals in upstream's formats: ``{"products", "attributes", "human"}``.

    ``products`` is an ``items_shuffle.json`` list, ``attributes`` an ``items_ins_v2.json`` mapping (with
    a synthetic instruction per product), ``human`` an ``items_human_ins.json`` mapping holding
    ``num_goals`` instructions in all (default ``2 * num_products``), each findable by search.
    """
    if num_products < 1:
        raise ValueError(f"num_products must be >= 1, got {num_products}")
    if not 4 <= asin_length <= 10:
        raise ValueError(f"asin_length must be in 4..10 (upstream drops longer ASINs), got {asin_length}")
    cats = list(categories or CATEGORIES)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {sorted(CATEGORIES)}")
    n_goals = 2 * num_products if num_goals is None else num_goals
    if n_goals < 1:
        raise ValueError(f"num_goals must be >= 1, got {n_goals}")

    rng = random.Random(seed)
    brands = _brands(rng)
    taken: set[str] = set()
    raw = [_product(rng, cats[i % len(cats)], brands, _asin(rng, asin_length, taken)) for i in range(num_products)]
    rng.shuffle(raw)
    attributes = {
        p["asin"]: {
            "attributes": list(p["_attributes"]),
            "instruction": f"i need {p['_attributes'][0]} {p['query']}",
            "instruction_attributes": [p["_attributes"][0]],
        }
        for p in raw
    }
    processed = process_products([{k: v for k, v in p.items() if k != "_attributes"} for p in raw], attributes)
    position = {p["asin"]: i for i, p in enumerate(processed)}
    engine = ProductSearch(processed)

    human: dict[str, list[dict[str, Any]]] = {}
    made, attempts = 0, 0
    order = list(range(num_products))
    while made < n_goals:
        if attempts >= 20 * n_goals:
            raise RuntimeError(f"could only make {made} findable goals out of {n_goals} requested")
        if attempts % num_products == 0:
            rng.shuffle(order)
        product = raw[order[attempts % num_products]]
        attempts += 1
        ins = _instruction(rng, product)
        hits = engine.search(instruction_keywords(ins["instruction"]), SEARCH_RETURN_N)
        if position[product["asin"]] not in hits:
            continue
        human.setdefault(product["asin"], []).append(ins)
        made += 1
    products = [{k: v for k, v in p.items() if k != "_attributes"} for p in raw]
    return {"products": products, "attributes": attributes, "human": human}


def write_catalogue(out_dir: str | os.PathLike, **kwargs: Any) -> dict[str, Path]:
    """Generate (see :func:`generate_catalogue`) and write the three files atomically into ``out_dir``."""
    data = generate_catalogue(**kwargs)
    out = Path(out_dir)
    paths = {key: out / name for key, name in FILE_NAMES.items()}
    for key, path in paths.items():
        atomic_write_json(path, data[key], indent=None)
    return paths
