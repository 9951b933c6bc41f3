"""WebShop's purchase reward, reproducing upstream ``web_agent_site/engine/goal.py`` (main branch).

``r = (n_attr_matched + n_option_matched + price_ok) / (len(goal attributes) + len(goal options) + 1) * r_type``

Upstream quirks kept on purpose (each one changes numbers):

* Fuzzy matching is thefuzz 0.19's ``token_set_ratio``: both sides go through thefuzz's ``full_process``
  (drop the Latin-1 range U+0080..U+00FF, every non-word character to a space, lowercase, strip), then the
  best of three integer-rounded ratios between the sorted token strings; a match needs an integer score > 85,
  i.e. a raw score of at least 85.5 (``round(85.5) == 86``). Ratios use rapidfuzz's InDel similarity, the same
  number as thefuzz with python-Levenshtein (and thefuzz >= 0.20); thefuzz without python-Levenshtein
  falls back to ``difflib`` and can differ on rare strings.
* Attribute fallback: substring of the product's ``Title``, ``' '.join(BulletPoints)`` or ``Description``;
  only the product side is lowercased, and a string ``BulletPoints`` is joined character by character.
* Options: the purchased option *values* are compared with the goal options; a dict goal passes
  ``(name, value)`` tuples, so colour normalisation tests tuple membership and the fuzzy score sees
  ``"('color', 'grey')"``. No exact-size rule (that is the unmerged v2 branch).
* Type reward: ``title_score`` = (number of *distinct* shared nouns) / (number of goal-name nouns, repeats
  counted); ``r_type`` 1.0, then 0.5 if none of (query match, >= 2 shared '›' category parts,
  title_score > 0.2), then 0.1 if title_score < 0.1, then 0.0 if title_score == 0, each overriding the last.

Nouns: upstream runs spaCy ``en_core_web_sm`` (tags NOUN/PROPN). When that model is installed we use it; else
:func:`fallback_nouns` (documented below) approximates it, which can shift ``title_score`` on real titles.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rapidfuzz.distance import Indel

from prism_lit.envs.webshop.normalize import normalize_color

__all__ = [
    "FUZZY_THRESHOLD",
    "fallback_nouns",
    "full_process",
    "get_attribute_reward",
    "get_option_reward",
    "get_reward",
    "get_type_reward",
    "reward_info",
    "spacy_available",
    "title_nouns",
    "token_set_ratio",
]

FUZZY_THRESHOLD = 85
_LATIN1 = {c: None for c in range(128, 256)}
_NON_WORD = re.compile(r"(?ui)\W")


# ------------------------------------------------------------------ fuzzy matching (thefuzz 0.19)
def full_process(value: Any) -> str:
    """thefuzz's ``full_process(s, force_ascii=True)``: non-strings are ``str()``-ed first."""
    text = value if isinstance(value, str) else str(value)
    text = text.translate(_LATIN1)
    return _NON_WORD.sub(" ", text).lower().strip()


def _ratio(a: str, b: str) -> int:
    if a == b:
        return 100
    if not a or not b:
        return 0
    total = len(a) + len(b)
    return int(round(100 * ((total - Indel.distance(a, b)) / total)))


def token_set_ratio(a: Any, b: Any) -> int:
    """Integer ``token_set_ratio`` exactly as thefuzz 0.19 computes it (with a Levenshtein backend)."""
    p1, p2 = full_process(a), full_process(b)
    if not p1 or not p2:
        return 0
    t1, t2 = set(p1.split()), set(p2.split())
    sect = " ".join(sorted(t1 & t2))
    combined_12 = (sect + " " + " ".join(sorted(t1 - t2))).strip()
    combined_21 = (sect + " " + " ".join(sorted(t2 - t1))).strip()
    sect = sect.strip()
    return max(_ratio(sect, combined_12), _ratio(sect, combined_21), _ratio(combined_12, combined_21))


# ------------------------------------------------------------------ nouns of product names
# Closed-class English words (determiners, pronouns, prepositions, conjunctions, auxiliaries, common adverbs
# and quantity words) that spaCy never tags NOUN/PROPN in product titles.
_FUNCTION_WORDS = frozenset(
    ["a", "an", "the", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our", "their", "i", "you", "he", "she", "it", "we", "they", "me", "him", "us", "them", "and", "or", "but", "nor", "so", "yet", "for", "of", "in", "on", "at", "by", "to", "from", "with", "without", "into", "onto", "over", "under", "about", "above", "below", "between", "among", "through", "during", "before", "after", "up", "down", "out", "off", "per", "via", "than", "as", "if", "then", "also", "too", "very", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "has", "have", "had", "can", "could", "will", "would", "shall", "should", "may", "might", "must", "not", "no", "all", "any", "some", "each", "every", "both", "either", "neither", "one", "ones", "other", "such", "same", "own", "only", "just", "more", "most", "less", "least", "much", "many", "few", "several", "new", "plus", "set", "pack", "pcs", "pc", "piece", "pieces", "inch", "inches", "oz", "ounce", "ounces", "lb", "lbs"]
)
_WORD = re.compile(r"[a-z][a-z0-9]*(?:['\-][a-z0-9]+)*")


def fallback_nouns(name: str) -> list[str]:
    """Heuristic NOUN/PROPN tokens when no spaCy English model is installed.

    Lowercased word tokens (starting with a letter) that are not closed-class function words, unit or
    quantity words, with repeats kept in order. Product titles are mostly noun phrases (brand, product
    type, material), so this over-counts only adjectives and the occasional verb.
    """
    return [w for w in _WORD.findall(name.lower()) if w not in _FUNCTION_WORDS]


@functools.lru_cache(maxsize=1)
def _spacy_pipeline() -> Any | None:
    try:
        import spacy

        return spacy.load("en_core_web_sm", disable=["parser", "ner", "lemmatizer"])
    except Exception:  # no spaCy or no English model: use the fallback
        return None


def spacy_available() -> bool:
    """Whether spaCy's ``en_core_web_sm`` is installed (then title nouns match upstream's)."""
    return _spacy_pipeline() is not None


@functools.lru_cache(maxsize=65536)
def title_nouns(name: str) -> tuple[str, ...]:
    """Lowercased NOUN/PROPN tokens of a product name: spaCy when available, else :func:`fallback_nouns`."""
    nlp = _spacy_pipeline()
    if nlp is None:
        return tuple(fallback_nouns(name))
    return tuple(t.text.lower() for t in nlp(name) if t.pos_ in ("PNOUN", "NOUN", "PROPN"))


# ------------------------------------------------------------------ reward components
NounFn = Callable[[str], Sequence[str]]


def get_type_reward(product: Mapping[str, Any], goal: Mapping[str, Any], nouns: NounFn | None = None) -> dict:
    """``r_type`` and its inputs (query match, category match, title score)."""
    nouns = nouns or title_nouns
    query_match = product["query"] == goal["query"]
    bought_cats = {x.strip() for x in product["product_category"].split("›")}
    goal_cats = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(bought_cats & goal_cats) >= 2
    bought_nouns = list(nouns(product["name"]))
    goal_nouns = list(nouns(goal["name"]))
    if not goal_nouns:
        title_score = 0.2
    else:
        title_score = len(set(bought_nouns) & set(goal_nouns)) / len(goal_nouns)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match, "title_score": title_score}


def _joined(value: Any) -> str:
    # upstream: ' '.join(BulletPoints) -- a plain string is joined character by character
    return " ".join(value)


def get_attribute_reward(product: Mapping[str, Any], goal: Mapping[str, Any]) -> tuple[float, int]:
    """``(share, count)`` of goal attributes found in the product (fuzzy on Attributes, else substring)."""
    goal_attrs = goal["attributes"]
    matches = 0
    for g_attr in goal_attrs:
        if any(token_set_ratio(p_attr, g_attr) > FUZZY_THRESHOLD for p_attr in product["Attributes"]) or (
            g_attr in product["Title"].lower()
            or g_attr in _joined(product["BulletPoints"]).lower()
            or g_attr in product["Description"].lower()
        ):
            matches += 1
    return matches / len(goal_attrs), matches


def get_option_reward(purchased_options: Iterable[Any], goal_options: Iterable[Any]) -> tuple[float | None, int]:
    """``(share or None, count)`` of goal options matched by a purchased option (colours normalised)."""
    purchased = [normalize_color(o) for o in purchased_options]
    goals = [normalize_color(o) for o in goal_options]
    matches = 0
    for g_option in goals:
        if any(token_set_ratio(p_option, g_option) > FUZZY_THRESHOLD for p_option in purchased):
            matches += 1
    return (matches / len(goals) if goals else None), matches


def _goal_option_items(goal: Mapping[str, Any]) -> list[Any]:
    options = goal["goal_options"]
    return list(options.items()) if isinstance(options, dict) else list(options)


def reward_info(
    product: Mapping[str, Any],
    goal: Mapping[str, Any],
    price: float,
    options: Mapping[str, str],
    nouns: NounFn | None = None,
) -> dict[str, Any]:
    """The reward and its parts, as upstream's ``get_reward(..., verbose=True)`` reports them."""
    price_upper = goal["price_upper"]
    if not price_upper > 0:
        raise ValueError(f"goal {goal.get('asin', '?')}: field 'price_upper' must be > 0, got {price_upper!r}")
    type_info = get_type_reward(product, goal, nouns)
    price_ok = price <= price_upper
    r_att, n_att = get_attribute_reward(product, goal)
    r_option, n_opt = get_option_reward(list(options.values()), _goal_option_items(goal))
    denominator = len(goal["attributes"]) + len(goal["goal_options"]) + 1
    total = (n_att + n_opt + price_ok) / denominator * type_info["r_type"]
    info: dict[str, Any] = {
        "reward": total,
        "r_type": type_info["r_type"],
        "r_att": r_att,
        "w_att": len(goal["attributes"]) / denominator,
        "query_match": type_info["query_match"],
        "category_match": type_info["category_match"],
        "title_score": type_info["title_score"],
        "r_price": price_ok,
        "w_price": 1 / denominator,
    }
    if r_option is not None:
        info["r_option"] = r_option
        info["w_option"] = len(goal["goal_options"]) / denominator
    return info


def get_reward(
    product: Mapping[str, Any],
    goal: Mapping[str, Any],
    price: float,
    options: Mapping[str, str],
    nouns: NounFn | None = None,
) -> float:
    """Upstream's purchase reward in [0, 1] for buying ``product`` at ``price`` with ``options``.

    ``product`` and ``goal`` use upstream's dict formats (product: ``query``, ``name``, ``product_category``,
    ``Title``, ``Attributes``, ``BulletPoints``, ``Description``; goal: ``query``, ``name``,
    ``product_category``, ``attributes``, ``goal_options`` (dict or list), ``price_upper``); ``options`` maps
    option name to the chosen value. ``nouns`` overrides the title-noun extractor (default :func:`title_nouns`).
    """
    return reward_info(product, goal, price, options, nouns)["reward"]
