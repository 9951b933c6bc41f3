"""Renaming a trajectory's target object (pre-training episodes whose object must be read from the task)."""

import pytest

from prism_lit.data.augment import rename_objects, rename_word
from prism_lit.data.schema import Message, Trajectory
from prism_lit.envs import env_spec
from prism_lit.envs.alfworld.games import object_words


def _episode(i: int, kind: str = "cup") -> Trajectory:
    return Trajectory(id=f"t{i}", env="alfworld", task_id=f"alfworld/train/pick_and_place_simple-{kind.title()}-None-"
                      f"Shelf-{i}/trial_T0", task_type="pick_and_place_simple", messages=[
                          Message("user", f"On the counter you see a {kind} 1 and a cupboard 1.\n\n"
                                          f"Your task is to: put a {kind} in shelf."),
                          Message("assistant", f"Action: take {kind} 1 from counter 1"),
                          Message("user", f"You pick up the {kind.upper()} 1 from the counter 1.")])


def test_rename_word_replaces_whole_words_in_every_message_and_records_it():
    renamed = rename_word(_episode(0), "cup", "zorb")
    assert [m.content for m in renamed.messages] == [
        "On the counter you see a zorb 1 and a cupboard 1.\n\nYour task is to: put a zorb in shelf.",
        "Action: take zorb 1 from counter 1", "You pick up the zorb 1 from the counter 1."]
    assert renamed.meta["renamed"] == {"cup": "zorb"} and [m.role for m in renamed.messages] == ["user", "assistant",
                                                                                                 "user"]


def test_rename_objects_renames_its_fraction_reproducibly_with_fresh_words():
    episodes = [_episode(i, kind) for i, kind in enumerate(["cup", "mug", "apple", "pen"] * 5)]
    out = rename_objects(episodes, object_words, 0.5, seed=3)
    assert [t.id for t in out] == [t.id for t in episodes]
    renamed = [t for t in out if "renamed" in t.meta]
    assert len(renamed) == 10 and out == rename_objects(episodes, object_words, 0.5, seed=3)
    for t in renamed:
        (old, new), = t.meta["renamed"].items()
        text = " ".join(m.content for m in t.messages)
        assert old == t.task_id.split("-")[1].lower() and new.isalpha() and 3 <= len(new) <= 8
        assert f" {old} " not in text and f"a {new} 1" in text and "cupboard" in text
    assert rename_objects(episodes, object_words, 0.0, seed=3) == episodes
    with pytest.raises(ValueError, match=r"rename fraction must be in \[0, 1\]"):
        rename_objects(episodes, object_words, 1.5, seed=3)


def test_alfworld_names_its_tasks_target_object():
    assert env_spec("alfworld").object_words_function() is object_words
    assert object_words("alfworld/valid_unseen/pick_clean_then_place_in_recep-SoapBar-None-Toilet-30/trial_T1") == \
        ["soapbar"]
    with pytest.raises(ValueError, match="not an ALFWorld task id"):
        object_words("webshop/train/17")
    with pytest.raises(ValueError, match="does not name its tasks' target objects"):
        env_spec("webshop").object_words_function()
