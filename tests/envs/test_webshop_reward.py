"""WebShop reward: every branch of upstream's formula, with hand-computed expected values."""

import pytest
from rapidfuzz import fuzz, utils

from prism_lit.envs.webshop.normalize import normalize_color
from prism_lit.envs.webshop.reward import (
    fallback_nouns,
    full_process,
    get_attribute_reward,
    get_option_reward,
    get_reward,
    get_type_reward,
    reward_info,
    token_set_ratio,
)


def words(name):
    """Test noun extractor: every whitespace word is a noun (keeps hand computations simple)."""
    return name.lower().split()


# ------------------------------------------------------------------ fuzzy scores
def test_full_process_matches_thefuzz_rules():
    assert full_process("  Navy/Blue  ") == "navy blue"
    assert full_process("Caf\u00e9 Latte") == "caf latte"  # U+00E9 (Latin-1 range) is dropped, not spaced
    assert full_process(("color", "grey")) == "color    grey"  # a tuple is str()-ed first
    assert full_process("snake_case") == "snake_case"  # \W keeps the underscore


def test_token_set_ratio_hand_values():
    # identical token sets
    assert token_set_ratio("pack of 12", "12 of pack") == 100
    # a subset: intersection non-empty and one difference empty
    assert token_set_ratio("small", "x-small") == 100
    # "x large" vs "size large": sect="large", "large x" (7 chars), "large size" (10):
    # 2*5/12 = 83.3 -> 83; 2*5/15 -> 67; LCS("large x", "large size") = 6 -> 2*6/17 = 70.6 -> 71; max 83
    assert token_set_ratio("x-large", ("size", "large")) == 83
    # "essential oil" vs "essential oils": ratio of the combined strings 2*13/27 = 96.3 -> 96
    assert token_set_ratio("essential oil", "essential oils") == 96
    assert token_set_ratio("", "anything") == 0
    assert token_set_ratio("!!!", "anything") == 0


def test_integer_rounding_decides_the_threshold():
    # single tokens, LCS 20, lengths 20 + 27: raw score 100 * 40 / 47 = 85.106 -> integer 85, not > 85
    a = "abcdefghijklmnopqrst"
    b = a + "uvwxyz1"
    assert fuzz.ratio(a, b) == pytest.approx(85.106, abs=1e-3)
    assert token_set_ratio(a, b) == 85
    assert get_option_reward([a], [b]) == (0.0, 0)  # a float comparison would have matched
    # LCS 20, lengths 20 + 26: 100 * 40 / 46 = 86.96 -> 87 > 85
    assert get_option_reward([a], [a + "uvwxyz"]) == (1.0, 1)


def test_token_set_ratio_agrees_with_rapidfuzz_on_ascii():
    import random

    rng = random.Random(0)
    vocab = ["red", "navy", "blue", "grey", "xl", "x-large", "large", "small", "pack", "of", "12", "tea", "tree", "oil", "oils", "essential", "3", "ounce"]
    for _ in range(3000):
        a = " ".join(rng.choices(vocab, k=rng.randint(1, 5)))
        b = " ".join(rng.choices(vocab, k=rng.randint(1, 5)))
        expected = round(fuzz.token_set_ratio(a, b, processor=utils.default_process))
        assert token_set_ratio(a, b) == expected, (a, b)


# ------------------------------------------------------------------ colour normalisation
def test_normalize_color_first_in_list_wins():
    assert normalize_color("navy blue") == "blue"  # "blue" precedes "navy" in upstream's list
    assert normalize_color("dark grey") == "dark"
    assert normalize_color("light grey") == "grey"
    assert normalize_color("Red") == "Red"  # case-sensitive
    assert normalize_color(("color", "navy blue")) == ("color", "navy blue")  # tuple: membership only
    assert normalize_color(("color", "navy")) == "navy"


# ------------------------------------------------------------------ type reward branches
BASE = {"query": "shampoo", "product_category": "a › b › c", "name": "lumo vegan shampoo"}


def type_reward(product_changes, goal_changes=None):
    product = {**BASE, **product_changes}
    goal = {**BASE, **(goal_changes or {})}
    return get_type_reward(product, goal, nouns=words)


def test_type_reward_full_match():
    r = type_reward({})
    assert r == {"r_type": 1.0, "query_match": True, "category_match": True, "title_score": 1.0}


def test_type_reward_no_match_gives_half():
    # query differs, one shared category part, title share exactly 0.2 (1 of 5) is not > 0.2
    r = type_reward({"query": "soap", "product_category": "a › x › y", "name": "one"},
                    {"name": "one two three four five"})
    assert (r["query_match"], r["category_match"], r["title_score"]) == (False, False, 0.2)
    assert r["r_type"] == 0.5


def test_type_reward_title_share_alone_is_a_match():
    r = type_reward({"query": "soap", "product_category": "x › y", "name": "one"}, {"name": "one two three four"})
    assert r["title_score"] == 0.25 and r["r_type"] == 1.0


def test_type_reward_category_match_needs_two_parts_any_order():
    assert type_reward({"query": "soap", "product_category": "c › x › a", "name": "zzz"},
                       {"name": "a b c d"})["category_match"] is True
    r = type_reward({"query": "soap", "product_category": "a › a › d", "name": "a"}, {"name": "a b c d"})
    assert r["category_match"] is False and r["title_score"] == 0.25 and r["r_type"] == 1.0


def test_low_title_share_overrides_query_match():
    # 1 shared noun of 11: 0.0909 < 0.1 -> 0.1 even though query and category match
    goal_name = "n1 n2 n3 n4 n5 n6 n7 n8 n9 n10 n11"
    r = type_reward({"name": "n1"}, {"name": goal_name})
    assert r["query_match"] and r["category_match"]
    assert r["title_score"] == pytest.approx(1 / 11) and r["r_type"] == 0.1


def test_zero_title_share_gives_zero():
    r = type_reward({"name": "conditioner"}, {"name": "shampoo"})
    assert r["query_match"] and r["title_score"] == 0.0 and r["r_type"] == 0.0


def test_goal_without_nouns_scores_0_2():
    def no_nouns(name):
        return []
    r = get_type_reward({**BASE, "query": "soap", "product_category": "x"}, BASE, nouns=no_nouns)
    assert r["title_score"] == 0.2 and r["r_type"] == 0.5
    r = get_type_reward(BASE, BASE, nouns=no_nouns)
    assert r["title_score"] == 0.2 and r["r_type"] == 1.0


def test_title_share_counts_goal_repeats_but_not_shared_repeats():
    # goal nouns [bar, bar, cord, power]; product shares {bar}: 1 / 4 (upstream: set intersection / list length)
    r = type_reward({"name": "bar bar bar"}, {"name": "bar bar cord power"})
    assert r["title_score"] == 0.25


def test_fallback_nouns():
    assert fallback_nouns("Lumo Vegan Shampoo for Dry Hair, 8 oz") == ["lumo", "vegan", "shampoo", "dry", "hair"]
    assert fallback_nouns("Bar 3.1 Bar 2.1") == ["bar", "bar"]
    assert fallback_nouns("the and of") == []


# ------------------------------------------------------------------ attribute reward
def test_attribute_fuzzy_then_substring_lowercasing_product_only():
    product = {"Attributes": ["essential oil"], "Title": "TEA TREE Shampoo", "BulletPoints": ["Natural Ingredients"],
               "Description": ""}
    goal = {"attributes": ["essential oils", "tea tree", "natural ingredients", "Paraben Free"]}
    # fuzzy 96 > 85; "tea tree" in lowered Title; in lowered bullets; "Paraben Free" would need the goal lowered too
    product["Description"] = "paraben free formula"
    assert get_attribute_reward(product, goal) == (0.75, 3)


def test_string_bullet_points_are_joined_character_by_character():
    goal = {"attributes": ["essential oils"]}
    as_string = {"Attributes": [], "Title": "", "BulletPoints": "has essential oils", "Description": ""}
    as_list = {**as_string, "BulletPoints": ["has essential oils"]}
    assert get_attribute_reward(as_string, goal) == (0.0, 0)
    assert get_attribute_reward(as_list, goal) == (1.0, 1)


# ------------------------------------------------------------------ option reward
def test_option_colour_normalisation_quirks():
    assert get_option_reward(["navy blue"], ["blue"]) == (1.0, 1)
    # goal "navy" stays "navy", the purchase "navy blue" becomes "blue": no match
    assert get_option_reward(["navy blue"], ["navy"]) == (0.0, 0)


def test_option_dict_goal_uses_name_value_tuples():
    # purchase "small" vs goal ('size', 'x-small'): "small" vs "size x small" -> 100
    assert get_option_reward(["small"], list({"size": "x-small"}.items())) == (1.0, 1)
    # purchase "x-small" vs goal ('size', 'small'): "x small" vs "size small" -> 83
    assert get_option_reward(["x-small"], list({"size": "small"}.items())) == (0.0, 0)
    assert get_option_reward(["navy blue"], list({"color": "navy blue"}.items())) == (1.0, 1)


def test_option_reward_empty_cases():
    assert get_option_reward(["a", "b"], []) == (None, 0)
    assert get_option_reward([], ["grey", "xl"]) == (0.0, 0)
    # no exact-size rule on main: "pack of 1" matches "pack of 12" (2*7/16 -> 88 > 85)
    assert get_option_reward(["pack of 1"], ["pack of 12"]) == (1.0, 1)


# ------------------------------------------------------------------ full reward
def full_product(**changes):
    product = {"query": "shampoo", "product_category": "a › b › c", "name": "lumo vegan shampoo",
               "Title": "Lumo Vegan Shampoo", "Attributes": ["vegan", "paraben free"], "BulletPoints": [],
               "Description": ""}
    product.update(changes)
    return product


GOAL = {"query": "shampoo", "product_category": "a › b › c", "name": "lumo vegan shampoo",
        "attributes": ["vegan", "paraben free"], "goal_options": ["rose", "8 ounce"], "price_upper": 30.0}


def test_full_reward_perfect_purchase():
    assert get_reward(full_product(), GOAL, 20.0, {"scent": "rose", "size": "8 ounce"}, nouns=words) == 1.0


def test_full_reward_price_and_option_misses():
    # 2 attributes + 1 of 2 options + price over the limit: (2 + 1 + 0) / (2 + 2 + 1)
    info = reward_info(full_product(), GOAL, 35.0, {"scent": "rose", "size": "16 ounce"}, nouns=words)
    assert info["reward"] == pytest.approx(3 / 5)
    assert info["r_price"] is False and info["r_option"] == 0.5 and info["r_att"] == 1.0
    assert info["w_att"] == pytest.approx(2 / 5) and info["w_option"] == pytest.approx(2 / 5)


def test_full_reward_times_type_reward():
    # other product type in another category, 1 of 3 goal nouns shared: title 1/3 > 0.2 -> r_type 1.0;
    # then with 1 of 5 nouns: 0.2, no query/category match -> 0.5
    product = full_product(query="soap", product_category="x › y › z", name="vegan soap bar")
    goal = {**GOAL, "goal_options": {}}
    assert get_reward(product, goal, 20.0, {}, nouns=words) == pytest.approx(1.0)
    goal = {**goal, "name": "lumo vegan shampoo for hair"}
    assert get_reward(product, goal, 20.0, {}, nouns=words) == pytest.approx(0.5)


def test_dict_goal_options_denominator_and_upstream_example():
    # upstream's tests/web-agent-site/engine/test_goal.py::test_get_reward, second and third cases
    goal = {"query": "Query 1", "product_category": "a › b › c", "name": "Name One",
            "attributes": ["tea tree", "essential oils", "natural ingredients"],
            "goal_options": {"color": "grey", "size": "XL"}, "price_upper": 40.00}
    product = {"query": "Query 1", "product_category": "a › b › c", "name": "Name One", "Attributes": [],
               "Title": "", "BulletPoints": "This shampoo has essential oils and smells like lemons",
               "Description": "Best shampoo on the market, made with natural ingredients"}
    options = {"color": "grey", "size": "XL"}
    assert get_reward(product, goal, 35, options, nouns=words) == pytest.approx(4 / 6)
    goal["goal_options"] = {"color": "grey", "size": "XL", "amount": "pack of 12"}
    assert get_reward(product, goal, 35, options, nouns=words) == pytest.approx(4 / 7)


def test_bad_price_upper_is_a_clear_error():
    with pytest.raises(ValueError, match="price_upper"):
        get_reward(full_product(), {**GOAL, "price_upper": 0}, 1.0, {})
