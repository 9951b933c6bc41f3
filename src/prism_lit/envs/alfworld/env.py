"""``prism_lit/ALFWorld-v0``: ALFWorld's TextWorld games on the real engine, as a Gymnasium text environment.

Observation: the engine's feedback text ("You arrive at fridge 1. The fridge 1 is closed."), objects demangled to
"mug 1" as in ALFWorld. The first observation is the room description and the task ("Your task is to: put a hot
apple in countertop."); the "-= Welcome to TextWorld, ALFRED! =-" banner is dropped as ReAct / ETO / verl-agent
do, unless ``keep_banner``. Action: a command string ("go to fridge 1", "take apple 1 from fridge 1", "move apple 1
to countertop 1", ...); anything that is not an admissible command (garbage included) answers "Nothing happens."
with reward 0 and no state change, exactly like the engine; ``info["valid_action"]`` tells which (an action is valid
when, stripped, it is one of the admissible commands; one over the action space's 256 characters is answered at
once, without the engine). Reward: 1.0 on the step that completes the task, else 0; the episode terminates then.
``info``: ``admissible_actions`` (sorted list of str), ``valid_action``, ``won``, ``task_id``, ``task_type``,
``goal``, ``game_file``; ``reset`` adds the game's planner ``walkthrough``.

Games: generated on first use into the user cache (see :func:`~prism_lit.envs.alfworld.generator.generate_games`),
or a json_2.1.1 tree given by ``data_dir`` (real ALFWorld data), or explicit ``game_files``.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from prism_lit.envs.alfworld.games import GameEntry, entries_for, find_games
from prism_lit.envs.alfworld.generator import SPLITS, generate_games

PRINTABLE = string.printable
MAX_OBSERVATION_CHARS = 20_000
MAX_ACTION_CHARS = 256
_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_NOTHING_HAPPENS = "Nothing happens."


class ALFWorldEnv(gym.Env[str, str]):
    """ALFWorld (Shridhar et al. 2021) text games on alfworld 0.4.2 / TextWorld, Gymnasium API.

    Args:
        split: ``train``, ``valid_seen``, ``valid_unseen`` or ``valid_unseen_rooms`` (docs/envs/alfworld.md).
        data_dir: root of a json_2.1.1-style tree (``<data_dir>/<split>/<task>/<trial>/game.tw-pddl``), e.g.
            alfworld's downloaded ``$ALFWORLD_DATA/json_2.1.1``; its solvable games of ``split`` are played.
        game_files: explicit ``game.tw-pddl`` paths (``split`` is then only a label; ids come from the paths).
        generator_seed: seed of the generated games (used when neither ``data_dir`` nor ``game_files``).
        n_per_type: generated games per task type.
        task_types: keep only these ALFWorld task types (all six by default).
        size: generated room size preset (``small``, ``medium``, ``large``).
        n_receptacles: generated receptacles per room, int or ``(min, max)``; overrides ``size``.
        n_objects: generated objects per room, int or ``(min, max)``; overrides ``size``.
        games_dir: where generated games go (default: the user cache, ``$PRISM_LIT_CACHE`` overrides it).
        keep_banner: keep TextWorld's welcome banner in the first observation.
        restate_task: end every observation after the first with the task (``Your task is to: ...``), as
            verl-agent's ALFWorld prompt restates it each step: the task then sits next to the decision instead of
            in the first message (a small model does not attend that far back). ``False``: stated once (the engine).
        render_mode: ``ansi`` (``render()`` returns the last observation) or ``human`` (prints it).
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}
    env_name = "alfworld"

    def __init__(
        self,
        split: str = "train",
        *,
        data_dir: str | os.PathLike | None = None,
        game_files: Sequence[str | os.PathLike] | None = None,
        generator_seed: int = 0,
        n_per_type: int = 20,
        task_types: Sequence[str] | None = None,
        size: str = "small",
        n_receptacles: int | Sequence[int] | None = None,
        n_objects: int | Sequence[int] | None = None,
        games_dir: str | os.PathLike | None = None,
        keep_banner: bool = False,
        restate_task: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if data_dir is not None and game_files is not None:
            raise ValueError("give either data_dir or game_files, not both")
        if game_files is None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.render_mode = render_mode
        self.keep_banner = keep_banner
        self.restate_task = restate_task
        if game_files is not None:
            entries = entries_for(game_files)
            if task_types is not None:
                entries = [e for e in entries if e.task_type in set(task_types)]
        elif data_dir is not None:
            entries = find_games(data_dir, split, task_types)
        else:
            paths = generate_games(games_dir, n_per_type, split, generator_seed, task_types=task_types, size=size,
                                   n_receptacles=n_receptacles, n_objects=n_objects)
            entries = entries_for(paths)
        if not entries:
            raise ValueError(f"ALFWorldEnv: no games for split={split!r} task_types={task_types!r} "
                             f"(data_dir={data_dir!r}, game_files given: {game_files is not None})")
        self._entries: dict[str, GameEntry] = {e.task_id: e for e in entries}
        self.task_ids: list[str] = [e.task_id for e in entries]

        self.observation_space = spaces.Text(max_length=MAX_OBSERVATION_CHARS, min_length=0, charset=PRINTABLE)
        self.action_space = spaces.Text(max_length=MAX_ACTION_CHARS, min_length=1, charset=PRINTABLE)

        from prism_lit.envs.alfworld.engine import TextWorldGame

        self._game = TextWorldGame()
        self._entry: GameEntry | None = None
        self._won = False
        self._goal = ""
        self._last_obs = ""
        self._walkthrough: list[str] = []
        self._state: Any = None  # the engine's last state

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        """Start a game: ``options={"task_id": id}`` picks it, otherwise the (seeded) RNG picks one of the split."""
        super().reset(seed=seed)
        options = dict(options or {})
        task_id = options.pop("task_id", None)
        if options:
            raise ValueError(f"ALFWorldEnv.reset: unknown options {sorted(options)} (supported: 'task_id')")
        if task_id is not None:
            if task_id not in self._entries:
                examples = ", ".join(repr(t) for t in self.task_ids[:3])
                raise ValueError(f"unknown task_id {task_id!r} for this ALFWorld env ({len(self.task_ids)} games of "
                                 f"split {self.split!r}, e.g. {examples})")
            entry = self._entries[task_id]
        else:
            entry = self._entries[self.task_ids[int(self.np_random.integers(len(self.task_ids)))]]
        self._game.load(entry.path)
        state = self._game.reset()
        self._entry = entry
        self._won = bool(state["won"])
        self._walkthrough = self._game.walkthrough()
        feedback = str(state["feedback"])
        self._goal = feedback.rsplit("Your task is to:", 1)[-1].strip() if "Your task is to:" in feedback else ""
        if not self.keep_banner and feedback.lstrip().startswith(_BANNER):
            feedback = feedback.lstrip()[len(_BANNER):].lstrip("\n")
        obs = self._observation(feedback)
        self._state = state
        info = self._info(state, valid=True)
        info["walkthrough"] = list(self._walkthrough)
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Apply one command; never raises for any string (invalid -> "Nothing happens.", reward 0)."""
        if self._entry is None:
            raise RuntimeError("ALFWorldEnv.step called before reset()")
        command = action if isinstance(action, str) else str(action)
        if len(command) > MAX_ACTION_CHARS:  # outside the action space: what the engine would answer, at once
            obs = self._observation(self._with_task(_NOTHING_HAPPENS))
            return obs, 0.0, self._won, False, self._info(self._state, valid=False)
        valid = command.strip() in self._state["admissible_commands"]
        state = self._game.step(command)
        self._state = state
        won = bool(state["won"])
        reward = 1.0 if won and not self._won else 0.0
        self._won = self._won or won
        obs = self._observation(self._with_task(str(state["feedback"])))
        return obs, reward, won, False, self._info(state, valid=valid)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_obs
        if self.render_mode == "human":
            print(self._last_obs)
        return None

    def close(self) -> None:
        self._game.close()
        super().close()

    # ------------------------------------------------------------------ oracle access (for experts, not agents)
    @property
    def walkthrough(self) -> list[str]:
        """The current game's stored walkthrough (the planner's optimal plan from the initial state)."""
        return list(self._walkthrough)

    def expert_plan(self) -> list[str]:
        """The planner's optimal commands from the *current* state ([] once the task is done)."""
        if self._entry is None:
            raise RuntimeError("ALFWorldEnv.expert_plan called before reset()")
        return [] if self._won else self._game.replan()

    @property
    def current_task(self) -> GameEntry | None:
        return self._entry

    # ------------------------------------------------------------------ helpers
    def _with_task(self, feedback: str) -> str:
        if not (self.restate_task and self._goal):
            return feedback
        return f"{feedback.rstrip()}\n\nYour task is to: {self._goal}"

    def _observation(self, text: str) -> str:
        text = "".join(ch if ch in PRINTABLE else " " for ch in text)[:MAX_OBSERVATION_CHARS]
        self._last_obs = text
        return text

    def _info(self, state: Any, valid: bool) -> dict[str, Any]:
        assert self._entry is not None
        return {
            "admissible_actions": [str(c) for c in state["admissible_commands"]],
            "valid_action": bool(valid),
            "won": bool(self._won),
            "task_id": self._entry.task_id,
            "task_type": self._entry.task_type,
            "goal": self._goal,
            "game_file": str(self._entry.path),
        }


def make_env(split: str = "train", **kwargs: Any) -> ALFWorldEnv:
    """Construct an :class:`ALFWorldEnv` without Gymnasium's wrappers (no time limit)."""
    return ALFWorldEnv(split, **kwargs)


__all__ = ["ALFWorldEnv", "make_env"]
