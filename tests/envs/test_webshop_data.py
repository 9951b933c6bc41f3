"""WebShop data: upstream-format loading (hand-written fixture), generator determinism and round-trip."""

import json
import time

import pytest

from prism_lit.envs.webshop.data import (
    WebShopDataError,
    build_data,
    find_upstream_files,
    load_upstream,
    split_bounds,
)
from prism_lit.envs.webshop.env import WebShopEnv, load_catalogue
from prism_lit.envs.webshop.generator import CATEGORIES, generate_catalogue, write_catalogue
from prism_lit.envs.webshop.search import SEARCH_RETURN_N, ProductSearch, instruction_keywords

# A few records written by hand in upstream's formats (items_shuffle_1000.json / items_ins_v2_1000.json /
# items_human_ins.json), with the oddities upstream's loader handles.
RAW_PRODUCTS = [
    {"asin": "B000000001", "name": "Tea Tree Shampoo", "category": "beauty", "query": " Shampoo ",
     "product_category": "Beauty & Personal Care › Hair Care › Shampoo",
     "full_description": "A tea tree shampoo.", "small_description": ["Natural ingredients", "Sulfate free"],
     "pricing": "$12.99", "images": ["http://img/1.jpg"], "brand": "Lumo", "list_price": "$20",
     "customization_options": {"Size": [{"value": "8 Ounce", "image": None}, {"value": "16 Ounce/Pack", "image": "i"}],
                               "Color": None}},
    {"asin": "B000000002", "name": "Oak Coffee Table", "category": "furniture", "query": "coffee table",
     "product_category": "Home & Kitchen › Furniture › Tables", "full_description": "",
     "small_description": "Solid wood top", "pricing": "$80.00 to $120.00", "images": [],
     "customization_options": None},
    {"asin": "nan", "name": "bad", "category": "food", "query": "x", "product_category": "x",
     "full_description": "", "small_description": [], "pricing": "", "images": [], "customization_options": {}},
    {"asin": "B0000000033", "name": "too long asin", "category": "food", "query": "x", "product_category": "x",
     "full_description": "", "small_description": [], "pricing": "", "images": [], "customization_options": {}},
    {"asin": "B000000001", "name": "duplicate", "category": "food", "query": "x", "product_category": "x",
     "full_description": "", "small_description": [], "pricing": "", "images": [], "customization_options": {}},
    {"asin": "B000000004", "name": "Green Tea", "category": "food", "query": "green tea",
     "product_category": "Grocery › Tea", "full_description": "Organic green tea.", "small_description": ["Organic"],
     "pricing": None, "images": ["x"], "customization_options": {}},
]
ATTRIBUTES = {
    "B000000001": {"attributes": ["tea tree", "sulfate free"], "instruction": "i need a tea tree shampoo",
                   "instruction_attributes": ["tea tree"]},
    "B000000002": {"attributes": ["solid wood"], "instruction": "i want a solid wood coffee table",
                   "instruction_attributes": ["solid wood"]},
}
HUMAN = {
    "B000000001": [
        {"asin": "B000000001", "instruction": "i need a sulfate free shampoo in 8 ounce.",
         "instruction_attributes": ["sulfate free"], "instruction_options": ["8 ounce"]},
        {"asin": "B000000001", "instruction": "no attributes: skipped", "instruction_attributes": [],
         "instruction_options": []},
    ],
    "B000000002": [
        {"asin": "B000000002", "instruction": "i want a solid wood coffee table",
         "instruction_attributes": ["solid wood"], "instruction_options": []},
    ],
}


def write_fixture(root, products=RAW_PRODUCTS, attributes=ATTRIBUTES, human=HUMAN):
    root.mkdir(parents=True, exist_ok=True)
    (root / "items_shuffle_1000.json").write_text(json.dumps(products))
    (root / "items_ins_v2_1000.json").write_text(json.dumps(attributes))
    (root / "items_human_ins.json").write_text(json.dumps(human))
    return root


def test_upstream_loader_processes_records_like_upstream(tmp_path):
    data = load_upstream(write_fixture(tmp_path / "ws"), seed=0)
    assert [p["asin"] for p in data.products] == ["B000000001", "B000000002", "B000000004"]
    shampoo, table, tea = data.products
    assert shampoo["Title"] == "Tea Tree Shampoo" and shampoo["query"] == "shampoo"
    assert shampoo["options"] == {"size": ["8 ounce", "16 ounce | pack"]}  # lowercased, '/' -> ' | ', None dropped
    assert shampoo["Price"] == "$12.99" and shampoo["pricing"] == [12.99]
    assert shampoo["Attributes"] == ["tea tree", "sulfate free"] and shampoo["Rating"] == "N.A."
    assert shampoo["MainImage"] == "http://img/1.jpg" and "brand" not in shampoo and "list_price" not in shampoo
    assert table["BulletPoints"] == ["Solid wood top"] and table["options"] == {}
    assert table["Price"] == "$80.0 to $120.0"
    assert 80.0 <= data.prices["B000000002"] <= 120.0
    assert tea["Price"] == "$100.0" and tea["Attributes"] == ["DUMMY_ATTR"]
    # human goals: one per instruction with attributes, price clause appended, '.' stripped
    assert len(data.goals) == 2
    goal = next(g for g in data.goals if g["asin"] == "B000000001")
    assert goal["instruction_text"].startswith("i need a sulfate free shampoo in 8 ounce, and price lower than ")
    # price_upper: the larger of two of the first four multiples of 10 above the price (20, 30, 40, 50)
    assert goal["price_upper"] in (30.0, 40.0, 50.0) and goal["goal_options"] == ["8 ounce"]
    assert goal["name"] == "Tea Tree Shampoo" and goal["query"] == "shampoo"


def test_upstream_loader_synthetic_goals(tmp_path):
    data = load_upstream(write_fixture(tmp_path / "ws"), human=False, seed=0)
    by_text = sorted(g["instruction_text"].split(", and price")[0] for g in data.goals)
    assert by_text == ["i need a tea tree shampoo with size: 16 ounce | pack", "i need a tea tree shampoo with size: 8 ounce",
                       "i want a solid wood coffee table"]
    assert all(isinstance(g["goal_options"], dict) for g in data.goals)


def test_loading_is_deterministic_and_num_products_truncates(tmp_path):
    root = write_fixture(tmp_path / "ws")
    assert load_upstream(root, seed=4).goals == load_upstream(root, seed=4).goals
    assert [p["asin"] for p in load_upstream(root, num_products=2).products] == ["B000000001", "B000000002"]


def test_env_plays_upstream_files(tmp_path):
    root = write_fixture(tmp_path / "ws")
    env = WebShopEnv(data_dir=str(root), split_sizes=(0, 0))
    obs, info = env.reset(seed=0)
    assert info["task_id"].startswith("webshop/train/")
    obs, *_ = env.step("search[shampoo]")
    assert "B000000001 [SEP] Tea Tree Shampoo [SEP] $12.99" in obs


def test_bad_files_name_file_record_and_field(tmp_path):
    broken = [dict(RAW_PRODUCTS[0]), dict(RAW_PRODUCTS[1])]
    del broken[1]["query"]
    root = write_fixture(tmp_path / "a", products=broken)
    with pytest.raises(WebShopDataError, match=r"items_shuffle_1000.json, record 1, field 'query': missing"):
        load_upstream(root)
    bad_price = [dict(RAW_PRODUCTS[0], pricing="twelve")]
    with pytest.raises(WebShopDataError, match=r"record 0, field 'pricing'"):
        load_upstream(write_fixture(tmp_path / "b", products=bad_price))
    (tmp_path / "c").mkdir()
    with pytest.raises(WebShopDataError, match="no items_shuffle"):
        find_upstream_files(tmp_path / "c")
    root = write_fixture(tmp_path / "d")
    (root / "items_ins_v2_1000.json").write_text("{not json")
    with pytest.raises(WebShopDataError, match=r"items_ins_v2_1000.json: malformed JSON at line 1"):
        load_upstream(root)


def test_split_bounds():
    assert split_bounds(12087) == {"test": range(500), "eval": range(500, 1500), "train": range(1500, 12087)}
    assert split_bounds(2000) == {"test": range(83), "eval": range(83, 248), "train": range(248, 2000)}
    assert split_bounds(10, (2, 3))["train"] == range(5, 10)
    with pytest.raises(ValueError, match="no training goals"):
        split_bounds(10, (5, 5))


# ------------------------------------------------------------------ generator
def test_generator_is_deterministic_fast_and_upstream_shaped():
    start = time.perf_counter()
    first = generate_catalogue(3000, seed=11)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"3000 products took {elapsed:.1f}s"
    assert first == generate_catalogue(3000, seed=11)
    assert first != generate_catalogue(3000, seed=12)
    assert len(first["products"]) == 3000
    assert sum(len(v) for v in first["human"].values()) == 6000
    assert {p["category"] for p in first["products"]} == set(CATEGORIES)
    assert len({p["asin"] for p in first["products"]}) == 3000
    for p in first["products"][:50]:
        assert len(p["asin"]) == 10 and p["pricing"].startswith("$")
        assert len(p["name"].split()) <= 8  # compact titles
        assert p["query"] in p["name"].lower()


def test_generator_round_trips_through_upstream_files(tmp_path):
    paths = write_catalogue(tmp_path / "gen", num_products=150, seed=5)
    assert {p.name for p in paths.values()} == {"items_shuffle.json", "items_ins_v2.json", "items_human_ins.json"}
    from_files = load_upstream(tmp_path / "gen", seed=5)
    files = generate_catalogue(150, seed=5)
    in_memory = build_data(files["products"], files["attributes"], files["human"], seed=5)
    assert from_files.goals == in_memory.goals
    assert from_files.products == in_memory.products
    assert load_catalogue(None, 150, None, 5).data.goals == in_memory.goals


def test_every_generated_goal_is_findable_by_its_words():
    files = generate_catalogue(400, seed=2)
    data = build_data(files["products"], files["attributes"], files["human"], seed=2)
    engine = ProductSearch(data.products)
    position = {p["asin"]: i for i, p in enumerate(data.products)}
    for goal in data.goals:
        hits = engine.search(instruction_keywords(goal["instruction_text"]), SEARCH_RETURN_N)
        assert position[goal["asin"]] in hits
        product = data.by_asin[goal["asin"]]
        assert set(goal["attributes"]) <= set(product["Attributes"])
        assert all(any(v in values for values in product["options"].values()) for v in goal["goal_options"])
        assert data.prices[goal["asin"]] <= goal["price_upper"]
