"""Procedural ALFWorld games: ALFRED problems + ``traj_data.json``, built into playable ``game.tw-pddl`` files.

Each game is written in ALFWorld's ``json_2.1.1`` layout::

    <out>/<split>/<task_type>-<Object>-None-<Parent>-<layout>/trial_T<seed>_<type>_<index>/
        initial_state.pddl   # ALFRED PDDL problem (alfworld's domain, goal from alfworld's goal library)
        traj_data.json       # task_type, pddl_params, a templated annotation
        game.tw-pddl         # domain + grammar with the task + problem + solvable + walkthrough

``game.tw-pddl`` is built the way ``alfworld-generate`` builds it (its grammar gets the task description, and
alfworld's planner expert, run in TextWorld's PDDL engine behind the demangler, writes the walkthrough), but as a
library call: no interactive prompt and no ``--end -1`` that silently drops the last game. Every walkthrough is
replayed to a win before the file is written; ``game.tw-pddl`` is written last and atomically, so a game
directory holding it is complete, and generation resumes where it stopped.

Splits: ``train`` and ``valid_seen`` share the training layouts (different games); ``valid_unseen`` uses held-out
layouts and targets object kinds (:data:`~prism_lit.envs.alfworld.layouts.UNSEEN_KINDS`) that never occur in the
other splits; ``valid_unseen_rooms`` uses the same held-out layouts with the object kinds of the training splits
only, which is how ALFWorld's own ``valid_unseen`` is defined (unseen rooms; task instances whose objects may be
known).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prism_lit.envs.alfworld import SPLITS
from prism_lit.envs.alfworld import layouts as L
from prism_lit.envs.alfworld.cache import games_dir
from prism_lit.io import atomic_write_json, atomic_write_text

# (receptacles per room, objects per room) ranges, inclusive.
SIZES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "small": ((4, 6), (3, 6)),
    "medium": ((7, 10), (6, 10)),
    "large": ((12, 18), (12, 20)),
}


class GenerationError(RuntimeError):
    """A game could not be generated or its walkthrough did not win (a generator bug, never expected)."""


@dataclass(frozen=True)
class GameSpec:
    """One sampled game before it is written: a layout, placed objects and an ALFRED task."""

    split: str
    layout: L.Layout
    task_type: str
    object_target: str
    parent_target: str  # "" for look_at_obj_in_light
    toggle_target: str  # "DeskLamp" for look_at_obj_in_light, else ""
    objects: tuple[tuple[str, str, str], ...]  # (object id, kind, receptacle id)
    task_desc: str
    task_dir: str
    trial_dir: str


def _parse_range(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        lo = hi = value
    else:
        lo, hi = (int(v) for v in value)
    if lo < 1 or hi < lo:
        raise ValueError(f"{name} must be a positive int or a (min, max) range with min <= max, got {value!r}")
    return lo, hi


def config_key(n_receptacles: tuple[int, int], n_objects: tuple[int, int], n_layouts: int,
               n_unseen_layouts: int, home_prob: float) -> str:
    """Cache sub-directory name for a size configuration (games differ whenever one of these differs)."""
    return (f"r{n_receptacles[0]}-{n_receptacles[1]}_o{n_objects[0]}-{n_objects[1]}"
            f"_l{n_layouts}-{n_unseen_layouts}_h{round(home_prob * 100)}")


def layout_pool(seed: int, split: str, n_receptacles: tuple[int, int], n_layouts: int,
                n_unseen_layouts: int) -> list[L.Layout]:
    """The layouts a split draws from: the training pool for train/valid_seen, the held-out pool for both unseen
    splits.

    Layouts cycle through the room types so every task type has rooms. Held-out layouts never repeat the
    receptacle make-up (:meth:`Layout.signature`) of a training layout, unless no other room can be drawn.
    """
    if n_layouts < len(L.ROOM_TYPES) or n_unseen_layouts < len(L.ROOM_TYPES):
        raise ValueError(f"n_layouts and n_unseen_layouts must be >= {len(L.ROOM_TYPES)} (one per room type)")

    def draw(number: int, avoid: set[tuple]) -> L.Layout:
        rng = random.Random(f"prism_lit.alfworld/{seed}/layout/{number}")
        room = L.ROOM_TYPES[(number - 1) % len(L.ROOM_TYPES)]
        layout = None
        for _ in range(50):
            layout = L.make_layout(number, room, rng.randint(*n_receptacles), rng)
            if layout.signature() not in avoid:
                return layout
        return layout  # tiny size ranges leave no unseen make-up: fall back to a fresh draw

    train = [draw(k, set()) for k in range(1, n_layouts + 1)]
    if split in ("train", "valid_seen"):
        return train
    seen = {lay.signature() for lay in train}
    return [draw(k, seen) for k in range(n_layouts + 1, n_layouts + n_unseen_layouts + 1)]


def _target_kinds(room: str, split: str) -> list[str]:
    kinds = L.ROOMS[room].objects
    if split == "valid_unseen":
        return [k for k in kinds if k in L.UNSEEN_KINDS]
    return [k for k in kinds if k not in L.UNSEEN_KINDS]


def _distractor_kinds(room: str, split: str) -> list[str]:
    kinds = L.ROOMS[room].objects
    return list(kinds) if split == "valid_unseen" else [k for k in kinds if k not in L.UNSEEN_KINDS]


def _choose_receptacle(kind: str, candidates: list[L.Receptacle], spec: L.RoomSpec, home_prob: float,
                       rng: random.Random) -> L.Receptacle:
    homes = [r for r in candidates if r.type in spec.homes.get(kind, ())]
    if homes and rng.random() < home_prob:
        return rng.choice(homes)
    return rng.choice(candidates)


def sample_game(seed: int, split: str, task_type: str, index: int, pool: list[L.Layout],
                n_objects: tuple[int, int], home_prob: float, can_contain: dict[str, set[str]],
                affordances: dict[str, set[str]], templates: dict[str, list[str]]) -> GameSpec:
    """Draw game ``index`` of ``task_type`` in ``split`` (deterministic in all arguments)."""
    rng = random.Random(f"prism_lit.alfworld/{seed}/{split}/{task_type}/{index}")
    rooms = [lay for lay in pool if lay.room in L.TASK_ROOMS[task_type]]
    if not rooms:
        raise GenerationError(f"no layout in the {split} pool supports {task_type}")
    for _ in range(200):
        layout = rng.choice(rooms)
        spec = L.ROOMS[layout.room]
        receps = list(layout.receptacles)
        kinds = [k for k in _target_kinds(layout.room, split)
                 if task_type not in L.TASK_AFFORDANCE or k in affordances[L.TASK_AFFORDANCE[task_type]]]
        if not kinds:
            continue
        target = rng.choice(kinds)
        holders = [r for r in receps if target in can_contain.get(r.type, ())]
        if task_type == "look_at_obj_in_light":
            parent = ""
            sources = holders
        else:
            excluded = L.TASK_APPLIANCE.get(task_type)
            parents = sorted({r.type for r in holders if r.type != excluded})
            if not parents:
                continue
            parent = rng.choice(parents)
            sources = [r for r in holders if r.type != parent]
        if not sources:
            continue
        n_target = 2 if task_type == "pick_two_obj_and_place" else rng.choice((1, 1, 2))
        total = rng.randint(*n_objects)
        used_ids: set[str] = {r.id for r in receps}
        objects = [(L.alfred_id(target, rng, used_ids), target,
                    _choose_receptacle(target, sources, spec, home_prob, rng).id) for _ in range(n_target)]
        others = [k for k in _distractor_kinds(layout.room, split) if k != target]
        rng.shuffle(others)
        for kind in others:
            if len(objects) >= max(total, n_target):
                break
            places = [r for r in receps if kind in can_contain.get(r.type, ())]
            if places:
                objects.append((L.alfred_id(kind, rng, used_ids), kind,
                                _choose_receptacle(kind, places, spec, home_prob, rng).id))
        toggle = L.LAMP_KIND if task_type == "look_at_obj_in_light" else ""
        template = rng.choice(templates[task_type])
        desc = template.format(obj=target.lower(), recep=parent.lower(), toggle=toggle.lower(), mrecep="")
        task_dir = f"{task_type}-{target}-None-{parent or toggle}-{layout.number}"
        trial_dir = f"trial_T{seed:08d}_{L.TASK_TYPES.index(task_type):06d}_{index:06d}"
        return GameSpec(split, layout, task_type, target, parent, toggle, tuple(objects), desc, task_dir,
                        trial_dir)
    raise GenerationError(f"could not place a {task_type} game in the {split} layouts after 200 draws "
                          f"(seed={seed}, index={index}); widen n_receptacles / n_objects")


def mangle(alfred_name: str) -> str:
    """ALFRED id -> PDDL name, as ALFRED's planner writes them (``Mug|-01.00`` -> ``Mug_bar__minus_01_dot_00``)."""
    out = alfred_name.replace("-", "_minus_")
    for char, word in (("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        out = out.replace(char, word)
    return out


def problem_pddl(game: GameSpec, can_contain: dict[str, set[str]], affordances: dict[str, set[str]],
                 goal_pddl: str) -> str:
    """The ALFRED PDDL problem (``initial_state.pddl``) of a sampled game."""
    layout = game.layout
    loc_of = {r.id: r.location for r in layout.receptacles}
    objects = list(game.objects)
    if layout.lamp_holder is not None:
        used = {o[0] for o in objects} | set(loc_of)
        lamp_id = L.alfred_id(L.LAMP_KIND, random.Random(f"lamp/{layout.number}/{layout.lamp_holder}"), used)
        objects.append((lamp_id, L.LAMP_KIND, layout.lamp_holder))
    okinds = sorted({k for _, k, _ in objects} | {"Knife", "ButterKnife"})
    rkinds = sorted(layout.receptacle_types() | {"SinkBasin", "Microwave", "Fridge"})
    decl = ["  agent1 - agent"]
    decl += [f"  {k}Type - otype" for k in okinds]
    decl += [f"  {k}Type - rtype" for k in rkinds]
    decl += [f"  {mangle(r.id)} - receptacle" for r in layout.receptacles]
    decl += [f"  {mangle(oid)} - object" for oid, _, _ in objects]
    locations = [layout.start_location] + [r.location for r in layout.receptacles]
    decl += [f"  {mangle(loc)} - location" for loc in locations]
    init = [f"  (atLocation agent1 {mangle(layout.start_location)})"]
    for r in layout.receptacles:
        name = mangle(r.id)
        init.append(f"  (receptacleType {name} {r.type}Type)")
        init.append(f"  (receptacleAtLocation {name} {mangle(r.location)})")
        if r.openable:
            init.append(f"  (openable {name})")
    for oid, kind, rid in objects:
        name = mangle(oid)
        init.append(f"  (objectType {name} {kind}Type)")
        init.append(f"  (inReceptacle {name} {mangle(rid)})")
        init.append(f"  (objectAtLocation {name} {mangle(loc_of[rid])})")
        if kind == L.LAMP_KIND:
            init.append(f"  (toggleable {name})")
            continue
        init.append(f"  (pickupable {name})")
        if kind in L.RECEPTACLE_OBJECTS:
            init.append(f"  (isReceptacleObject {name})")
        for flag, table in (("cleanable", "Cleanable"), ("heatable", "Heatable"), ("coolable", "Coolable"),
                            ("sliceable", "Sliceable")):
            if kind in affordances[table]:
                init.append(f"  ({flag} {name})")
    for rk in sorted(layout.receptacle_types()):
        for ok in okinds:
            if ok in can_contain.get(rk, ()):
                init.append(f"  (canContain {rk}Type {ok}Type)")
    return (f"(define (problem plan_{game.task_type})\n(:domain alfred)\n(:objects\n" + "\n".join(decl)
            + "\n)\n(:init\n" + "\n".join(init) + "\n)\n" + goal_pddl.strip() + "\n")


def traj_data(game: GameSpec) -> dict:
    """The minimal ``traj_data.json`` alfworld reads: task type, PDDL params, one (templated) annotation."""
    return {
        "task_type": game.task_type,
        "pddl_params": {
            "object_target": game.object_target,
            "parent_target": game.parent_target,
            "toggle_target": game.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "turk_annotations": {"anns": [{"task_desc": game.task_desc[0].upper() + game.task_desc[1:] + "."}]},
        "scene": {"floor_plan": f"{game.layout.room}_{game.layout.number}"},
        "generator": {"name": "prism_lit.envs.alfworld", "split": game.split},
    }


def build_game_file(game_dir: Path, problem: str, task_desc: str, solver) -> dict:
    """Write ``game.tw-pddl`` for ``game_dir`` with alfworld's logic; returns the game data.

    ``solver`` is a planner-wrapped :class:`~prism_lit.envs.alfworld.engine.TextWorldGame`; its plan is replayed
    on a fresh reset and must win, otherwise :class:`GenerationError` names the game.
    """
    from prism_lit.envs.alfworld.engine import logic_files

    domain, grammar = logic_files()
    gamedata = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", task_desc),
        "pddl_problem": problem,
        "solvable": None,
        "walkthrough": None,
    }
    # alfworld's expert wrapper reads traj_data.json next to the game file, so the solver loads a draft file
    # (one per process: several processes may build the same cache at once and write identical games).
    draft = game_dir / f".game.draft.{os.getpid()}.tw-pddl"
    atomic_write_text(draft, json.dumps(gamedata))
    try:
        solver.load(draft, force=True)
        plan = list(solver.reset().get("extra.expert_plan") or [])
        if not plan:
            raise GenerationError(f"{game_dir}: the planner found no plan")
        state = solver.reset()
        for command in plan:
            if command not in state["admissible_commands"]:
                raise GenerationError(f"{game_dir}: walkthrough command {command!r} is not admissible")
            state = solver.step(command)
        if not state["won"]:
            raise GenerationError(f"{game_dir}: the walkthrough {plan} does not win")
    finally:
        draft.unlink(missing_ok=True)
    gamedata["solvable"] = True
    gamedata["walkthrough"] = plan
    atomic_write_text(game_dir / "game.tw-pddl", json.dumps(gamedata))
    return gamedata


def is_complete(game_dir: Path) -> bool:
    """Whether ``game_dir`` holds a finished, solvable game (``game.tw-pddl`` is written last)."""
    path = game_dir / "game.tw-pddl"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("solvable") is True
    except (OSError, json.JSONDecodeError):
        return False


def generate_games(
    out_dir: str | os.PathLike | None = None,
    n_per_type: int = 10,
    split: str = "train",
    seed: int = 0,
    *,
    task_types: Sequence[str] | None = None,
    size: str = "small",
    n_receptacles: int | Sequence[int] | None = None,
    n_objects: int | Sequence[int] | None = None,
    n_layouts: int = 24,
    n_unseen_layouts: int = 8,
    home_prob: float = 0.75,
    verbose: bool = False,
) -> list[Path]:
    """Generate (or reuse) ``n_per_type`` games of each task type for ``split``; returns their ``game.tw-pddl``.

    Args:
        out_dir: root of the games tree (``<out_dir>/<split>/...``). ``None``: the user cache,
            ``~/.cache/prism_lit/alfworld/<generator version>/seed<seed>/<size config>/`` (``$PRISM_LIT_CACHE``
            overrides ``~/.cache/prism_lit``).
        n_per_type: games per task type. Game ``i`` depends only on (seed, split, type, i, size knobs), so a
            larger ``n_per_type`` later extends the same set and existing games are never rebuilt.
        split: ``train``, ``valid_seen``, ``valid_unseen`` (held-out rooms and object kinds) or
            ``valid_unseen_rooms`` (held-out rooms, known object kinds).
        seed: generator seed (layouts, objects, tasks).
        task_types: subset of the six ALFWorld task types (default: all six).
        size: preset of receptacle/object counts: ``small`` (4-6 receptacles, 3-6 objects; episodes of ~4-12
            expert steps), ``medium`` or ``large`` (ALFWorld-like rooms).
        n_receptacles: receptacles per room, an int or a ``(min, max)`` range; overrides the preset.
        n_objects: objects per room besides the desk lamp, an int or ``(min, max)``; overrides the preset.
        n_layouts: rooms in the training pool (shared by train and valid_seen).
        n_unseen_layouts: held-out rooms of the unseen splits.
        home_prob: chance that an object is put in one of its typical receptacles (a fridge for eggs), which
            makes where to look learnable, as in ALFRED's scenes.
        verbose: print one line per built game.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n_per_type < 0:
        raise ValueError(f"n_per_type must be >= 0, got {n_per_type}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    if not 0.0 <= home_prob <= 1.0:
        raise ValueError(f"home_prob must be in [0, 1], got {home_prob}")
    types = tuple(task_types) if task_types is not None else L.TASK_TYPES
    for t in types:
        if t not in L.TASK_TYPES:
            raise ValueError(f"unknown task type {t!r}; expected one of {L.TASK_TYPES}")
    recep_range = _parse_range(n_receptacles if n_receptacles is not None else SIZES[size][0], "n_receptacles")
    object_range = _parse_range(n_objects if n_objects is not None else SIZES[size][1], "n_objects")
    if out_dir is None:
        root = games_dir(seed, config_key(recep_range, object_range, n_layouts, n_unseen_layouts, home_prob))
    else:
        root = Path(out_dir).expanduser()

    from prism_lit.envs.alfworld.engine import TextWorldGame, alfred_constants, goal_library

    constants = alfred_constants()
    can_contain = {r: set(objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}
    affordances = {k: set(v) for k, v in constants.VAL_ACTION_OBJECTS.items()}
    gdict = goal_library().gdict
    templates = {t: list(gdict[t]["templates"]) for t in L.TASK_TYPES}
    pool = layout_pool(seed, split, recep_range, n_layouts, n_unseen_layouts)

    solver = None
    paths: list[Path] = []
    try:
        for task_type in types:
            for index in range(n_per_type):
                game = sample_game(seed, split, task_type, index, pool, object_range, home_prob, can_contain,
                                   affordances, templates)
                game_dir = root / split / game.task_dir / game.trial_dir
                if not is_complete(game_dir):
                    start = time.perf_counter()
                    goal = gdict[task_type]["pddl"].format(obj=game.object_target, recep=game.parent_target,
                                                           toggle=game.toggle_target, mrecep="")
                    problem = problem_pddl(game, can_contain, affordances, goal.replace("#", "-"))
                    atomic_write_text(game_dir / "initial_state.pddl", problem)
                    atomic_write_json(game_dir / "traj_data.json", traj_data(game))
                    if solver is None:
                        solver = TextWorldGame(planner=True)
                    data = build_game_file(game_dir, problem, game.task_desc, solver)
                    if verbose:
                        print(f"built {game_dir} ({len(data['walkthrough'])} steps, "
                              f"{time.perf_counter() - start:.2f}s)")
                paths.append(game_dir / "game.tw-pddl")
    finally:
        if solver is not None:
            solver.close()
    return paths
