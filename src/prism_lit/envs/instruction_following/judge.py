"""Soft constraints (tone, style, helpfulness) and the judges that score them.

A judge answers one question: does ``response`` meet ``requirement`` given ``prompt``? It returns a
:class:`JudgeScore` (a score in [0, 1] and ``passed = score >= threshold``). Two judges:

* :class:`prism_lit.policy.judge.LLMJudge`: a causal LM loaded from a **local** Hugging Face model path.
  It is shown :data:`JUDGE_PROMPT` (through the model's chat template when it has one) and the score is
  ``P(Yes) / (P(Yes) + P(No))`` from the logits of the first answer token. It lives with the policy code
  (it needs torch and transformers); the env builds it by class name (:func:`make_judge`), so the env
  package never imports them and stays usable from any RL library.
* :class:`RuleBasedJudge`: **a rule-based stand-in, not a judge model**: keyword and length heuristics, for
  tests and embedded runs where no judge model is available. It is cheap and deterministic and, like a weak
  LLM judge, easy to game (e.g. "friendly" rewards second-person words); use it to exercise the plumbing of
  mixed hard + soft rewards, not to measure tone.

:func:`judge_agreement` measures a judge against code-verified truth: it asks the judge about the *hard*
instructions of each task, whose truth the verifiers know, and reports precision (how often a "pass" is
right) and recall, i.e. how often a wrong response is rewarded (the paper's reward-precision question).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prism_lit.envs.instruction_following.text import count_words, split_sentences

__all__ = [
    "JUDGE_PROMPT",
    "SOFT_CONSTRAINTS",
    "Judge",
    "JudgeScore",
    "LLM_JUDGE_CLASS",
    "RuleBasedJudge",
    "SoftConstraint",
    "agreement",
    "audit_verdicts",
    "judge_agreement",
    "make_judge",
]


@dataclass(frozen=True)
class SoftConstraint:
    """A constraint no code verifies exactly: ``instruction`` goes in the prompt, ``rubric`` to the judge."""

    id: str
    instruction: str
    rubric: str


SOFT_CONSTRAINTS: dict[str, SoftConstraint] = {
    c.id: c
    for c in (
        SoftConstraint(
            "soft:tone_formal",
            "Use a formal, professional tone.",
            "The tone is formal and professional: no slang, no contractions, no exclamations.",
        ),
        SoftConstraint(
            "soft:tone_friendly",
            "Keep the tone warm and friendly.",
            "The tone is warm and friendly toward the reader.",
        ),
        SoftConstraint(
            "soft:style_concise",
            "Be concise and get to the point.",
            "The writing is concise: short sentences, no padding or repetition.",
        ),
        SoftConstraint(
            "soft:style_vivid",
            "Use vivid, descriptive language.",
            "The language is vivid and descriptive, with concrete sensory detail.",
        ),
        SoftConstraint(
            "soft:helpful",
            "Make the answer genuinely useful to the reader.",
            "The response addresses the request directly and gives useful, specific content.",
        ),
    )
}

JUDGE_PROMPT = (
    "You are a strict grader. Decide whether the RESPONSE satisfies the REQUIREMENT, "
    "given the user's PROMPT.\n"
    "PROMPT:\n{prompt}\n\n"
    "REQUIREMENT:\n{requirement}\n\n"
    "RESPONSE:\n{response}\n\n"
    "Does the response satisfy the requirement? Answer with Yes or No."
)


@dataclass
class JudgeScore:
    score: float
    passed: bool
    judge: str


class Judge(Protocol):
    name: str

    def score(self, prompt: str, response: str, requirement: str) -> JudgeScore:
        """How well ``response`` meets ``requirement`` (a soft constraint's rubric or an instruction)."""


# ------------------------------------------------------------------------------------------ stand-in
_CONTRACTION_RE = re.compile(r"\b\w+'(?:t|s|re|ve|ll|d|m)\b", re.IGNORECASE)
_SLANG = {"gonna", "wanna", "kinda", "cool", "awesome", "stuff", "yeah", "hey", "guys", "lol", "totally"}
_WARM = {
    "you",
    "your",
    "glad",
    "happy",
    "hope",
    "enjoy",
    "welcome",
    "friend",
    "thanks",
    "thank",
    "love",
    "warm",
}
_VIVID = {
    "bright",
    "warm",
    "quiet",
    "golden",
    "crisp",
    "gentle",
    "vivid",
    "sparkling",
    "soft",
    "deep",
    "green",
    "fresh",
    "glowing",
    "rough",
    "smooth",
    "fragrant",
    "loud",
    "cold",
    "sweet",
    "bitter",
    "shimmering",
}
_REFUSAL_RE = re.compile(r"\b(i cannot|i can't|as an ai|i am unable|i'm unable)\b", re.IGNORECASE)
_STOP = {
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "and",
    "for",
    "about",
    "with",
    "on",
    "is",
    "are",
    "your",
    "you",
    "write",
    "who",
    "that",
    "why",
    "new",
    "short",
    "give",
    "describe",
    "explain",
    "which",
    "plays",
    "part",
}


class RuleBasedJudge:
    """RULE-BASED STAND-IN for an LLM judge (keyword/length heuristics; see the module docstring)."""

    name = "rule_based_stand_in"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def score(self, prompt: str, response: str, requirement: str) -> JudgeScore:
        text = str(response)
        words = [w.lower() for w in re.findall(r"[A-Za-z']+", text)]
        n = max(len(words), 1)
        req = requirement.lower()
        if "formal" in req:
            bad = len(_CONTRACTION_RE.findall(text)) + text.count("!") + sum(w in _SLANG for w in words)
            value = max(0.0, 1.0 - bad / 3.0) if words else 0.0
        elif "friendly" in req:
            value = min(1.0, sum(w in _WARM for w in words) / 3.0)
        elif "concise" in req:
            sentences = split_sentences(text) or [""]
            mean_len = count_words(text) / len(sentences)
            value = (
                (1.0 if count_words(text) <= 150 else 0.5) * (1.0 if mean_len <= 20 else 0.4)
                if words
                else 0.0
            )
        elif "vivid" in req:
            value = min(1.0, sum(w in _VIVID for w in words) / 3.0)
        else:  # helpfulness and anything else: on topic, substantial, not a refusal
            topic = {w for w in re.findall(r"[a-z]+", prompt.lower()) if w not in _STOP and len(w) > 3}
            overlap = len(topic & set(words)) / max(len(topic), 1)
            value = (
                0.0 if _REFUSAL_RE.search(text) else 0.5 * min(1.0, n / 80.0) + 0.5 * min(1.0, 2 * overlap)
            )
        return JudgeScore(float(value), value >= self.threshold, self.name)


_JUDGES: dict[str, Judge] = {}
LLM_JUDGE_CLASS = "prism_lit.policy.judge.LLMJudge"


def make_judge(judge: Any = "rule_based") -> Judge:
    """Build a judge from a config value.

    * ``None`` or ``"rule_based"``: :class:`RuleBasedJudge` (the labelled stand-in);
    * ``{"class_path": "module.Class", "init_args": {...}}``: that class, e.g. the LLM judge
      ``{"class_path": "prism_lit.policy.judge.LLMJudge", "init_args": {"model_path": "/models/judge"}}``;
    * a string other than ``"rule_based"``: a local model path for the LLM judge (:data:`LLM_JUDGE_CLASS`);
    * any object with ``name`` and ``score``: used as is.

    Judges built from a config are cached per config, so the many env copies of a rollout pool share one
    model. The class is imported by name only here, so the env package itself never imports torch.
    """
    if judge is None or judge == "rule_based":
        return RuleBasedJudge()
    if isinstance(judge, str):
        judge = {"class_path": LLM_JUDGE_CLASS, "init_args": {"model_path": judge}}
    if isinstance(judge, Mapping):
        if "class_path" not in judge:
            raise ValueError(f"judge: a mapping needs a 'class_path', got {dict(judge)!r}")
        key = json.dumps(dict(judge), sort_keys=True, default=str)
        if key not in _JUDGES:
            module_name, _, attr = str(judge["class_path"]).rpartition(".")
            cls = getattr(importlib.import_module(module_name), attr)
            _JUDGES[key] = cls(**dict(judge.get("init_args") or {}))
        return _JUDGES[key]
    if not (hasattr(judge, "score") and hasattr(judge, "name")):
        raise TypeError(
            f"judge: expected 'rule_based', a model path, a class_path mapping or a judge, got {judge!r}"
        )
    return judge


def audit_verdicts(judge: Judge, prompt: str, response: str, verdicts: Sequence[Any]) -> list[bool]:
    """The judge's pass/fail on each *hard* verdict of ``response`` (a :class:`Verdict`), asked with the
    instruction's IFEval sentence as the requirement: what the judge would reward if it scored that constraint."""
    from prism_lit.envs.instruction_following.verifiers import describe_instruction

    return [judge.score(prompt, response, describe_instruction(v.instruction_id, v.kwargs)).passed
            for v in verdicts]


def agreement(pairs: Sequence[tuple[bool, bool]]) -> dict[str, float]:
    """Precision, recall, false-pass rate and accuracy of ``(judge passed, code passed)`` pairs.

    ``false_pass_rate`` is the share of responses the code fails that the judge passes: how often a wrong
    response would be rewarded. ``nan`` where a denominator is 0; ``n`` counts the pairs.
    """
    tp = sum(j and c for j, c in pairs)
    fp = sum(j and not c for j, c in pairs)
    fn = sum(c and not j for j, c in pairs)
    tn = len(pairs) - tp - fp - fn
    total = len(pairs)
    nan = float("nan")
    return {
        "n": float(total),
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
        "false_pass_rate": fp / (fp + tn) if fp + tn else nan,
        "accuracy": (tp + tn) / total if total else nan,
    }


def judge_agreement(judge: Judge, tasks: Sequence[Any], responses: Sequence[str]) -> dict[str, float]:
    """The judge's precision and recall on the hard instructions, against the code verifiers' strict verdict.

    For each (task, response) and each hard instruction, the judge is asked whether the response meets the
    instruction's text; the verifier's strict verdict is the truth. ``false_pass_rate`` is the share of
    *failing* responses the judge passes (a rewarded wrong answer).
    """
    from prism_lit.envs.instruction_following.verifiers import verify_response

    pairs: list[tuple[bool, bool]] = []
    for task, response in zip(tasks, responses):
        verdicts = verify_response(task.instruction_id_list, task.kwargs, response, task.prompt)
        said = audit_verdicts(judge, task.prompt, response, verdicts)
        pairs += [(j, v.strict) for j, v in zip(said, verdicts)]
    return agreement(pairs)
