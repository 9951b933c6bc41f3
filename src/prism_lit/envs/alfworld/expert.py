"""ALFWorld oracle: alfworld's planner expert (Fast Downward on the game's PDDL), plus short ReAct-style thoughts.

The expert is built as ``ALFWorldExpert(env)`` (see :mod:`prism_lit.envs.experts`). Each step it asks the
environment for the planner's optimal plan from the *current* state (``env.unwrapped.expert_plan()``) and takes
its first command, so it also finishes episodes that started off-plan. Without an env it replays the game's
stored walkthrough (``info["walkthrough"]`` from ``reset``), which is the same plan from the initial state.
"""

from __future__ import annotations

import re
from typing import Any, Literal

_DIGITS = re.compile(r"\s+\d+$")


class ALFWorldExpertError(RuntimeError):
    """The expert has no admissible plan step (an unsolvable state or a walkthrough that diverged)."""


def _kind(name: str) -> str:
    """``"apple 1"`` -> ``"apple"``."""
    return _DIGITS.sub("", name.strip())


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def thought_for(action: str, rest: list[str]) -> str:
    """A one-sentence reason for ``action`` given the plan steps that follow it."""
    words = action.split()
    if action.startswith("go to "):
        target = action[len("go to "):]
        nxt = next((a for a in rest if not a.startswith("open ")), "")
        if nxt.startswith("take ") and " from " in nxt:
            obj = _kind(nxt[len("take "):].split(" from ")[0])
            return f"I need {_article(obj)} {obj}. I will look for one at {target}."
        for verb in ("heat", "cool", "clean"):
            if nxt.startswith(verb + " ") and " with " in nxt:
                obj = nxt[len(verb) + 1:].split(" with ")[0]
                return f"Now I {verb} the {obj}. I go to {target}."
        if nxt.startswith("move ") and " to " in nxt:
            obj = nxt[len("move "):].split(" to ")[0]
            return f"Now I put the {obj} in {target}."
        if nxt.startswith("use "):
            return f"Now I need light. The {nxt[len('use '):]} is at {target}."
        return f"I go to {target}."
    if words[:1] == ["open"]:
        return f"The {action[len('open '):]} is closed. I open it to look inside."
    if action.startswith("take ") and " from " in action:
        obj = action[len("take "):].split(" from ")[0]
        return f"I found the {obj}. I take it."
    for verb, past in (("heat", "hot"), ("cool", "cool"), ("clean", "clean")):
        if action.startswith(verb + " ") and " with " in action:
            obj, tool = action[len(verb) + 1:].split(" with ", 1)
            return f"I {verb} the {obj} with the {tool} so it is {past}."
    if action.startswith("move ") and " to " in action:
        obj, dest = action[len("move "):].split(" to ", 1)
        done = " That completes the task." if not rest else ""
        return f"I put the {obj} in the {dest}.{done}"
    if action.startswith("use "):
        return f"I turn on the {action[len('use '):]} to look at what I hold."
    return f"I {action}."


class ALFWorldExpert:
    """Planner oracle for :class:`~prism_lit.envs.alfworld.env.ALFWorldEnv`; wins every solvable game.

    Args:
        env: the environment it plays (any wrapper around an ``ALFWorldEnv``). ``None``: replay the walkthrough.
        mode: ``plan`` (re-plan from the current state each step; needs ``env``) or ``walkthrough``.
        thoughts: return a short thought with each action (``None`` otherwise).
    """

    def __init__(self, env: Any = None, *, mode: Literal["plan", "walkthrough"] = "plan",
                 thoughts: bool = True) -> None:
        if mode not in ("plan", "walkthrough"):
            raise ValueError(f"mode must be 'plan' or 'walkthrough', got {mode!r}")
        self._env = getattr(env, "unwrapped", env)
        if mode == "plan" and self._env is not None and not hasattr(self._env, "expert_plan"):
            raise TypeError(f"ALFWorldExpert(mode='plan') needs an ALFWorldEnv, got {type(self._env).__name__}")
        self.mode = mode if self._env is not None else "walkthrough"
        self.thoughts = thoughts
        self._walkthrough: list[str] = []
        self._index = 0

    def reset(self, observation: str, info: dict) -> None:
        """Start an episode: remember the game's walkthrough."""
        self._walkthrough = list(info.get("walkthrough") or [])
        self._index = 0

    def act(self, observation: str, info: dict) -> tuple[str, str | None]:
        """The next optimal command and a thought explaining it."""
        if self.mode == "plan":
            plan = self._env.expert_plan()
        else:
            plan = self._walkthrough[self._index:]
        if not plan:
            raise ALFWorldExpertError(f"no plan step left for task {info.get('task_id')!r} (won={info.get('won')})")
        action = plan[0]
        admissible = info.get("admissible_actions")
        if admissible is not None and action not in admissible:
            raise ALFWorldExpertError(
                f"plan step {action!r} is not admissible in task {info.get('task_id')!r}; in walkthrough mode the "
                f"episode must follow the walkthrough from reset (use mode='plan' with the env)"
            )
        self._index += 1
        return action, (thought_for(action, plan[1:]) if self.thoughts else None)
