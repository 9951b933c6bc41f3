"""The guess-word test env follows the project's env conventions."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from prism_lit.envs.guess_word import GUESS_WORD_ID, GuessWordEnv, register_guess_word


def test_passes_gymnasium_check_env():
    check_env(gym.make(GUESS_WORD_ID).unwrapped, skip_render_check=True)


def test_rules_reward_and_info():
    env = GuessWordEnv(max_attempts=2)
    obs, info = env.reset(seed=0, options={"task_id": "guess_word/train/4"})
    assert "purrs" in obs and info["task_type"] == "animal" and info["task_id"] == "guess_word/train/4"
    assert "cat" in info["admissible_actions"] and len(info["admissible_actions"]) == 4
    wrong = next(a for a in info["admissible_actions"] if a != "cat")
    obs, r, term, _, info = env.step(wrong)
    assert (r, term, info["won"], info["valid_action"]) == (0.0, False, False, True) and f"not {wrong}" in obs
    obs, r, term, _trunc, info = env.step("  Cat! and more words")
    assert (r, term, info["won"], info["score"]) == (1.0, True, True, 1.0)


def test_invalid_guesses_use_up_attempts_and_garbage_never_raises():
    env = GuessWordEnv(max_attempts=2)
    env.reset(seed=1, options={"task_id": "guess_word/train/0"})
    obs, _r, term, _, info = env.step("\x00 ][")
    assert not term and "Invalid guess" in obs and info["valid_action"] is False
    obs, _r, term, _, info = env.step("")
    assert term and "The word was banana" in obs and not info["won"]


def test_same_seed_same_candidates_and_bad_task_ids_are_named():
    a, b = GuessWordEnv(), GuessWordEnv()
    assert a.reset(seed=3, options={"task_id": "guess_word/train/2"}) == b.reset(
        seed=3, options={"task_id": "guess_word/train/2"})
    with pytest.raises(ValueError, match="guess_word/train/99"):
        a.reset(options={"task_id": "guess_word/train/99"})
    with pytest.raises(ValueError, match="words\\[0\\]"):
        GuessWordEnv(words=[("two words", "clue", "x")])


def test_register_is_idempotent():
    register_guess_word()
    register_guess_word()
    assert GUESS_WORD_ID in gym.registry
