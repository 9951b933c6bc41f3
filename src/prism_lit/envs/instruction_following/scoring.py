"""IFEval's four scores: prompt-level and instruction-level accuracy, each strict and loose.

* prompt-level: share of prompts whose instructions *all* pass;
* instruction-level: share of all instructions (pooled over prompts) that pass;
* strict uses the response as written, loose IFEval's 8 variants (see :mod:`.verifiers`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prism_lit.envs.instruction_following.judge import agreement
from prism_lit.envs.instruction_following.tasks import IFTask
from prism_lit.envs.instruction_following.verifiers import Verdict, family_of, verify_response
from prism_lit.envs.spec import EnvMetrics

__all__ = ["IFEvalMetrics", "evaluate_responses", "ifeval_scores"]


def _pair(item: Verdict | Mapping[str, Any]) -> tuple[str, bool, bool]:
    if isinstance(item, Verdict):
        return item.instruction_id, item.strict, item.loose
    return str(item.get("id", "")), bool(item["strict"]), bool(item["loose"])


def ifeval_scores(
    results: Sequence[Sequence[Verdict | Mapping[str, Any]]], by_type: bool = False
) -> dict[str, Any]:
    """IFEval scores from per-prompt verdicts (``Verdict`` objects or dicts with ``strict``/``loose``).

    Soft verdicts (dicts with ``hard: False``) are ignored: IFEval scores hard instructions only.
    Returns ``prompt_level_strict``, ``prompt_level_loose``, ``instruction_level_strict``,
    ``instruction_level_loose``, ``n_prompts``, ``n_instructions`` and, with ``by_type``, per-family
    instruction-level accuracies under ``"by_type"``.
    """
    prompts_strict = prompts_loose = 0
    inst_strict = inst_loose = n_inst = 0
    n_prompts = 0
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for verdicts in results:
        pairs = [_pair(v) for v in verdicts if not (isinstance(v, Mapping) and v.get("hard") is False)]
        if not pairs:
            continue
        n_prompts += 1
        prompts_strict += all(s for _, s, _ in pairs)
        prompts_loose += all(lo for _, _, lo in pairs)
        for instruction_id, s, lo in pairs:
            n_inst += 1
            inst_strict += s
            inst_loose += lo
            row = per_type[family_of(instruction_id)]
            row[0] += 1
            row[1] += s
            row[2] += lo
    nan = float("nan")
    out: dict[str, Any] = {
        "prompt_level_strict": prompts_strict / n_prompts if n_prompts else nan,
        "prompt_level_loose": prompts_loose / n_prompts if n_prompts else nan,
        "instruction_level_strict": inst_strict / n_inst if n_inst else nan,
        "instruction_level_loose": inst_loose / n_inst if n_inst else nan,
        "n_prompts": n_prompts,
        "n_instructions": n_inst,
    }
    if by_type:
        out["by_type"] = {
            t: {"n": n, "strict": s / n, "loose": lo / n} for t, (n, s, lo) in sorted(per_type.items())
        }
    return out


def evaluate_responses(
    tasks: Sequence[IFTask], responses: Sequence[str] | Mapping[str, str], by_type: bool = False
) -> dict[str, Any]:
    """Verify ``responses`` (aligned with ``tasks``, or keyed by prompt as IFEval's response file) and score.

    A task with no response counts as failed (the empty response passes nothing).
    """
    if isinstance(responses, Mapping):
        answers = [responses.get(t.prompt, "") for t in tasks]
    else:
        if len(responses) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses")
        answers = list(responses)
    results = [verify_response(t.instruction_id_list, t.kwargs, r, t.prompt) for t, r in zip(tasks, answers)]
    return ifeval_scores(results, by_type=by_type)


def _hard(info: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [v for v in info.get("verdicts") or [] if v.get("hard")]


class IFEvalMetrics(EnvMetrics):
    """The instruction-following env's metrics (its :class:`~prism_lit.envs.spec.EnvSpec` names this class).

    * per episode: ``prompt_level_strict`` / ``prompt_level_loose`` (every hard instruction holds, 0/1) and the
      counts ``instructions``, ``instructions_strict``, ``instructions_loose``;
    * per panel: IFEval's four scores (instruction level pooled over the panel's prompts, as IFEval) and the
      counts; soft constraints are not IFEval's and do not enter (the evaluation splits have none);
    * per RL iteration, on the policy's own responses: the judge audit (env kwarg ``audit_judge``): the judge
      asked about each *hard* constraint, the code's strict verdict taken as the truth:
      ``judge_precision``, ``judge_recall``, ``judge_false_pass_rate`` (how often a response the code fails
      would be rewarded by the judge) and ``judge_audited`` (constraints asked); and where the reward comes from:
      ``reward_judged_share`` (the share of the iteration's reward paid by judge scores), ``unverified_tasks``
      (the share of episodes whose reward is not all code-checked), ``hard_won`` (every hard constraint holds).
    """

    rates = ("prompt_level_strict", "prompt_level_loose")

    def episode(self, info: dict[str, Any]) -> dict[str, float]:
        hard = _hard(info)
        if not hard:
            return {}
        return {"prompt_level_strict": float(all(v["strict"] for v in hard)),
                "prompt_level_loose": float(all(v["loose"] for v in hard)),
                "instructions": float(len(hard)),
                "instructions_strict": float(sum(bool(v["strict"]) for v in hard)),
                "instructions_loose": float(sum(bool(v["loose"]) for v in hard))}

    def panel(self, outcomes: list[dict[str, float]]) -> dict[str, Any]:
        rows = [o for o in outcomes if o.get("instructions")]
        if not rows:
            return {}
        n_inst = sum(o["instructions"] for o in rows)
        return {"prompt_level_strict": sum(o["prompt_level_strict"] for o in rows) / len(rows),
                "prompt_level_loose": sum(o["prompt_level_loose"] for o in rows) / len(rows),
                "instruction_level_strict": sum(o["instructions_strict"] for o in rows) / n_inst,
                "instruction_level_loose": sum(o["instructions_loose"] for o in rows) / n_inst,
                "n_prompts": len(rows), "n_instructions": int(n_inst)}

    def rollout(self, infos: list[dict[str, Any]]) -> dict[str, float]:
        infos = [i for i in infos if "verdicts" in i]
        if not infos:
            return {}
        pairs = [(bool(v["judge_passed"]), bool(v["strict"])) for i in infos for v in _hard(i) if "judge_passed" in v]
        total_reward = sum(float(i.get("reward", 0.0)) for i in infos)
        out = {"reward_judged_share": (sum(float(i.get("reward_judged", 0.0)) for i in infos) / total_reward
                                       if total_reward > 0 else 0.0),
               "unverified_tasks": sum(not i.get("reward_verified", True) for i in infos) / len(infos),
               "hard_won": sum(bool(i.get("hard_won")) for i in infos) / len(infos)}
        if pairs:
            stats = agreement(pairs)
            out.update({"judge_precision": stats["precision"], "judge_recall": stats["recall"],
                        "judge_false_pass_rate": stats["false_pass_rate"], "judge_audited": stats["n"],
                        # the counts, so rates can be pooled over iterations (report.training_metrics sums them)
                        "judge_pass_right": float(sum(j and c for j, c in pairs)),
                        "judge_pass_wrong": float(sum(j and not c for j, c in pairs)),
                        "code_pass": float(sum(c for _, c in pairs))})
        return out

    def training_summary(self, sums: dict[str, float], means: dict[str, float]) -> dict[str, float]:
        """The judge audit pooled over every iteration (each audited constraint counts once) and the mean share
        of the reward the judge paid, of unverified tasks and of responses meeting every hard constraint."""
        out = {k: means[k] for k in ("reward_judged_share", "unverified_tasks", "hard_won") if k in means}
        audited = sums.get("judge_audited", 0.0)
        if audited:
            right, wrong, code = sums["judge_pass_right"], sums["judge_pass_wrong"], sums["code_pass"]
            nan = float("nan")
            out.update({"judge_audited": audited,
                        "judge_precision": right / (right + wrong) if right + wrong else nan,
                        "judge_recall": right / code if code else nan,
                        "judge_false_pass_rate": wrong / (audited - code) if audited > code else nan})
        return out
