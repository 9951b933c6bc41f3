"""ALFWorld oracle: alfworld's planner expert (Fast Downward on the game's PDDL), plus short ReAct-style thoughts.

The expert is built as ``ALFWorldExpert(env)`` (see :mod:`prism_lit.envs.experts`). Each step it asks the
environment for the planner's optimal plan from the *current* state (``env.unwrapped.expert_plan()``) and takes
its first command, so it also finishes episodes that started off-plan. Without an env it replays the game's
stored walkthrough (``info["walkthrough"]`` from ``reset``), which is the same plan from the initial state.

``search="explore"`` stops the planner from revealing *where* the task objects are: until a needed object kind
(the target; for look-at tasks also the lamp) has been seen in an observation, the expert searches receptacles in
the order of the ``go to`` commands admissible at reset, opening closed ones, and takes a target it has seen
itself. Everything else (appliances, the goal receptacle, the lamp once seen) is left to the planner.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

_DIGITS = re.compile(r"\s+\d+$")
SEARCH_MODES = ("oracle", "explore")

# ALFWorld's goal templates (alfworld.gen.goal_library) for the six task types, e.g. "put a hot apple in
# countertop", "find two mug and put them in desk", "examine the book with the desklamp".
_GOALS = (
    re.compile(r"(?:look at|examine the) (?:sliced )?(?P<obj>\w+) (?:under|with) the (?P<light>\w+)"),
    re.compile(r"(?:put|find) (?P<two>two) (?:sliced )?(?P<obj>\w+) (?:and put them )?(?:in|on) (?P<recep>\w+)"),
    re.compile(r"put (?:a|some) (?:(?:clean|hot|cool) )?(?P<obj>\w+) (?:in|on) (?P<recep>\w+)"),
    re.compile(r"(?:clean|heat|cool) some (?P<obj>\w+) and put it in (?P<recep>\w+)"),
)
_CONTENTS = re.compile(r"(?:On the ([\w ]+?), you see|The ([\w ]+?) is open\. In it, you see) ([^.]*)\.")
_ARRIVE = re.compile(r"You arrive at ([\w ]+?)\.")
_TAKE = re.compile(r"You pick up the ([\w ]+?) from the ([\w ]+?)\.")
_PUT = re.compile(r"You (?:move|put) the ([\w ]+?) (?:to|in|on) the ([\w ]+?)\.")


class ALFWorldExpertError(RuntimeError):
    """The expert has no admissible plan step (an unsolvable state or a walkthrough that diverged)."""


def _kind(name: str) -> str:
    """``"apple 1"`` -> ``"apple"``."""
    return _DIGITS.sub("", name.strip())


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class Goal(NamedTuple):
    """A task sentence parsed into object kinds: ``put two mug in desk`` -> ``Goal("mug", "desk", "", 2)``."""

    obj: str
    recep: str = ""  # goal receptacle kind ("" for look-at tasks)
    light: str = ""  # lamp kind for look-at tasks
    count: int = 1


def parse_goal(text: str) -> Goal | None:
    """The object kinds a task needs, from its sentence (``None`` if it matches no ALFWorld template)."""
    text = text.rsplit("Your task is to:", 1)[-1].strip().lower()
    for pattern in _GOALS:
        if m := pattern.match(text):
            parts = m.groupdict()
            return Goal(parts["obj"], parts.get("recep") or "", parts.get("light") or "", 2 if parts.get("two") else 1)
    return None


def _items(text: str) -> list[str]:
    """``"a apple 1, and a mug 2"`` -> ``["apple 1", "mug 2"]``; ``"nothing"`` -> ``[]``."""
    names = (re.sub(r"^an?\s+", "", part.strip()) for part in re.split(r",|\band\b", text))
    return [n for n in names if n and n != "nothing"]


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
        search: ``oracle`` (the planner finds objects with its hidden knowledge) or ``explore`` (search
            receptacles for the task objects from observations only, then hand over to the planner; needs ``env``).
        thoughts: return a short thought with each action (``None`` otherwise).
    """

    def __init__(self, env: Any = None, *, mode: Literal["plan", "walkthrough"] = "plan",
                 search: Literal["oracle", "explore"] = "oracle", thoughts: bool = True) -> None:
        if mode not in ("plan", "walkthrough"):
            raise ValueError(f"mode must be 'plan' or 'walkthrough', got {mode!r}")
        if search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {SEARCH_MODES}, got {search!r}")
        self._env = getattr(env, "unwrapped", env)
        if mode == "plan" and self._env is not None and not hasattr(self._env, "expert_plan"):
            raise TypeError(f"ALFWorldExpert(mode='plan') needs an ALFWorldEnv, got {type(self._env).__name__}")
        self.mode = mode if self._env is not None else "walkthrough"
        if search == "explore" and self.mode != "plan":
            raise ValueError("search='explore' needs the env and mode='plan' (the planner finishes each sub-goal)")
        self.search = search
        self.thoughts = thoughts
        self._walkthrough: list[str] = []
        self._index = 0

    def reset(self, observation: str, info: dict) -> None:
        """Start an episode: remember the game's walkthrough (and, exploring, the task and the receptacles)."""
        self._walkthrough = list(info.get("walkthrough") or [])
        self._index = 0
        self._goal = parse_goal(info.get("goal") or observation)
        self.search_order = [a[len("go to "):] for a in info.get("admissible_actions", []) if a.startswith("go to ")]
        self._where: dict[str, str] = {}  # object seen -> receptacle it was last seen in
        self._searched: set[str] = set()  # receptacles whose contents were seen
        self._location: str | None = None
        self._holding: str | None = None

    def act(self, observation: str, info: dict) -> tuple[str, str | None]:
        """The next command and a thought explaining it."""
        if self.search == "explore" and self._goal is not None:
            self._observe(observation)
            action, thought = self._search_step(info["admissible_actions"])
            if action is not None:
                return action, (thought if self.thoughts else None)
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

    # ------------------------------------------------------------------ search="explore"
    def _observe(self, observation: str) -> None:
        """Update location, hand and object memory from the feedback text."""
        if m := _ARRIVE.search(observation):
            self._location = m.group(1)
        if m := _TAKE.search(observation):
            self._holding = m.group(1)
            self._where.pop(m.group(1), None)
        if m := _PUT.search(observation):
            self._holding = None
            self._where[m.group(1)] = m.group(2)
        for m in _CONTENTS.finditer(observation):
            recep = m.group(1) or m.group(2)
            self._searched.add(recep)
            self._where = {o: r for o, r in self._where.items() if r != recep}
            self._where.update((o, recep) for o in _items(m.group(3)))

    def _search_step(self, admissible: list[str]) -> tuple[str | None, str]:
        """Find and take the target from observations only; ``None`` hands the step to the planner."""
        goal = self._goal
        if self._holding is None:
            # a pick-two target already in a goal receptacle was placed there (the generator never starts one there)
            seen = [(o, r) for o, r in self._where.items()
                    if _kind(o) == goal.obj and not (goal.count > 1 and _kind(r) == goal.recep)]
            here = next((o for o, r in seen if r == self._location), None)
            if here is not None and f"take {here} from {self._location}" in admissible:
                return f"take {here} from {self._location}", f"I found the {here}. I take it."
            if seen and f"go to {seen[0][1]}" in admissible:
                return f"go to {seen[0][1]}", f"I saw the {seen[0][0]} at {seen[0][1]}. I go there to take it."
            return self._explore(goal.obj, admissible, another=any(_kind(o) == goal.obj for o in self._where))
        if goal.light and not any(_kind(o) == goal.light for o in self._where):
            return self._explore(goal.light, admissible)
        return None, ""

    def _explore(self, kind: str, admissible: list[str], another: bool = False) -> tuple[str | None, str]:
        """Open the closed receptacle here, else go to the next unsearched receptacle in ``search_order``."""
        what = f"another {kind}" if another else f"{_article(kind)} {kind}"
        here = self._location
        if here is not None and here not in self._searched and f"open {here}" in admissible:
            return f"open {here}", f"The {here} is closed. I open it to look for {what}."
        for recep in self.search_order:
            if recep not in self._searched and recep != here and f"go to {recep}" in admissible:
                return f"go to {recep}", f"I have not found {what} yet. I check {recep}."
        return None, ""  # everything searched: let the planner finish
