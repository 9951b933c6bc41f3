"""benchmarks/webshop_action_accuracy.py: its step classes, and chance levels read off real env pages that
agree with the catalogue's own option lists."""

import importlib.util
from pathlib import Path

import gymnasium as gym

import prism_lit.envs  # noqa: F401
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.envs.webshop.generator import CATEGORIES

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "webshop_action_accuracy.py"
_spec = importlib.util.spec_from_file_location("webshop_action_accuracy", SCRIPT)
diag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diag)
KINDS = {k for c in CATEGORIES.values() for k in c["options"]}


def test_action_kinds():
    assert diag.action_kind("Action: search[noise cancelling mouse]") == "search"
    assert diag.action_kind("Action: 3") == "product"
    assert diag.action_kind("Action: click[b0ab12cd34]") == "product"
    assert diag.action_kind("Action: click[buy now]") == "buy"
    assert diag.action_kind("Action: click[next >]") == "detour"
    assert diag.action_kind("Action: click[back to search]") == "detour"
    assert diag.action_kind("Action: click[navy]") == "option"


def test_chance_levels_agree_with_the_catalogue():
    env = gym.make("prism_lit/WebShop-v0", num_products=60, results_per_page=3)
    protocol = AgentProtocol(env="webshop", numbered_actions=True, number_pattern=r"^click\[b0")
    checked = 0
    for seed in range(6):
        env.reset(seed=seed)
        goal = env.unwrapped.goal
        obs, _, _, _, info = env.step(f"search[{goal['query']}]")
        listed = [a for a in info["admissible_actions"] if a.startswith("click[b0")]
        assert diag.product_chance(protocol.render_observation(obs, info["admissible_actions"])) == 1 / len(listed)
        obs, _, _, _, info = env.step(listed[0])
        product = env.unwrapped.data.by_asin[listed[0][6:-1].upper()]
        page = protocol.render_observation(obs, info["admissible_actions"])
        for values in product["customization_options"].values():
            for option in values:
                assert diag.option_chance(page, option["value"], KINDS) == 1 / len(values)
                checked += 1
    assert checked > 0
