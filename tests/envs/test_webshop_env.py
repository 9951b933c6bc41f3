"""WebShopEnv: Gymnasium API, upstream page behaviour, robustness to garbage, determinism, splits."""

import random
import string

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import prism_lit.envs  # noqa: F401  (registers the ids)
from prism_lit.envs import WEBSHOP_ID
from prism_lit.envs.webshop.env import WebShopEnv, parse_action
from prism_lit.envs.webshop.reward import get_reward
from prism_lit.envs.webshop.search import instruction_keywords

SMALL = {"num_products": 200, "catalogue_seed": 3}


@pytest.fixture
def env():
    e = WebShopEnv(**SMALL)
    yield e
    e.close()


def test_check_env_passes():
    check_env(gym.make(WEBSHOP_ID, render_mode="ansi", **SMALL).unwrapped, skip_render_check=False)


def test_gymnasium_make_sets_time_limit():
    env = gym.make(WEBSHOP_ID, **SMALL)
    assert env.spec.max_episode_steps == 15
    env.reset(seed=0)
    truncated = False
    for _step in range(15):
        _, _, terminated, truncated, _ = env.step("click[nothing here]")
        assert not terminated
    assert truncated
    env = gym.make(WEBSHOP_ID, max_episode_steps=4, **SMALL)
    assert env.spec.max_episode_steps == 4


def test_start_page_and_info(env):
    obs, info = env.reset(seed=0)
    instruction = env.goal["instruction_text"]
    assert obs == f"WebShop [SEP] Instruction: [SEP] {instruction} [SEP] Search"
    assert info["admissible_actions"] == [] and info["has_search_bar"] is True
    assert info["won"] is False and info["score"] == 0.0
    assert info["task_id"].startswith("webshop/train/")
    assert info["task_type"] == env.goal["category"]
    assert env.observation_space.contains(obs)


def test_click_search_button_is_invalid_as_upstream(env):
    obs, _ = env.reset(seed=0)
    obs2, reward, terminated, _truncated, info = env.step("click[search]")
    assert obs2 == obs and reward == 0 and not terminated and info["valid_action"] is False


def test_navigation_matches_upstream_pages(env):
    env.reset(seed=1)
    goal = env.goal
    obs, _, _, _, info = env.step("search[black white small large]")
    assert info["page"] == "search_results" and not info["has_search_bar"]
    parts = obs.split(" [SEP] ")
    assert parts[:4] == ["Instruction:", goal["instruction_text"], "Back to Search", parts[3]]
    assert parts[3].startswith("Page 1 (Total results: ")
    total = int(parts[3].split(": ")[1].rstrip(")"))
    assert total == 50  # common option words: upstream's 50-result cap
    assert parts[4] == "Next >"  # page 1 has no "< Prev"
    asins = parts[5::3]
    assert len(asins) == 10
    assert info["admissible_actions"][:2] == ["click[back to search]", "click[next >]"]
    assert info["admissible_actions"][2:] == [f"click[{a.lower()}]" for a in asins]

    obs2, _, _, _, _info2 = env.step("click[next >]")
    parts2 = obs2.split(" [SEP] ")
    assert parts2[3].startswith("Page 2 ") and parts2[4:6] == ["< Prev", "Next >"]
    assert set(parts2[6::3]).isdisjoint(asins)
    obs3, *_ = env.step("click[< prev]")
    assert obs3 == obs

    product = env.data.by_asin[asins[0]]
    obs, _, _, _, info = env.step(f"click[{asins[0].lower()}]")
    assert info["page"] == "item_page"
    expected = ["Instruction:", goal["instruction_text"], "Back to Search", "< Prev"]
    for name, values in product["options"].items():
        expected += [name, *values]
    expected += [product["Title"], f"Price: {product['Price']}", "Rating: N.A.", "Description", "Features",
                 "Reviews", "Buy Now"]
    assert obs.split(" [SEP] ") == expected
    buttons = ["click[back to search]", "click[< prev]", "click[description]", "click[features]",
               "click[reviews]", "click[buy now]"]
    assert info["admissible_actions"][:6] == buttons

    obs, _, _, _, info = env.step("click[features]")
    assert info["page"] == "item_sub_page"
    assert obs.split(" [SEP] ")[4:] == product["BulletPoints"]
    obs, *_ = env.step("click[description]")  # not on the sub page: invalid, unchanged
    assert obs.split(" [SEP] ")[4:] == product["BulletPoints"]
    obs, _, _, _, info = env.step("click[< prev]")
    assert info["page"] == "item_page"
    obs, _, _, _, info = env.step("click[< prev]")
    assert info["page"] == "search_results" and obs.split(" [SEP] ")[3].startswith("Page 1 ")
    obs, _, _, _, info = env.step("click[back to search]")
    assert info["page"] == "index" and info["has_search_bar"]


def test_options_and_purchase_reward(env):
    env.reset(seed=5)
    goal = env.goal
    env.step(f"search[{instruction_keywords(goal['instruction_text'])}]")
    page = 1
    while f"click[{goal['asin'].lower()}]" not in env.admissible_actions:
        env.step("click[next >]")
        page += 1
        assert page <= 5
    _, _, _, _, info = env.step(f"click[{goal['asin'].lower()}]")
    product = env.data.by_asin[goal["asin"]]
    # pick the *wrong* value of each option where there is one
    chosen = {}
    for name, values in product["options"].items():
        wrong = [v for v in values if v not in goal["goal_options"]]
        value = (wrong or values)[0]
        env.step(f"click[{value}]")
        chosen[name] = value
    assert env.purchase_state["options"] == chosen
    obs, reward, terminated, truncated, info = env.step("click[buy now]")
    expected = get_reward(product, goal, env.data.prices[goal["asin"]], chosen)
    assert reward == pytest.approx(expected) and info["score"] == pytest.approx(expected)
    assert terminated and not truncated
    assert info["won"] == (expected == 1.0)
    assert obs.startswith("Thank you for shopping with us!")
    # stepping a finished episode changes nothing
    obs2, reward2, terminated2, _, _ = env.step("click[buy now]")
    assert (obs2, reward2, terminated2) == (obs, 0.0, True)


def test_search_works_from_any_page_as_upstream_text_env(env):
    env.reset(seed=2)
    env.step("search[shampoo]")
    asin = env.admissible_actions[2]
    env.step(asin)
    _obs, _, _, _, info = env.step("search[coffee table]")
    state = env.purchase_state
    assert info["page"] == "search_results" and state["asin"] is None and state["options"] == {}
    assert state["keywords"] == "coffee table" and state["page_num"] == 1 and state["num_results"] > 0


def test_parse_action_is_upstreams_regex():
    assert parse_action("search[red shoes]") == ("search", "red shoes")
    assert parse_action("click[a][b]") == ("click[a]", "b")  # greedy first group
    assert parse_action("search[]") == ("search[]", None)
    assert parse_action("click[x] trailing") == ("click", "x")
    assert parse_action("search[a\nb]") == ("search[a\nb]", None)


GARBAGE = ["", " ", "click", "click[]", "click[", "search[]", "search[ ]", "SEARCH[x]", "Click[Buy Now]",
           "click[buy now", "[buy now]", "\x00", "🙂 click[🙂]", "search[" + "x" * 5000 + "]", "click[< prev]]",
           "click[next >]", "click[back to search]", "search[\n]", None, 17, 3.5, ["click[x]"], b"search[x]"]


def test_thousands_of_random_and_garbage_actions_never_raise():
    env = gym.make(WEBSHOP_ID, **SMALL)
    rng = random.Random(0)
    vocab = ["shampoo", "red", "large", "vegan", "table", "wireless", "pack", "of", "12", "zzz"]
    steps = episodes = 0
    obs, info = env.reset(seed=0)
    while steps < 3000:
        roll = rng.random()
        if roll < 0.45 and info["admissible_actions"]:
            action = rng.choice(info["admissible_actions"])
        elif roll < 0.6:
            action = f"search[{' '.join(rng.choices(vocab, k=rng.randint(1, 4)))}]"
        elif roll < 0.8:
            action = rng.choice(GARBAGE)
        else:
            action = "".join(rng.choices(string.printable, k=rng.randint(0, 40)))
        before = obs
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        assert isinstance(obs, str) and obs
        assert 0.0 <= reward <= 1.0
        assert set(info) >= {"admissible_actions", "won", "task_id", "task_type", "score", "has_search_bar"}
        if not info["valid_action"]:
            assert obs == before and reward == 0.0
        if terminated or truncated:
            episodes += 1
            obs, info = env.reset()
    assert episodes > 50


def test_reset_is_deterministic_by_seed():
    a, b = WebShopEnv(**SMALL), WebShopEnv(**SMALL)
    for seed in (0, 1, 42):
        assert a.reset(seed=seed) == b.reset(seed=seed)
    a.reset(seed=7)
    b.reset(seed=7)
    for action in ["search[vegan shampoo]", "click[next >]", "click[< prev]"]:
        assert a.step(action) == b.step(action)
    tasks = {WebShopEnv(**SMALL).reset(seed=s)[1]["task_id"] for s in range(20)}
    assert len(tasks) > 10  # seeds pick different tasks
    # unseeded resets continue the seeded stream deterministically
    a.reset(seed=3)
    b.reset(seed=3)
    assert [a.reset()[1]["task_id"] for _ in range(5)] == [b.reset()[1]["task_id"] for _ in range(5)]


def test_task_id_option_and_errors(env):
    task = env.task_ids[4]
    _obs, info = env.reset(seed=0, options={"task_id": task})
    assert info["task_id"] == task and env.goal is env.data.goals[int(task.split("/")[-1])]
    test_id = f"webshop/test/{env.bounds['test'][0]}"
    assert env.reset(options={"task_id": test_id})[1]["task_id"] == test_id  # explicit ids of any split
    with pytest.raises(ValueError, match="split 'test'"):
        env.reset(options={"task_id": f"webshop/train/{env.bounds['test'][0]}"})
    with pytest.raises(ValueError, match="expected 'webshop/<split>/<goal index>'"):
        env.reset(options={"task_id": "alfworld/train/1"})
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"task_id": "webshop/train/999999"})


def test_splits_are_disjoint_and_proportional():
    envs = {s: WebShopEnv(split=s, **SMALL) for s in ("train", "eval", "test")}
    ids = {s: set(e.task_ids) for s, e in envs.items()}
    n_goals = len(envs["train"].data.goals)
    assert n_goals == 400
    assert len(ids["test"]) == round(400 * 500 / 12087) == 17
    assert len(ids["eval"]) == round(400 * 1000 / 12087) == 33
    assert sum(len(v) for v in ids.values()) == n_goals
    for seed in range(10):
        assert envs["test"].reset(seed=seed)[1]["task_id"] in ids["test"]
    custom = WebShopEnv(split="eval", split_sizes=(50, 100), **SMALL)
    assert custom.bounds["eval"] == range(50, 150)
    with pytest.raises(ValueError, match="split"):
        WebShopEnv(split="dev", **SMALL)


def test_task_types_filter():
    env = WebShopEnv(task_types=["food", "beauty"], **SMALL)
    assert env.task_types == ["beauty", "food"]
    assert {env.reset(seed=s)[1]["task_type"] for s in range(30)} <= {"food", "beauty"}
    with pytest.raises(ValueError, match="unknown task_types"):
        WebShopEnv(task_types=["toys"], **SMALL)


def test_results_per_page():
    env = WebShopEnv(results_per_page=3, **SMALL)
    env.reset(seed=0)
    obs, *_ = env.step("search[shampoo conditioner]")
    assert len(obs.split(" [SEP] ")[5:]) == 9  # 3 products x (asin, title, price)
