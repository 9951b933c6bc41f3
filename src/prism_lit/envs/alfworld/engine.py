"""The real ALFWorld engine: TextWorld's PDDL environment with alfworld's logic, demangler and planner expert.

This is the only module that imports ``alfworld`` / ``textworld``. It points ``ALFWORLD_DATA`` at the prism_lit
cache before the first import (``import alfworld`` otherwise creates ``~/.cache/alfworld``) and wraps the engine
the way alfworld's ``AlfredTWEnv`` / ``alfworld-generate`` do: ``PddlEnv`` -> ``AlfredDemangler`` (entity ids such
as ``Mug_bar__minus_01_dot_00...`` read "mug 1") -> ``AlfredExpert`` in planner mode for walkthroughs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from prism_lit.envs.alfworld.cache import alfworld_data_dir

_INSTALL_HINT = "the ALFWorld engine is an optional extra: pip install 'prism-lit[alfworld]' (alfworld==0.4.2)"


def ensure_alfworld_data() -> str:
    """Set ``ALFWORLD_DATA`` (unless the user did) so importing alfworld does not create ``~/.cache/alfworld``."""
    if not os.environ.get("ALFWORLD_DATA"):
        os.environ["ALFWORLD_DATA"] = str(alfworld_data_dir())
    return os.environ["ALFWORLD_DATA"]


@lru_cache(maxsize=1)
def _modules() -> dict[str, Any]:
    ensure_alfworld_data()
    try:
        import alfworld.info as alfworld_info
        import textworld
        import textworld.envs.pddl.logic as pddl_logic
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredExpertType
        from alfworld.gen import constants, goal_library
        from textworld.envs import PddlEnv
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return {
        "constants": constants,
        "goal_library": goal_library,
        "info": alfworld_info,
        "textworld": textworld,
        "PddlEnv": _fast_pddl_env_class(PddlEnv, pddl_logic),
        "AlfredDemangler": AlfredDemangler,
        "AlfredExpert": AlfredExpert,
        "AlfredExpertType": AlfredExpertType,
    }


def alfred_constants() -> Any:
    """``alfworld.gen.constants`` (ALFRED's object/receptacle tables)."""
    return _modules()["constants"]


def goal_library() -> Any:
    """``alfworld.gen.goal_library`` (PDDL goal and language templates per task type)."""
    return _modules()["goal_library"]


@lru_cache(maxsize=1)
def logic_files() -> tuple[str, str]:
    """The installed alfworld logic: ``(alfred.pddl domain text, alfred.twl2 grammar text)``."""
    info = _modules()["info"]
    return Path(info.ALFRED_PDDL_PATH).read_text(), Path(info.ALFRED_TWL2_PATH).read_text()


def read_game_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``game.tw-pddl`` file, with an error naming the file and the missing field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"ALFWorld game file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    for field in ("pddl_domain", "grammar", "pddl_problem"):
        if field not in data:
            raise ValueError(f"{path}: field {field!r} is missing (not an ALFWorld game.tw-pddl file)")
    return data


_CACHES: list[Any] = []


def clear_caches() -> None:
    """Drop the engine's memoised parses and translations (frees memory; the next resets are cold again)."""
    for cache in _CACHES:
        cache.cache_clear()


def _fast_pddl_env_class(pddl_env_cls: type, pddl_logic: Any) -> type:
    """TextWorld's ``PddlEnv`` with its pure, slow steps memoised; its behaviour is unchanged.

    Measured on small games: ``load`` parses alfworld's domain + grammar with tatsu (~0.1 s), every ``reset``
    translates the problem to SAS twice (~0.08 s), and every step re-parses the grammar's rule strings and
    conjunctive queries with tatsu for each admissible command and deep-copies its derivation contexts (most of
    a step's ~10 ms). The parses are functions of their input text only, so they are cached (bounded LRU), and
    contexts get fresh dicts instead of deep copies (see ``shallow_context``). The module attributes TextWorld looks
    up at call time are swapped only for the duration of our own calls (``fast_paths``) and restored after, so
    other users of textworld in the process are unaffected. Envs stepped from several threads at once stay
    correct (an overlapping call may just run on the stock, slower functions).
    """
    from textworld.envs.pddl import textgen
    from textworld.logic import Rule

    downward = pddl_logic.fast_downward
    translate = downward.pddl2sas
    parse_symbols = textgen._parse_and_convert
    copy_context = textgen.copy_context
    parse_query = Rule.__dict__["parse_conjunctive_query"]  # the classmethod object itself, to restore it

    # ~0.2 MB per parsed game logic: a few hundred games stay cached.
    @lru_cache(maxsize=512)
    def game_logic(domain: str, grammar: str) -> Any:
        return pddl_logic.GameLogic(domain=domain, grammar=grammar)

    @lru_cache(maxsize=1024)
    def cached_translate(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
        return translate(domain, problem, verbose=verbose, optimize=optimize)

    @lru_cache(maxsize=4096)
    def _symbols(text: str, rule_name: str, trace: bool) -> Any:
        return parse_symbols(text, rule_name=rule_name, trace=trace)

    def cached_symbols(text: str, rule_name: str = "symbols", trace: bool = False) -> Any:
        # derive() sets a context on every returned symbol: hand out a fresh copy of the parsed list.
        return copy.deepcopy(_symbols(text, rule_name, bool(trace)))

    @lru_cache(maxsize=4096)
    def _query(expr: str) -> Any:
        return parse_query.__func__(Rule, expr)

    def shallow_context(context: dict) -> dict:
        # textgen deep-copies the variables / mapping dicts of every context it derives, but only ever adds
        # keys to those dicts (never mutates the EntityInfo / Variable values): fresh dicts are enough.
        return {
            "state": context["state"],
            "facts": context["facts"],
            "variables": dict(context["variables"]),
            "mapping": dict(context["mapping"]),
            "entity_infos": context["entity_infos"],
        }

    _CACHES.extend([game_logic, cached_translate, _symbols, _query])

    @contextlib.contextmanager
    def fast_paths():
        downward.pddl2sas = cached_translate
        textgen._parse_and_convert = cached_symbols
        textgen.copy_context = shallow_context
        Rule.parse_conjunctive_query = staticmethod(_query)
        try:
            yield
        finally:
            downward.pddl2sas = translate
            textgen._parse_and_convert = parse_symbols
            textgen.copy_context = copy_context
            Rule.parse_conjunctive_query = parse_query

    class FastPddlEnv(pddl_env_cls):
        def load(self, filename: str) -> None:
            with open(filename) as fh:
                data = json.load(fh)
            self._game_file = filename
            self._game_data = data
            self.walkthrough = data.get("walkthrough", None)
            self._logic = game_logic(data["pddl_domain"], data["grammar"])
            with fast_paths():
                self._pddl_state = pddl_logic.PddlState(self.downward_lib, data["pddl_problem"], self._logic)
            self._entity_infos = self._get_entity_infos()

        def reset(self):
            with fast_paths():
                return super().reset()

        def step(self, command: str):
            with fast_paths():
                return super().step(command)

    return FastPddlEnv


class TextWorldGame:
    """One TextWorld PDDL engine (its own copy of the Fast Downward library) that plays ALFWorld game files.

    Args:
        planner: also wrap alfworld's planner expert, so :meth:`reset` returns the optimal plan (used by the
            generator to write walkthroughs).
    """

    def __init__(self, planner: bool = False) -> None:
        m = _modules()
        infos = m["textworld"].EnvInfos(admissible_commands=True, won=True)
        env = m["AlfredDemangler"](m["PddlEnv"](infos), shuffle=False)
        if planner:
            env = m["AlfredExpert"](env, expert_type=m["AlfredExpertType"].PLANNER)
        self._env = env
        self._planner = planner
        self.loaded: str | None = None

    def load(self, game: str | os.PathLike, force: bool = False) -> None:
        """Load a game file; loading the same path again is a no-op unless ``force``."""
        key = str(Path(game).resolve())
        if force or key != self.loaded:
            self._env.load(key)
            self.loaded = key

    def reset(self) -> Any:
        """Start the loaded game; returns TextWorld's state (``feedback``, ``admissible_commands``, ``won``...)."""
        return self._env.reset()

    def step(self, command: str) -> Any:
        """Apply a command; unknown commands answer "Nothing happens." and leave the state unchanged."""
        state, _, _ = self._env.step(command)
        return state

    def walkthrough(self) -> list[str]:
        """The loaded game file's stored walkthrough ([] when it has none)."""
        return list(self._env.unwrapped.walkthrough or [])

    def replan(self) -> list[str]:
        """The planner's optimal command sequence from the current state ([] when already won / unsolvable).

        Uses the PDDL state's ``replan`` the way textworld does for ``policy_commands`` (on demand here, so
        ordinary steps do not pay for a planner call).
        """
        pddl_env = self._env.unwrapped
        return list(pddl_env._pddl_state.replan(pddl_env._entity_infos))

    def close(self) -> None:
        self._env.close()
