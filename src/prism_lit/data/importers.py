"""Import the field's expert corpora (AgentGym AgentTraj, ETO) so that the RL stage can replay their tasks.

``prism-lit import agentgym|eto IN OUT.jsonl --env webshop|alfworld`` (:func:`import_corpus`):

1. reads the items (:mod:`prism_lit.data.formats`: AgentGym ``{"item_id", "conversations"}``, ETO
   ``{"id", "conversations", "reward"}`` for WebShop and ``{"game_file", "conversations"}`` for ALFWorld);
2. maps each item to the env's task id:

   - WebShop, by the instruction the conversation shows (``Instruction: [SEP] <text> [SEP]``), looked up among the
     env's goals: ``webshop/<split>/<goal index>``. The env must hold the same goals (upstream's goal files, with
     ``env_kwargs: {data_dir: ...}``); an item id's number (``webshop_6``, ETO ``"6"``) only breaks ties;
   - ALFWorld, by the game path: ETO's ``game_file`` (``.../json_2.1.1/train/<task>/<trial>/game.tw-pddl``) gives
     ``alfworld/train/<task>/<trial>``, which must be one of the env's games (``env_kwargs: {data_dir: ...}``);
     AgentGym's ``alfworld_<n>`` indexes AgentGym's own list of game files, given as ``mapping`` (a JSON list of
     paths, or an object from item number or id to path);

3. by default re-renders each mapped item through the agent protocol the RL stage uses, by replaying its actions in
   the env (the observations, admissible actions and reply format are then exactly what rollouts show; the replies'
   thoughts are kept), or with ``verbatim`` keeps the conversation as recorded (only its ``task_id`` changes);
4. writes the prism_lit JSONL and ``OUT.import_report.json``: counts, and every item it could not map or replay,
   with the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prism_lit.data.formats import read_agentgym, read_eto
from prism_lit.data.schema import Message, Trajectory, write_trajectories
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.io import atomic_write_text

SOURCES = ("agentgym", "eto")
ENV_IDS = {"webshop": "prism_lit/WebShop-v0", "alfworld": "prism_lit/ALFWorld-v0"}
ALFWORLD_SPLITS = ("train", "valid_seen", "valid_unseen")
_INSTRUCTION_RE = re.compile(r"Instruction:\s*\[SEP\]\s*(.+?)\s*\[SEP\]", re.DOTALL)
_ACTION_RE = re.compile(r"Action:\s*(.+?)\s*$", re.DOTALL)
_THOUGHT_RE = re.compile(r"Thought:\s*(.*?)\s*(?:\n\s*)?Action:", re.DOTALL)
_PUT_RE = re.compile(r"^put (.+?) in/on (.+)$")  # ALFWorld grammar 0.3.3 (ETO, AgentGym) -> 0.4.2 "move X to Y"
_NUMBER_RE = re.compile(r"(\d+)$")
ETO_SPLIT_NAMES = {"eval_in_distribution": "valid_seen", "eval_out_of_distribution": "valid_unseen"}


@dataclass
class ImportReport:
    """What :func:`import_corpus` did: counts and the items left out, each with its reason."""

    source: str
    env: str
    read: int = 0
    written: int = 0
    mode: str = "replay"
    unmapped: list[dict[str, str]] = field(default_factory=list)


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _number(item_id: str) -> int | None:
    match = _NUMBER_RE.search(item_id)
    return int(match.group(1)) if match else None


def parse_reply(reply: str) -> tuple[str | None, str | None]:
    """``(thought, action)`` of an ETO/AgentGym reply ``Thought: ...\\nAction: ...`` (``None`` when absent)."""
    action = _ACTION_RE.search(reply)
    thought = _THOUGHT_RE.search(reply)
    first = action.group(1).strip().splitlines()[0].strip() if action and action.group(1).strip() else None
    return (thought.group(1).strip() or None) if thought else None, first


class _WebShopTasks:
    """Instruction text -> goal indices of a WebShop env, and the split of each index."""

    def __init__(self, env_kwargs: dict[str, Any]) -> None:
        from prism_lit.rl.rollout import make_env

        env = make_env(ENV_IDS["webshop"], {**env_kwargs, "split": "train"})
        try:
            unwrapped = env.unwrapped
            self.by_instruction: dict[str, list[int]] = {}
            for i, goal in enumerate(unwrapped.data.goals):
                self.by_instruction.setdefault(_normalize(goal["instruction_text"]), []).append(i)
            self.bounds = dict(unwrapped.bounds)
            self.n_goals = len(unwrapped.data.goals)
        finally:
            env.close()

    def task_id(self, trajectory: Trajectory, item_id: str) -> tuple[str | None, str]:
        instruction = next((m.group(1) for msg in trajectory.messages if msg.role == "user"
                            for m in [_INSTRUCTION_RE.search(msg.content)] if m), None)
        if instruction is None:
            return None, "no 'Instruction: [SEP] ... [SEP]' in the conversation, so the goal cannot be identified"
        candidates = self.by_instruction.get(_normalize(instruction))
        if not candidates:
            return None, (f"instruction {instruction[:80]!r} is not among the env's {self.n_goals} goals (back the "
                          "env with the goal file the corpus was made from: env_kwargs data_dir)")
        number = _number(item_id)
        index = number if number in candidates else candidates[0]
        split = next(s for s, r in self.bounds.items() if index in r)
        return f"webshop/{split}/{index}", ""


class _AlfWorldTasks:
    """The env's ALFWorld games per split, and AgentGym's item-number -> game-file mapping."""

    def __init__(self, env_kwargs: dict[str, Any], mapping: str | None) -> None:
        from prism_lit.rl.rollout import make_env

        self.task_ids: set[str] = set()
        self.errors: list[str] = []
        for split in ALFWORLD_SPLITS:
            try:
                env = make_env(ENV_IDS["alfworld"], {**env_kwargs, "split": split})
            except (ValueError, FileNotFoundError) as err:
                self.errors.append(f"{split}: {err}")
                continue
            try:
                self.task_ids.update(str(t) for t in env.unwrapped.task_ids)
            finally:
                env.close()
        self.mapping: dict[str, str] = {}
        if mapping is not None:
            data = json.loads(Path(mapping).read_text(encoding="utf-8"))
            if isinstance(data, list):
                self.mapping = {str(i): str(p) for i, p in enumerate(data)}
            elif isinstance(data, dict):
                self.mapping = {str(k): str(v) for k, v in data.items()}
            else:
                raise ValueError(f"mapping {mapping}: expected a JSON list of game paths or an object id -> path")

    @staticmethod
    def task_id_of(game_file: str) -> str | None:
        parts = Path(game_file.replace("\\", "/")).parts
        if parts and parts[-1].endswith(".tw-pddl"):
            parts = parts[:-1]
        if len(parts) < 3:
            return None
        split, task, trial = parts[-3:]
        return f"alfworld/{ETO_SPLIT_NAMES.get(split, split)}/{task}/{trial}"

    def task_id(self, trajectory: Trajectory, item_id: str, source: str) -> tuple[str | None, str]:
        game = trajectory.task_id if trajectory.task_id != item_id else None
        if game is None:
            number = _number(item_id)
            game = self.mapping.get(item_id) or (self.mapping.get(str(number)) if number is not None else None)
            if game is None:
                how = ("AgentGym's alfworld_<n> ids index AgentGym's list of game files: pass it as mapping"
                       if source == "agentgym" else "the item has no game_file")
                return None, f"no game file for item {item_id!r} ({how})"
        task_id = self.task_id_of(game)
        if task_id is None:
            return None, f"game path {game!r} is not <split>/<task>/<trial>/game.tw-pddl"
        if task_id not in self.task_ids:
            where = f" ({'; '.join(self.errors)})" if self.errors else ""
            return None, (f"game {task_id!r} is not among the env's {len(self.task_ids)} games (back the env with "
                          f"the ALFWorld data the corpus was made from: env_kwargs data_dir){where}")
        return task_id, ""


def _replay(trajectory: Trajectory, task_id: str, env, protocol: AgentProtocol, env_name: str
            ) -> tuple[Trajectory | None, str]:
    """The item's actions replayed in ``env`` and rendered by ``protocol``; ``(None, reason)`` when they fail."""
    steps = [parse_reply(m.content) for m in trajectory.messages if m.role == "assistant"]
    steps = [(t, a) for t, a in steps if a is not None]
    if not steps:
        return None, "no 'Action: ...' reply in the conversation"
    obs, info = env.reset(seed=0, options={"task_id": task_id})
    admissible = list(info.get("admissible_actions") or [])
    messages = [Message("system", protocol.system), Message("user", protocol.render_observation(obs, admissible))]
    reward, done = 0.0, False
    for k, (thought, action) in enumerate(steps):
        if done:
            return None, f"replay: the episode ended at step {k} but the item has {len(steps)} actions"
        if env_name == "alfworld" and admissible and action not in admissible:
            moved = _PUT_RE.sub(r"move \1 to \2", action)
            action = moved if moved in admissible else action
        if admissible and env_name == "alfworld" and action not in admissible:
            return None, f"replay: action {k} {action!r} is not admissible there"
        messages.append(Message("assistant", protocol.format_reply(action, thought, admissible=admissible)))
        obs, step_reward, terminated, truncated, info = env.step(action)
        if info.get("valid_action") is False:
            return None, f"replay: action {k} {action!r} is not valid on that page"
        reward += float(step_reward)
        done = bool(terminated or truncated)
        admissible = list(info.get("admissible_actions") or [])
        if not done:
            messages.append(Message("user", protocol.render_observation(obs, admissible)))
    if not done:
        return None, f"replay: the {len(steps)} recorded actions do not finish the episode"
    meta = {**trajectory.meta, "source_id": trajectory.id, "replay_reward": reward}
    if trajectory.reward is not None:
        meta["source_reward"] = trajectory.reward
    out = Trajectory(trajectory.id, env_name, task_id, str(info.get("task_type", "")), messages,
                     reward=reward, won=bool(info.get("won", False)), meta=meta)
    return out, ""


def import_corpus(
    source: str,
    path: str,
    out: str,
    env: str,
    env_kwargs: dict[str, Any] | None = None,
    protocol: AgentProtocol | None = None,
    verbatim: bool = False,
    mapping: str | None = None,
) -> ImportReport:
    """Import an AgentGym or ETO file for ``env`` (see the module docstring); returns (and writes) the report.

    Args:
        source: ``agentgym`` or ``eto``.
        path: the corpus (JSON array or JSONL).
        out: output JSONL (prism_lit schema); the report goes to ``<out>.import_report.json``.
        env: ``webshop`` or ``alfworld``.
        env_kwargs: keyword arguments of the env (``data_dir`` of the upstream data the corpus was made from).
        protocol: the agent protocol the RL stage will use (default: ETO/AgentGym-style ``thought_action``).
        verbatim: keep the conversations as recorded (only ``task_id`` is set) instead of replaying them.
        mapping: AgentGym ALFWorld: JSON list (or object) of game paths that ``alfworld_<n>`` indexes.
    """
    if source not in SOURCES:
        raise ValueError(f"import: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if env not in ENV_IDS:
        raise ValueError(f"import: unknown env {env!r}; choose one of {', '.join(ENV_IDS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"import: corpus file not found: {path}")
    kwargs = dict(env_kwargs or {})
    kwargs.pop("split", None)
    protocol = protocol or AgentProtocol(env=env, reply_format="thought_action")
    items = read_agentgym(path, env) if source == "agentgym" else read_eto(path, env)
    report = ImportReport(source=source, env=env, read=len(items), mode="verbatim" if verbatim else "replay")
    tasks: Any = _WebShopTasks(kwargs) if env == "webshop" else _AlfWorldTasks(kwargs, mapping)
    envs: dict[str, Any] = {}
    written: list[Trajectory] = []
    try:
        for item in items:
            if env == "webshop":
                task_id, reason = tasks.task_id(item, item.id)
            else:
                task_id, reason = tasks.task_id(item, item.id, source)
            if task_id is not None and not verbatim:
                split = task_id.split("/")[1]
                if split not in envs:
                    from prism_lit.rl.rollout import make_env

                    envs[split] = make_env(ENV_IDS[env], {**kwargs, "split": split})
                replayed, reason = _replay(item, task_id, envs[split], protocol, env)
                task_id = task_id if replayed is not None else None
            if task_id is None:
                report.unmapped.append({"id": item.id, "reason": reason})
                continue
            if verbatim:
                item.task_id, item.env = task_id, env
                item.meta = {**item.meta, "source_id": item.id}
                written.append(item)
            else:
                written.append(replayed)
    finally:
        for e in envs.values():
            e.close()
    write_trajectories(out, written)
    report.written = len(written)
    atomic_write_text(f"{out}.import_report.json", json.dumps(asdict(report), indent=2) + "\n")
    return report


__all__ = ["ImportReport", "import_corpus", "parse_reply"]
