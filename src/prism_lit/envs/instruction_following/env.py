"""``prism_lit/InstructionFollowing-v0``: a single-turn Gymnasium env scored by IFEval verifiers (+ a judge).

Observation: the prompt (a request and its constraints). Action: the whole response. One step ends the
episode. ``info`` after the step:

* ``verdicts``: one dict per constraint: ``id``, ``type`` (family, or ``"soft"``), ``hard``, ``strict``,
  ``loose`` (hard only), ``score`` and for soft constraints ``passed`` and ``judge``;
* ``won``: every constraint satisfied (hard: strict verdict; soft: the judge passes it); ``hard_won``;
* ``score``: the fraction of constraints satisfied (hard strict + soft passed), ``score_loose`` likewise
  with loose verdicts, ``hard_score`` / ``soft_score`` per kind;
* ``constraint_ids``, ``constraint_types``, ``instruction_id_list``, ``kwargs``, ``task_id``, ``task_type``
  (the family of the first instruction), ``task_families`` (every family, joined with ``+``),
  ``admissible_actions`` (empty: the action is free text) and ``valid_action`` (a non-blank response);
* ``reward_verified`` (also at ``reset``): no part of the reward is paid by the judge; ``reward_judged``: the
  part of the reward the judge paid; with ``audit_judge``, each hard verdict also has ``judge_passed``.

Reward (``reward``): ``"fraction"`` (default) pays ``score`` with soft constraints counted by the judge's
continuous score; ``"all"`` pays 1.0 only when ``won``; ``"hard"`` ignores soft constraints altogether (their
verdicts are still reported when a judge is set). ``loose=True`` uses loose verdicts for the hard part.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from prism_lit.envs.instruction_following.judge import SOFT_CONSTRAINTS, Judge, audit_verdicts, make_judge
from prism_lit.envs.instruction_following.tasks import (
    DEFAULT_HELD_OUT_TYPES,
    IFTask,
    TaskGenerator,
    load_tasks,
)
from prism_lit.envs.instruction_following.verifiers import (
    FAMILIES,
    INSTRUCTION_IDS,
    family_of,
    verify_response,
)

__all__ = ["InstructionFollowingEnv"]

_PRINTABLE = string.printable
REWARD_MODES = ("fraction", "all", "hard")
_GENERATED_PROMPT_MAX = 8000


class InstructionFollowingEnv(gym.Env):
    """Answer a prompt so that every constraint holds.

    Args:
        split: generator split (``train``, ``test_seen``, ``test_unseen``) or a label for loaded data.
        n_tasks: tasks of the split (generator only).
        seed: generator seed.
        held_out_types: instruction types reserved for ``test_unseen``.
        max_constraints: hard instructions per generated task (1..max).
        task_types: draw generated tasks from these instruction families only (e.g. ``["keywords",
            "punctuation"]``; ``None``: all nine). A task's ``task_type`` is its first instruction's family.
        soft_fraction: share of generated tasks with a soft (judge-scored) constraint.
        soft_splits: splits whose generated tasks get soft constraints (default: ``train`` only, so the
            evaluation splits are the same hard-only tasks whatever the training mix).
        data_path: load tasks from this local file instead (IFEval ``input_data.jsonl`` or RLVR-IFeval rows).
        data_format: ``auto`` / ``ifeval`` / ``rlvr``.
        tasks: explicit :class:`IFTask` list (tests, custom data); overrides the above.
        judge: ``"rule_based"`` (the labelled stand-in), a local HF model path (the LLM judge of
            ``prism_lit.policy.judge``), a ``{"class_path", "init_args"}`` mapping, a judge object, or
            ``None`` (soft constraints then score 0 and fail: a task with soft constraints needs a judge).
        reward: ``fraction`` / ``all`` / ``hard`` (see the module docstring).
        loose: score hard constraints with IFEval's loose verdicts.
        max_response_chars: responses are cut to this many characters before checking.
        audit_judge: also ask the judge about every *hard* constraint (its IFEval sentence as the
            requirement) and record its pass/fail as ``judge_passed`` next to the code's verdict: the
            judge's precision on the policy's own responses (``IFEvalMetrics.rollout``). Costs one judge call
            per hard constraint; pays nothing.
    """

    metadata = {"render_modes": []}  # noqa: RUF012  (gymnasium reads a class attribute)

    def __init__(
        self,
        split: str = "train",
        n_tasks: int = 500,
        seed: int = 0,
        held_out_types: Sequence[str] = DEFAULT_HELD_OUT_TYPES,
        max_constraints: int = 3,
        task_types: Sequence[str] | None = None,
        soft_fraction: float = 0.0,
        soft_splits: Sequence[str] = ("train",),
        data_path: str | None = None,
        data_format: str = "auto",
        tasks: Sequence[IFTask] | None = None,
        judge: Any = "rule_based",
        reward: str = "fraction",
        loose: bool = False,
        max_response_chars: int = 20000,
        audit_judge: bool = False,
    ) -> None:
        if reward not in REWARD_MODES:
            raise ValueError(f"InstructionFollowingEnv.reward must be one of {REWARD_MODES}, got {reward!r}")
        self._generator: TaskGenerator | None = None
        if tasks is not None:
            loaded = list(tasks)
        elif data_path is not None:
            loaded = load_tasks(data_path, data_format, split=split)
        else:
            if n_tasks < 1:
                raise ValueError(f"InstructionFollowingEnv.n_tasks must be >= 1, got {n_tasks}")
            # generated tasks are built on first use (each is checked solvable by the oracle)
            pool = None
            if task_types is not None:
                unknown = sorted(set(task_types) - set(FAMILIES))
                if unknown:
                    raise ValueError(
                        f"InstructionFollowingEnv.task_types: unknown families {unknown}; "
                        f"expected some of {list(FAMILIES)}"
                    )
                pool = [i for i in INSTRUCTION_IDS if family_of(i) in set(task_types)]
            self._generator = TaskGenerator(
                seed=seed,
                types=pool,
                held_out_types=held_out_types,
                max_constraints=max_constraints,
                soft_fraction=soft_fraction if split in soft_splits else 0.0,
            )
            self._generator.task(split, 0)  # fail early on a bad split
            loaded = []
        self._tasks: dict[int, IFTask] = dict(enumerate(loaded))
        self._n = len(loaded) if self._generator is None else n_tasks
        if self._n == 0:
            raise ValueError("InstructionFollowingEnv: no tasks")
        self.split = split
        self.reward_mode = reward
        self.loose = loose
        self.max_response_chars = max_response_chars
        self.audit_judge = audit_judge
        self.judge: Judge | None = make_judge(judge) if judge is not None else None
        if self._generator is not None:
            self._keys = [f"ifgen/{split}/{i}" for i in range(n_tasks)]
        else:
            self._keys = [t.key for t in loaded]
        self._by_id = {k: i for i, k in enumerate(self._keys)}
        if len(self._by_id) != len(self._keys):
            raise ValueError("InstructionFollowingEnv: task keys must be unique")
        # the observation charset grows to cover loaded prompts (IFEval has non-ASCII prompts)
        charset = set(_PRINTABLE)
        for t in loaded:
            charset.update(t.prompt)
        longest = max([len(t.prompt) for t in loaded] + [_GENERATED_PROMPT_MAX])
        self.observation_space = spaces.Text(max_length=longest, charset="".join(sorted(charset)))
        self.action_space = spaces.Text(max_length=max_response_chars, charset=_PRINTABLE)
        self._index = 0
        self._done = True
        self._last: dict[str, Any] = {}

    # ------------------------------------------------------------------ conventions of the project
    @property
    def task_ids(self) -> list[str]:
        return list(self._keys)

    def get_task(self, index: int) -> IFTask:
        if index not in self._tasks:
            assert self._generator is not None
            self._tasks[index] = self._generator.task(self.split, index)
        return self._tasks[index]

    @property
    def tasks(self) -> list[IFTask]:
        """Every task of the split (builds generated ones on first access)."""
        return [self.get_task(i) for i in range(self._n)]

    @property
    def task(self) -> IFTask:
        """The current task (ground truth for the expert; the agent sees only the prompt)."""
        return self.get_task(self._index)

    @property
    def env_name(self) -> str:
        return "instruction_following"

    @property
    def task_types(self) -> list[str]:
        """The instruction families a task's ``task_type`` can be (per-type metrics report these)."""
        if self._generator is not None:
            present = {family_of(i) for i in self._generator.seen_types + self._generator.held_out_types}
        else:
            present = {
                family_of(t.instruction_id_list[0]) for t in self._tasks.values() if t.instruction_id_list
            }
        return [f for f in FAMILIES if f in present]

    def _task_type(self) -> str:
        ids = self.task.instruction_id_list
        return family_of(ids[0]) if ids else "none"

    def _base_info(self) -> dict[str, Any]:
        task = self.task
        return {
            "admissible_actions": [],
            "task_id": task.key,
            "task_type": self._task_type(),
            "task_families": "+".join(
                sorted({family_of(i) for i in self.task.instruction_id_list})
                + (["soft"] if self.task.soft_constraints else [])
            ),
            "constraint_ids": task.constraint_ids,
            "constraint_types": [family_of(i) for i in task.instruction_id_list]
            + ["soft"] * len(task.soft_constraints),
            "instruction_id_list": list(task.instruction_id_list),
            "kwargs": [dict(k) for k in task.kwargs],
            # every part of the reward is checked by code (no soft constraint pays): what precision-first routing
            # keeps (prism_lit.probe.routers.VerifiedRewardRouter)
            "reward_verified": not task.soft_constraints or self.reward_mode == "hard",
            "won": False,
            "score": 0.0,
        }

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        options = options or {}
        if options.get("task_id") is not None:
            key = str(options["task_id"])
            if key not in self._by_id:
                raise ValueError(f"InstructionFollowingEnv: unknown task_id {key!r} in split {self.split!r}")
            self._index = self._by_id[key]
        else:
            self._index = int(self.np_random.integers(self._n))
        self._done = False
        self._last = {}
        return self.task.prompt, self._base_info()

    def evaluate(self, task: IFTask, response: str) -> dict[str, Any]:
        """Verdicts, scores and reward of ``response`` on ``task`` (what ``step`` reports).

        A response longer than the action space (``max_response_chars``) is an invalid action, judged as empty
        without running a verifier: it scores 0 in constant time."""
        response = "" if response is None else str(response)
        too_long = len(response) > self.max_response_chars
        if too_long:
            response = ""
        hard = verify_response(task.instruction_id_list, task.kwargs, response, task.prompt)
        verdicts = [v.as_dict() for v in hard]
        if self.audit_judge and self.judge is not None:
            for item, said in zip(verdicts, audit_verdicts(self.judge, task.prompt, response, hard)):
                item["judge_passed"] = said
        soft = []
        for sid in task.soft_constraints:
            constraint = SOFT_CONSTRAINTS.get(sid)
            if self.judge is None or constraint is None or not response.strip():
                item = {
                    "id": sid,
                    "type": "soft",
                    "hard": False,
                    "score": 0.0,
                    "passed": False,
                    "judge": None if self.judge is None else self.judge.name,
                }
            else:
                js = self.judge.score(task.prompt, response, constraint.rubric)
                item = {
                    "id": sid,
                    "type": "soft",
                    "hard": False,
                    "score": js.score,
                    "passed": js.passed,
                    "judge": js.judge,
                }
            soft.append(item)
        verdicts.extend(soft)
        n = len(verdicts)
        strict_ok = sum(v.strict for v in hard)
        loose_ok = sum(v.loose for v in hard)
        soft_ok = sum(s["passed"] for s in soft)
        hard_won = all(v.strict for v in hard)
        won = hard_won and all(s["passed"] for s in soft)
        hard_part = [float(v.loose if self.loose else v.strict) for v in hard]
        judged = 0.0  # the part of the reward the judge paid
        if self.reward_mode == "hard":
            reward = sum(hard_part) / len(hard_part) if hard_part else 0.0
        elif self.reward_mode == "all":
            reward = 1.0 if (all(hard_part) and all(s["passed"] for s in soft)) else 0.0
            judged = reward if soft else 0.0
        else:
            parts = hard_part + [float(s["score"]) for s in soft]
            reward = sum(parts) / len(parts) if parts else 0.0
            judged = sum(float(s["score"]) for s in soft) / len(parts) if parts else 0.0
        return {
            "verdicts": verdicts,
            "won": bool(won),
            "hard_won": bool(hard_won),
            "score": (strict_ok + soft_ok) / n if n else 0.0,
            "score_loose": (loose_ok + soft_ok) / n if n else 0.0,
            "hard_score": strict_ok / len(hard) if hard else 1.0,
            "soft_score": soft_ok / len(soft) if soft else None,
            "reward": float(reward),
            "reward_judged": float(judged),
            "valid_action": bool(response.strip()) and not too_long,
        }

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            info = self._base_info()
            info.update(self._last or {"valid_action": False})
            return "The episode is over.", 0.0, True, False, info
        result = self.evaluate(self.task, action)
        self._done = True
        self._last = result
        info = self._base_info()
        info.update(result)
        passed = sum(1 for v in result["verdicts"] if (v["strict"] if v["hard"] else v["passed"]))
        observation = f"Constraints satisfied: {passed} of {len(result['verdicts'])}."
        return observation, result["reward"], True, False, info
