"""Guess-word: a tiny text environment for RL tests and smoke runs.

Each task is a word with a clue ("a yellow fruit" -> ``banana``). The agent sees the clue and a few candidate
words (the admissible actions) and answers with a word; a right guess wins (reward 1, episode ends), a wrong
candidate costs one of ``max_attempts`` attempts, anything else is an invalid action (the observation says so,
reward 0, it also costs an attempt so every episode is bounded). A guess is judged by its first word,
case-insensitively, with surrounding punctuation ignored.

It follows the project's env conventions: ``reset(seed=s, options={"task_id": "guess_word/<split>/<index>"})``;
``info`` carries ``admissible_actions``, ``won``, ``task_id``, ``task_type`` (the word's category) and ``score``;
``task_ids`` lists the split's tasks. The text is short and uses a small closed vocabulary, so a word-level
tokenizer covers it and a randomly initialised policy starts near chance (about 1 / vocabulary size per attempt).

Importing this module registers ``prism_lit/GuessWord-v0`` (idempotent; also ``register_guess_word()``).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from gymnasium.envs.registration import register, registry

GUESS_WORD_ID = "prism_lit/GuessWord-v0"

# (word, clue, category): clues never contain their answer and each ends in its own word
DEFAULT_WORDS: tuple[tuple[str, str, str], ...] = (
    ("banana", "fruit that monkeys peel", "fruit"),
    ("apple", "fruit that keeps doctors away", "fruit"),
    ("grape", "fruit that becomes wine", "fruit"),
    ("lemon", "fruit that tastes sour", "fruit"),
    ("cat", "pet that purrs", "animal"),
    ("dog", "pet that barks", "animal"),
    ("horse", "animal that people ride", "animal"),
    ("mouse", "animal that cats chase", "animal"),
)

_PRINTABLE = string.printable


def _first_word(action: str) -> str:
    words = str(action).strip().split()
    return words[0].strip(string.punctuation).lower() if words else ""


class GuessWordEnv(gym.Env):
    """Guess a word from its clue.

    Args:
        words: ``(word, clue, category)`` triples; defaults to :data:`DEFAULT_WORDS`.
        split: label used in task ids (``guess_word/<split>/<index>``); every split holds all words.
        num_candidates: how many candidate words are shown (the answer among them, order set by the seed).
        max_attempts: guesses before the episode ends unsolved.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        words: Sequence[Sequence[str]] | None = None,
        split: str = "train",
        num_candidates: int = 4,
        max_attempts: int = 3,
    ) -> None:
        entries = [tuple(w) for w in (words if words is not None else DEFAULT_WORDS)]
        for i, entry in enumerate(entries):
            if len(entry) != 3 or not all(isinstance(x, str) and x.strip() for x in entry):
                raise ValueError(f"GuessWordEnv.words[{i}]: expected (word, clue, category) strings, got {entry!r}")
            if len(entry[0].split()) != 1:
                raise ValueError(f"GuessWordEnv.words[{i}]: the word must be one word, got {entry[0]!r}")
        if not 1 <= num_candidates <= len(entries):
            raise ValueError(f"GuessWordEnv.num_candidates must be in [1, {len(entries)}], got {num_candidates}")
        if max_attempts < 1:
            raise ValueError(f"GuessWordEnv.max_attempts must be >= 1, got {max_attempts}")
        self.words = [(w.lower(), c, t) for w, c, t in entries]
        self.split = split
        self.num_candidates = num_candidates
        self.max_attempts = max_attempts
        self.observation_space = spaces.Text(max_length=4000, charset=_PRINTABLE)
        self.action_space = spaces.Text(max_length=200, charset=_PRINTABLE)
        self._index = 0
        self._candidates: list[str] = []
        self._attempts = 0
        self._done = True
        self._won = False

    @property
    def task_ids(self) -> list[str]:
        """Every task of this split, in index order."""
        return [f"guess_word/{self.split}/{i}" for i in range(len(self.words))]

    def _parse_task_id(self, task_id: str) -> int:
        parts = str(task_id).split("/")
        if len(parts) != 3 or parts[0] != "guess_word" or not parts[2].isdigit():
            raise ValueError(f"GuessWordEnv: task_id {task_id!r} is not of the form 'guess_word/<split>/<index>'")
        index = int(parts[2])
        if index >= len(self.words):
            raise ValueError(f"GuessWordEnv: task_id {task_id!r} is out of range (split has {len(self.words)} tasks)")
        return index

    def _info(self, valid: bool = True) -> dict[str, Any]:
        category = self.words[self._index][2]
        return {
            "valid_action": valid,
            "admissible_actions": list(self._candidates),
            "won": self._won,
            "task_id": f"guess_word/{self.split}/{self._index}",
            "task_type": category,
            "score": 1.0 if self._won else 0.0,
            "attempts": self._attempts,
        }

    def _clue_text(self) -> str:
        return f"Guess the word . Clue: {self.words[self._index][1]}"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if options.get("task_id") is not None:
            self._index = self._parse_task_id(options["task_id"])
        else:
            self._index = int(self.np_random.integers(len(self.words)))
        others = [w for i, (w, _, _) in enumerate(self.words) if i != self._index]
        picked = [others[int(i)] for i in self.np_random.permutation(len(others))[: self.num_candidates - 1]]
        candidates = picked + [self.words[self._index][0]]
        self._candidates = [candidates[int(i)] for i in self.np_random.permutation(len(candidates))]
        self._attempts = 0
        self._done = False
        self._won = False
        return self._clue_text(), self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            return "The game is over .", 0.0, True, False, self._info(valid=False)
        guess = _first_word(action) if len(str(action)) <= self.action_space.max_length else ""
        target = self.words[self._index][0]
        self._attempts += 1
        reward = 0.0
        if guess == target:
            self._won = True
            self._done = True
            reward = 1.0
            observation = "Correct !"
        elif guess in self._candidates:
            observation = f"No , not {guess} . {self._clue_text()}"
        else:
            observation = f"Invalid guess . Answer with a candidate word . {self._clue_text()}"
        if not self._done and self._attempts >= self.max_attempts:
            self._done = True
            observation = f"Out of guesses . The word was {target} ."
        info = self._info(valid=guess in self._candidates)
        return observation, reward, self._done, False, info


def register_guess_word() -> None:
    """Register ``prism_lit/GuessWord-v0`` with Gymnasium (no-op when it already is)."""
    if GUESS_WORD_ID not in registry:
        register(id=GUESS_WORD_ID, entry_point="prism_lit.envs.guess_word:GuessWordEnv", max_episode_steps=20)


register_guess_word()

__all__ = ["DEFAULT_WORDS", "GUESS_WORD_ID", "GuessWordEnv", "register_guess_word"]
