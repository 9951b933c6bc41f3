"""The procedural ALFWorld generator: files in json_2.1.1 layout, determinism, cache, splits, size knobs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("alfworld")

from prism_lit.envs.alfworld import GENERATOR_VERSION, TASK_TYPES, generate_games
from prism_lit.envs.alfworld.generator import layout_pool
from prism_lit.envs.alfworld.layouts import UNSEEN_KINDS

pytestmark = pytest.mark.alfworld

TASK_DIR = re.compile(r"^(?P<type>[a-z_]+)-(?P<obj>[A-Za-z]+)-None-(?P<parent>[A-Za-z]+)-(?P<layout>\d+)$")


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    paths = {split: generate_games(root, n_per_type=1, split=split, seed=5)
             for split in ("train", "valid_seen", "valid_unseen", "valid_unseen_rooms")}
    return root, paths


def kinds_in_problem(problem: str) -> set[str]:
    return set(re.findall(r"^\s+([A-Za-z]+)_bar_\S+ - object$", problem, flags=re.MULTILINE))


def test_writes_alfworld_json_2_1_1_layout(small_tree):
    root, paths = small_tree
    for split, files in paths.items():
        assert len(files) == len(TASK_TYPES)
        types = set()
        for game_file in files:
            trial = game_file.parent
            assert trial.parent.parent == root / split and trial.name.startswith("trial_T")
            m = TASK_DIR.match(trial.parent.name)
            assert m, trial.parent.name
            traj = json.loads((trial / "traj_data.json").read_text())
            assert traj["task_type"] == m["type"] and traj["pddl_params"]["object_target"] == m["obj"]
            types.add(traj["task_type"])
            game = json.loads(game_file.read_text())
            assert game["solvable"] is True and 3 <= len(game["walkthrough"]) <= 12
            assert game["pddl_problem"] == (trial / "initial_state.pddl").read_text()
            assert "UNKNOWN GOAL" not in game["grammar"]  # the task description went into the grammar
            assert not list(trial.glob(".*"))  # no draft or temp files left behind
        assert types == set(TASK_TYPES)


def test_same_seed_same_files_other_seed_other_games(small_tree, tmp_path):
    root, paths = small_tree
    again = generate_games(tmp_path / "a", n_per_type=1, split="train", seed=5)
    for ours, theirs in zip(paths["train"], again):
        assert ours.relative_to(root) == theirs.relative_to(tmp_path / "a")
        for name in ("initial_state.pddl", "traj_data.json", "game.tw-pddl"):
            assert (ours.parent / name).read_bytes() == (theirs.parent / name).read_bytes()
    other = generate_games(tmp_path / "b", n_per_type=1, split="train", seed=6)
    assert [p.read_text() for p in other] != [p.read_text() for p in again]


def test_built_once_and_extended_incrementally(tmp_path):
    first = generate_games(tmp_path, n_per_type=1, split="train", seed=1, task_types=["pick_and_place_simple"])
    stamp = first[0].stat().st_mtime_ns
    more = generate_games(tmp_path, n_per_type=3, split="train", seed=1, task_types=["pick_and_place_simple"])
    assert more[0] == first[0] and first[0].stat().st_mtime_ns == stamp  # not rebuilt
    assert len(set(more)) == 3


def test_splits_hold_out_layouts_and_object_kinds(small_tree):
    """valid_unseen: held-out rooms and object kinds; valid_unseen_rooms: the same rooms, only known kinds."""
    _root, paths = small_tree
    layout_of = {s: {int(TASK_DIR.match(p.parent.parent.name)["layout"]) for p in files} for s, files in paths.items()}
    train_pool = layout_pool(5, "train", (4, 6), 24, 8)
    unseen_pool = layout_pool(5, "valid_unseen", (4, 6), 24, 8)
    train_numbers = {lay.number for lay in train_pool}
    assert layout_of["train"] <= train_numbers and layout_of["valid_seen"] <= train_numbers
    assert not ((layout_of["valid_unseen"] | layout_of["valid_unseen_rooms"]) & train_numbers)
    unseen_numbers = {lay.number for lay in unseen_pool}
    assert layout_of["valid_unseen"] <= unseen_numbers and layout_of["valid_unseen_rooms"] <= unseen_numbers
    assert layout_pool(5, "valid_unseen_rooms", (4, 6), 24, 8) == unseen_pool
    assert not ({lay.signature() for lay in unseen_pool} & {lay.signature() for lay in train_pool})
    for split, files in paths.items():
        for game_file in files:
            problem = (game_file.parent / "initial_state.pddl").read_text()
            target = json.loads((game_file.parent / "traj_data.json").read_text())["pddl_params"]["object_target"]
            if split == "valid_unseen":
                assert target in UNSEEN_KINDS
            else:
                assert not (kinds_in_problem(problem) & UNSEEN_KINDS), game_file
    # valid_seen plays new games, not copies of train's
    seen_problems = {(p.parent / "initial_state.pddl").read_text() for p in paths["valid_seen"]}
    assert not seen_problems & {(p.parent / "initial_state.pddl").read_text() for p in paths["train"]}
    # the two unseen splits are different games in the same rooms
    assert not {p.parent.parent.name for p in paths["valid_unseen"]} & {p.parent.parent.name
                                                                         for p in paths["valid_unseen_rooms"]}


def test_size_knobs_bound_receptacles_and_objects(tmp_path):
    files = generate_games(tmp_path, n_per_type=2, split="train", seed=2, n_receptacles=(8, 9), n_objects=(7, 7),
                           task_types=["pick_heat_then_place_in_recep", "pick_two_obj_and_place"])
    for game_file in files:
        problem = (game_file.parent / "initial_state.pddl").read_text()
        n_recep = len(re.findall(r" - receptacle$", problem, flags=re.MULTILINE))
        objects = [o for o in re.findall(r"^\s+([A-Za-z]+)_bar_\S+ - object$", problem, flags=re.MULTILINE) if o != "DeskLamp"]
        assert 8 <= n_recep <= 9 and len(objects) == 7


def test_default_output_is_the_versioned_user_cache(tmp_path):
    env = dict(os.environ, PRISM_LIT_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    env.pop("ALFWORLD_DATA", None)
    code = ("from prism_lit.envs.alfworld import generate_games;"
            "print(generate_games(None, n_per_type=1, split='train', seed=9, task_types=['look_at_obj_in_light'])[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    rel = path.relative_to(tmp_path / "cache" / "alfworld" / GENERATOR_VERSION / "seed9")
    assert rel.parts[1] == "train" and path.is_file()
    # importing alfworld did not create ~/.cache/alfworld: ALFWORLD_DATA pointed into our cache
    assert not (tmp_path / "home" / ".cache" / "alfworld").exists()
    assert (tmp_path / "cache" / "alfworld" / "alfworld_data").is_dir()


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "test"}, "split must be one of"),
    ({"task_types": ["make_coffee"]}, "unknown task type 'make_coffee'"),
    ({"size": "huge"}, "size must be one of"),
    ({"n_receptacles": (5, 2)}, "n_receptacles must be"),
    ({"home_prob": 2.0}, "home_prob must be in"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_games(tmp_path, **{"n_per_type": 1, **kwargs})
