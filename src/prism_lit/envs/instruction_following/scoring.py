"""IFEval's four scores: prompt-level and instruction-level accuracy, each strict and loose.

* prompt-level: share of prompts whose instructions *all* pass;
* instruction-level: share of all instructions (pooled over prompts) that pass;
* strict uses the response as written, loose IFEval's 8 variants (see :mod:`.verifiers`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prism_lit.envs.instruction_following.tasks import IFTask
from prism_lit.envs.instruction_following.verifiers import Verdict, family_of, verify_response

__all__ = ["evaluate_responses", "ifeval_scores"]


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
