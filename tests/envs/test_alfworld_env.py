"""prism_lit/ALFWorld-v0 on the real alfworld engine: Gymnasium contract, robustness, determinism, oracle."""

from __future__ import annotations

import json
import os
import random
import string
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

import prism_lit.envs  # noqa: F401  (registers the ids)
from prism_lit.envs.alfworld import TASK_TYPES, ALFWorldEnv, ALFWorldExpert, generate_games
from prism_lit.envs.alfworld.expert import ALFWorldExpertError

pytestmark = pytest.mark.alfworld

REFERENCE = Path(os.environ.get("PRISM_LIT_ALFWORLD_REFERENCE",
                                Path(__file__).resolve().parents[3] / "shared" / "reference" / "alfworld"))


@pytest.fixture(scope="module")
def games_root(tmp_path_factory) -> Path:
    """A few generated games per split, built once for this module."""
    root = tmp_path_factory.mktemp("alfworld_games")
    generate_games(root, n_per_type=2, split="train", seed=11)
    generate_games(root, n_per_type=1, split="valid_unseen", seed=11)
    return root


@pytest.fixture()
def env(games_root):
    e = gym.make("prism_lit/ALFWorld-v0", split="train", data_dir=games_root)
    yield e
    e.close()


def play_expert(env, expert, task_id, seed=0):
    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    expert.reset(obs, info)
    total, steps, done = 0.0, 0, False
    while not done:
        action, _thought = expert.act(obs, info)
        assert action in info["admissible_actions"]
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        steps += 1
        done = terminated or truncated
    return info, total, steps


def test_make_sets_time_limit_and_text_spaces(env):
    assert env.spec.max_episode_steps == 50
    assert isinstance(env.observation_space, gym.spaces.Text)
    assert " " in env.action_space.character_set and "\n" in env.observation_space.character_set


def test_check_env_passes(games_root):
    e = ALFWorldEnv("train", data_dir=games_root, render_mode="ansi")
    check_env(e)
    obs, _ = e.reset(seed=0)
    assert e.render() == obs
    e.close()


def test_reset_info_contract(env, games_root):
    obs, info = env.reset(seed=3)
    assert obs.startswith("You are in the middle of a room.") and "Your task is to: " in obs
    assert "Welcome to TextWorld" not in obs
    assert info["task_type"] in TASK_TYPES
    assert info["task_id"] in env.unwrapped.task_ids and info["task_id"].startswith("alfworld/train/")
    assert info["won"] is False
    assert info["admissible_actions"] == sorted(info["admissible_actions"]) and "look" in info["admissible_actions"]
    assert all(isinstance(a, str) for a in info["admissible_actions"])
    assert info["goal"] and obs.endswith(info["goal"])
    assert Path(info["game_file"]).is_file() and info["walkthrough"]
    # objects are demangled like ALFWorld's: "countertop 1", never the PDDL ids
    assert "_bar_" not in obs and all("_bar_" not in a for a in info["admissible_actions"])


def test_expert_wins_every_generated_game_of_every_type(games_root):
    seen_types = set()
    for split in ("train", "valid_unseen"):
        e = gym.make("prism_lit/ALFWorld-v0", split=split, data_dir=games_root)
        expert = ALFWorldExpert(e)
        for task_id in e.unwrapped.task_ids:
            info, total, steps = play_expert(e, expert, task_id)
            assert info["won"] is True and total == 1.0, task_id
            assert steps == len(json.loads(Path(info["game_file"]).read_text())["walkthrough"])
            seen_types.add(info["task_type"])
        e.close()
    assert seen_types == set(TASK_TYPES)


def test_walkthrough_expert_without_env_wins(env):
    expert = ALFWorldExpert(None, thoughts=False)
    for task_id in env.unwrapped.task_ids[:6]:
        info, total, _ = play_expert(env, expert, task_id)
        assert info["won"] and total == 1.0


def test_planner_expert_recovers_after_off_plan_actions(env):
    rng = random.Random(0)
    expert = ALFWorldExpert(env)
    for task_id in env.unwrapped.task_ids:
        obs, info = env.reset(options={"task_id": task_id})
        expert.reset(obs, info)
        for _ in range(4):  # wander first: the expert must re-plan from wherever it is
            action = rng.choice([a for a in info["admissible_actions"] if not a.startswith("move ")])
            obs, _, terminated, _, info = env.step(action)
            if terminated:
                break
        while not info["won"]:
            action, _ = expert.act(obs, info)
            obs, _, _, truncated, info = env.step(action)
            assert not truncated
        assert info["won"]


def test_walkthrough_expert_reports_divergence(env):
    task_id = env.unwrapped.task_ids[0]
    obs, info = env.reset(options={"task_id": task_id})
    expert = ALFWorldExpert(None)
    expert.reset(obs, info)
    obs, _, _, _, info = env.step("look")
    info = dict(info, admissible_actions=["look"])
    with pytest.raises(ALFWorldExpertError, match="not admissible"):
        expert.act(obs, info)


def test_thousands_of_random_and_garbage_actions_never_raise(env):
    rng = random.Random(1)
    garbage = ["", " ", "xyzzy", "go to", "go to nowhere 99", "take", "TAKE apple 1", "move  mug 1 to", "\n\t",
               "open fridge 1; rm -rf /", "é ü ☃", "go to countertop 1\nlook", "a" * 500]
    obs, info = env.reset(seed=0)
    for i in range(3000):
        r = rng.random()
        if r < 0.5:
            action = rng.choice(info["admissible_actions"])
        elif r < 0.75:
            action = rng.choice(garbage)
        else:
            action = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
        before = info["admissible_actions"]
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(obs, str) and reward in (0.0, 1.0)
        if action not in before:
            assert obs == "Nothing happens." and reward == 0.0 and info["admissible_actions"] == before
        if terminated or truncated:
            obs, info = env.reset(seed=i)


def test_reward_only_on_the_winning_step(env):
    task_id = env.unwrapped.task_ids[0]
    obs, info = env.reset(options={"task_id": task_id})
    rewards = []
    for action in info["walkthrough"]:
        _obs, reward, terminated, _truncated, info = env.step(action)
        rewards.append(reward)
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0 and terminated and info["won"]


def test_reset_is_deterministic_by_seed(games_root):
    def rollout(seed):
        e = ALFWorldEnv("train", data_dir=games_root)
        obs, info = e.reset(seed=seed)
        rng = random.Random(seed)
        trace = [(obs, info["task_id"], tuple(info["admissible_actions"]))]
        for _ in range(15):
            obs, reward, terminated, _, info = e.step(rng.choice(info["admissible_actions"]))
            trace.append((obs, reward, tuple(info["admissible_actions"])))
            if terminated:
                break
        e.close()
        return trace

    assert rollout(5) == rollout(5)
    e = ALFWorldEnv("train", data_dir=games_root)
    picked = {e.reset(seed=s)[1]["task_id"] for s in range(40)}
    assert len(picked) > 1  # seeds spread over the split
    assert all(e.reset(seed=s)[1]["task_id"] == e.reset(seed=s)[1]["task_id"] for s in range(5))
    e.close()


def test_task_id_option_picks_the_game_and_unknown_ids_are_named(env):
    for task_id in env.unwrapped.task_ids[:3]:
        assert env.reset(seed=123, options={"task_id": task_id})[1]["task_id"] == task_id
    with pytest.raises(ValueError, match="unknown task_id 'alfworld/train/nope'"):
        env.reset(options={"task_id": "alfworld/train/nope"})
    with pytest.raises(ValueError, match="unknown options"):
        env.reset(options={"game": 1})


def test_game_files_and_task_type_filter(games_root):
    files = sorted(games_root.glob("train/*/*/game.tw-pddl"))
    e = ALFWorldEnv(game_files=files[:3])
    assert len(e.task_ids) == 3
    e.close()
    e = ALFWorldEnv("train", data_dir=games_root, task_types=["pick_heat_then_place_in_recep"])
    assert {e.reset(seed=s)[1]["task_type"] for s in range(5)} == {"pick_heat_then_place_in_recep"}
    e.close()
    with pytest.raises(FileNotFoundError, match="no 'valid_seen' split"):
        ALFWorldEnv("valid_seen", data_dir=games_root)


def test_generated_by_default_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_LIT_CACHE", str(tmp_path))
    e = gym.make("prism_lit/ALFWorld-v0", split="valid_seen", n_per_type=1, generator_seed=3,
                 task_types=["pick_and_place_simple", "look_at_obj_in_light"])
    assert len(e.unwrapped.task_ids) == 2
    files = list(tmp_path.glob("alfworld/*/seed3/*/valid_seen/*/*/game.tw-pddl"))
    assert len(files) == 2
    e.close()


def test_fast_engine_matches_plain_textworld(games_root):
    """Our memoised engine gives exactly the text, commands and wins of unpatched TextWorld + alfworld."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs import PddlEnv

    from prism_lit.envs.alfworld.engine import TextWorldGame

    fast = TextWorldGame()
    plain = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)), shuffle=False)
    rng = random.Random(2)
    files = sorted(games_root.glob("*/*/*/game.tw-pddl"))
    for path in files[::3]:
        fast.load(path)
        plain.load(str(path))
        a, b = fast.reset(), plain.reset()
        for _ in range(12):
            assert (a["feedback"], a["admissible_commands"], a["won"]) == \
                   (b["feedback"], b["admissible_commands"], b["won"])
            cmd = rng.choice(b["admissible_commands"] + ["nonsense"])
            a, b = fast.step(cmd), plain.step(cmd)[0]
    fast.close()


def _reference_cases():
    if not REFERENCE.is_dir():
        return []
    cases = []
    for grammar in ("v0.4.2", "v0.3.3"):
        path = REFERENCE / f"tiny_trajs_grammar_{grammar}.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                cases.append(pytest.param(grammar, json.loads(line), id=f"{grammar}-{json.loads(line)['task_type']}"))
    return cases


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference games not present at {REFERENCE}")
@pytest.mark.parametrize("grammar,traj", _reference_cases())
def test_reference_games_replay_to_a_win(grammar, traj):
    """Real-format reference games (both grammars) replay step by step exactly as recorded upstream."""
    game = REFERENCE / "tiny_games" / f"grammar_{grammar}" / traj["game"] / "game.tw-pddl"
    e = gym.make("prism_lit/ALFWorld-v0", game_files=[game], keep_banner=True)
    obs, info = e.reset(seed=0)
    assert obs == traj["initial_observation"]
    assert info["task_type"] == traj["task_type"]
    for step in traj["steps"]:
        assert info["admissible_actions"] == step["admissible_commands"]
        obs, reward, terminated, _truncated, info = e.step(step["action"])
        assert (obs, reward, terminated) == (step["observation"], step["reward"], step["done"])
    assert info["won"] is True and traj["won"] is True
    # and our planner expert wins it too
    expert = ALFWorldExpert(e)
    info, total, _ = play_expert(e, expert, info["task_id"])
    assert info["won"] and total == 1.0
    e.close()


def test_expert_dataset_through_the_shared_protocol(games_root, tmp_path):
    """The project's expert recorder writes winning ALFWorld SFT trajectories with our expert (built as cls(env))."""
    from prism_lit.data.schema import read_trajectories
    from prism_lit.envs.experts import write_expert_dataset
    from prism_lit.envs.protocol import AgentProtocol

    protocol = AgentProtocol(env="alfworld", reply_format="thought_action")
    out = tmp_path / "alfworld_expert.jsonl"
    stats = write_expert_dataset("alfworld", 12, out, protocol, split="train", seed=0,
                                 env_kwargs={"data_dir": str(games_root)})
    assert stats["count"] == 12 and stats["win_rate"] == 1.0
    trajectories = read_trajectories(out)
    assert {t.task_type for t in trajectories} == set(TASK_TYPES)
    first = trajectories[0]
    assert first.messages[1].role == "user" and "Your task is to:" in first.messages[1].content
    assert first.messages[2].role == "assistant" and "Thought:" in first.messages[2].content


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "medium"])
def test_expert_wins_all_games_of_all_splits_at_scale(tmp_path, size):
    """~90 games per size across the three splits: every walkthrough and every planner episode wins."""
    for split in ("train", "valid_seen", "valid_unseen"):
        generate_games(tmp_path, n_per_type=5, split=split, seed=21, size=size)
        e = gym.make("prism_lit/ALFWorld-v0", split=split, data_dir=tmp_path)
        expert = ALFWorldExpert(e)
        types = set()
        for task_id in e.unwrapped.task_ids:
            info, total, steps = play_expert(e, expert, task_id)
            assert info["won"] and total == 1.0 and steps <= 12, task_id
            types.add(info["task_type"])
        assert types == set(TASK_TYPES) and len(e.unwrapped.task_ids) == 30
        e.close()


def test_restate_task_ends_every_later_observation_with_the_task_and_the_expert_still_wins(games_root):
    plain = gym.make("prism_lit/ALFWorld-v0", split="train", data_dir=games_root)
    restated = gym.make("prism_lit/ALFWorld-v0", split="train", data_dir=games_root, restate_task=True)
    try:
        for task_id in restated.unwrapped.task_ids[:4]:
            first, info = restated.reset(seed=0, options={"task_id": task_id})
            assert first == plain.reset(seed=0, options={"task_id": task_id})[0]  # the first states it already
            assert first.count("Your task is to:") == 1 and info["goal"]
            expert = ALFWorldExpert(restated, search="explore")
            expert.reset(first, info)
            obs, done = first, False
            while not done:
                action, _ = expert.act(obs, info)
                obs, _, done, _, info = restated.step(action)
                assert obs.endswith(f"\n\nYour task is to: {info['goal']}") and obs.count("Your task is to:") == 1
            assert info["won"]
            obs = restated.step("jump around")[0]  # an invalid command answers the same way, with the task
            assert obs == f"Nothing happens.\n\nYour task is to: {info['goal']}"
    finally:
        plain.close()
        restated.close()
