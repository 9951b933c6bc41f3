"""Every env takes any action: 10,000 fuzzed actions each (garbage, near-misses of admissible commands, huge and
pathological strings, non-strings), with no exception, a well-formed step result, ``valid_action`` in every info,
and a bounded time per step. Actions over the action space's length are invalid and answered in constant time."""

from __future__ import annotations

import string
import time

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import prism_lit.envs  # noqa: F401  (registers the ids)
from prism_lit.envs.webshop.env import _ACTION_RE, parse_action

EXAMPLES, PER_EXAMPLE = 1000, 10  # 10,000 actions per env
RESET_EVERY = 60  # steps of one episode before a new one (and at its end)
# CPU seconds of one step of any action (the typical step takes about a millisecond); CPU time, not wall-clock, so
# other processes on a shared CI machine do not make the bound flaky
MAX_STEP_SECONDS = 0.5

PRINTABLE = st.text(alphabet=string.printable, max_size=120)
WORDS = st.sampled_from(["search", "click", "go to", "take", "open", "put", "buy now", "next >", "< prev",
                         "fridge 1", "apple 1", "from", "in/on", "[", "]", "[[", "]]", "b0", "1", "Action:"])


@st.composite
def action(draw):
    """``(kind, payload)``: the step picks from the current admissible actions for kinds that need them."""
    kind = draw(st.sampled_from(["text", "words", "admissible", "admissible", "mutated", "search", "huge",
                                 "brackets", "other"]))
    if kind == "text":
        return kind, draw(PRINTABLE)
    if kind == "words":
        return kind, " ".join(draw(st.lists(WORDS, max_size=6)))
    if kind in ("admissible", "mutated"):
        return kind, (draw(st.integers(0, 10**6)), draw(st.sampled_from(["upper", "pad", "suffix", "bracket",
                                                                          "newline", "cut"])))
    if kind == "huge":
        return kind, draw(st.sampled_from(["[", "]", "a", "click[", "[]", " ", "\n"])) * draw(
            st.sampled_from([1_000, 1_024, 1_025, 5_000, 16_000, 100_000]))
    if kind == "search":
        return kind, "search[" + " ".join(draw(st.lists(st.sampled_from(
            ["shirt", "black", "sofa", "under", "dollars", "organic", "tea", "[", "]", ""]), max_size=8))) + "]"
    if kind == "brackets":
        return kind, draw(st.text(alphabet="[]ab \n", max_size=400))
    return kind, draw(st.sampled_from([None, 0, 3.5, b"click[buy now]", ["search[x]"], {"a": 1}]))


def realise(act, admissible: list[str]):
    kind, payload = act
    if kind not in ("admissible", "mutated"):
        return payload
    if not admissible:
        return "look"
    index, how = payload
    text = admissible[index % len(admissible)]
    if kind == "admissible":
        return text
    return {"upper": text.upper(), "pad": f"  {text}  ", "suffix": text + " now", "bracket": text + "]",
            "newline": text + "\nlook", "cut": text[: max(1, len(text) // 2)]}[how]


def check_step(env, act, admissible: list[str], max_obs: int) -> tuple[bool, list[str], float, bool]:
    start = time.process_time()
    obs, reward, terminated, truncated, info = env.step(act)
    elapsed = time.process_time() - start
    assert isinstance(obs, str) and len(obs) <= max_obs
    assert isinstance(reward, float) and 0.0 <= reward <= 1.0
    assert isinstance(terminated, bool) and isinstance(truncated, bool)
    assert isinstance(info["valid_action"], bool)
    assert isinstance(info["admissible_actions"], list)
    if not isinstance(act, str) or len(act) > env.action_space.max_length:
        assert info["valid_action"] is False and reward == 0.0
    return terminated or truncated, info["admissible_actions"], elapsed, info["valid_action"]


class Fuzzer:
    """Steps one env through the actions of many hypothesis examples, starting a new episode at the end of each
    and every ``RESET_EVERY`` steps; counts the actions and keeps the slowest step's time."""

    def __init__(self, env, max_obs: int) -> None:
        self.env, self.max_obs = env, max_obs
        self.actions, self.valid, self.worst, self.episodes = 0, 0, 0.0, 0
        self.admissible: list[str] = []
        self.steps_left = 0

    def reset(self) -> None:
        _, info = self.env.reset(seed=self.episodes)
        assert info["valid_action"] is True
        self.episodes += 1
        self.admissible, self.steps_left = info["admissible_actions"], RESET_EVERY

    def run(self, actions: list) -> None:
        for act in actions:
            if self.steps_left <= 0:
                self.reset()
            before = self.admissible
            done, self.admissible, elapsed, valid = check_step(self.env, realise(act, self.admissible),
                                                               self.admissible, self.max_obs)
            self.actions += 1
            self.valid += valid
            self.steps_left -= 1
            self.worst = max(self.worst, elapsed)
            assert elapsed < MAX_STEP_SECONDS, (f"a step of {act!r:.200} took {elapsed:.3f} s on page "
                                                f"{getattr(self.env, '_page', None) and self.env._page.name}: "
                                                f"{realise(act, before)!r:.300}")
            if done:
                self.steps_left = 0


BATCH = st.lists(action(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE)


def fuzz_10000(env, max_obs: int) -> Fuzzer:
    fuzzer = Fuzzer(env, max_obs)

    @seed(21)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(BATCH)
    def run(actions):
        fuzzer.run(actions)

    run()
    assert fuzzer.actions >= 10_000 and fuzzer.episodes >= 10_000 // RESET_EVERY
    assert fuzzer.valid >= 1000  # the admissible picks walk the env into its deeper states, not only garbage
    return fuzzer


@pytest.mark.slow
def test_webshop_takes_10000_fuzzed_actions():
    env = gym.make("prism_lit/WebShop-v0", num_products=60, results_per_page=3, disable_env_checker=True).unwrapped
    env.reset(seed=0)  # the first purchase loads the reward's spaCy pipeline (about a second, once per process)
    product = env.step("search[tea]")[4]["admissible_actions"][-1]
    assert env.step(product)[4]["valid_action"] and env.step("click[buy now]")[2]
    fuzz_10000(env, env.observation_space.max_length)


@pytest.fixture(scope="module")
def alfworld_games(tmp_path_factory):
    pytest.importorskip("alfworld")
    from prism_lit.envs.alfworld import generate_games

    root = tmp_path_factory.mktemp("alfworld_fuzz")
    generate_games(root, n_per_type=1, split="train", seed=5)
    return root


@pytest.mark.slow
@pytest.mark.alfworld
def test_alfworld_takes_10000_fuzzed_actions(alfworld_games):
    from prism_lit.envs.alfworld import ALFWorldEnv

    env = ALFWorldEnv("train", data_dir=alfworld_games)
    try:
        fuzz_10000(env, env.observation_space.max_length)
    finally:
        env.close()


def test_guess_word_takes_fuzzed_actions():
    env = gym.make("prism_lit/GuessWord-v0", disable_env_checker=True).unwrapped

    fuzzer = Fuzzer(env, 10_000)

    @seed(21)
    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(BATCH)
    def run(actions):
        fuzzer.run(actions)

    run()
    assert fuzzer.actions >= 1000


# ---------------------------------------------------------------------------------------------- parser and limits
@seed(7)
@settings(max_examples=3000, deadline=None, database=None)
@given(st.text(alphabet="ab[]\n x", max_size=40) | st.text(max_size=40))
def test_webshop_parser_matches_upstreams_regex(text):
    match = _ACTION_RE.match(text)
    expected = (text, None) if match is None else (match.group(1), match.group(2))
    assert parse_action(text) == expected


@pytest.mark.parametrize("text", ["search[a]", "click[b]]", "x[[y]", "[a]", "a[]", "a[b", "click[ 1 ]\nnext[c]",
                                  "a[b]c[d]e", "a[b]c]", "ab[c[d]", "]a[b]", "a\n[b]", "\n", ""])
def test_webshop_parser_cases(text):
    match = _ACTION_RE.match(text)
    assert parse_action(text) == ((text, None) if match is None else (match.group(1), match.group(2)))


@pytest.mark.parametrize("text", ["[" * 16_000, "a[" * 8_000 + "]", "[" * 16_000 + "]", "]" * 16_000 + "[",
                                  "click[" + "]" * 16_000])
def test_webshop_parser_is_linear(text):
    start = time.perf_counter()
    for _ in range(10):
        parse_action(text)
    assert (time.perf_counter() - start) / 10 < 0.01  # the regex took 0.74 s on 16,000 '['


@pytest.mark.parametrize("length", [1_025, 100_000, 10_000_000])
def test_webshop_rejects_oversized_actions_at_once(length):
    env = gym.make("prism_lit/WebShop-v0", num_products=60, results_per_page=3, disable_env_checker=True).unwrapped
    obs, info = env.reset(seed=0)
    action = "search[" + "a" * (length - 8) + "]"
    start = time.perf_counter()
    obs2, reward, terminated, _, info2 = env.step(action)
    assert time.perf_counter() - start < 0.05
    assert info2["valid_action"] is False and reward == 0.0 and not terminated and obs2 == obs
    just_fits = "search[" + "a" * (env.action_space.max_length - 8) + "]"
    assert env.step(just_fits)[4]["valid_action"] is True


@pytest.mark.alfworld
def test_alfworld_flags_invalid_actions_and_rejects_oversized_ones_at_once(alfworld_games):
    from prism_lit.envs.alfworld import ALFWorldEnv

    env = ALFWorldEnv("train", data_dir=alfworld_games)
    obs, info = env.reset(seed=0)
    admissible = info["admissible_actions"]
    obs, _, _, _, info = env.step("dance wildly")
    assert obs == "Nothing happens." and info["valid_action"] is False and info["admissible_actions"] == admissible
    obs, _, _, _, info = env.step(f"  {admissible[0]} ")  # the engine strips commands
    assert info["valid_action"] is True
    admissible = info["admissible_actions"]
    start = time.perf_counter()
    obs, reward, terminated, _, info = env.step(admissible[0] + " " * 10_000_000)
    assert time.perf_counter() - start < 0.05
    assert obs == "Nothing happens." and info["valid_action"] is False and reward == 0.0 and not terminated
    assert info["admissible_actions"] == admissible
    env.close()


def test_every_env_reports_valid_action_on_reset_and_step():
    for env_id, kwargs in (("prism_lit/WebShop-v0", {"num_products": 60}), ("prism_lit/GuessWord-v0", {})):
        env = gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped
        _, info = env.reset(seed=0)
        assert info["valid_action"] is True
        assert env.step("certainly not an action")[4]["valid_action"] is False


def test_instruction_following_takes_pathological_responses():
    from prism_lit.envs import INSTRUCTION_FOLLOWING_ID

    env = gym.make(INSTRUCTION_FOLLOWING_ID, disable_env_checker=True).unwrapped
    env.reset(seed=5)  # a task with a detectable_format:json_format constraint
    info = env.step("[" * 20_000)[4]
    assert isinstance(info["valid_action"], bool)
    env.reset(seed=5)
    start = time.process_time()
    info = env.step("x" * (env.action_space.max_length + 1))[4]
    assert info["valid_action"] is False and time.process_time() - start < 0.05
