"""Code verifiers for IFEval's 25 instruction types, with IFEval's strict and loose checking.

Written for this project (no code taken from elsewhere) to reproduce the reference behaviour of Google's
IFEval checkers as the IFEval paper and its evaluation code define it: same instruction ids, same keyword
arguments, same pass/fail rules. The one deliberate difference is the text machinery: sentence counts and
the capital-word tokenizer use :mod:`.text` (rule-based, no download) instead of nltk's punkt pickle; see
that module and docs/envs/instruction_following.md for why and where results may differ.

Checking a response (IFEval's evaluation):

* **strict**: the instruction's check on the response as written (an empty response never passes);
* **loose**: the check passes on any of 8 variants: the response, with its first line removed, its last
  line removed, or both, each with and without every ``*`` removed (markdown emphasis).

The comparison ``relation`` of IFEval is ``"less than"`` or ``"at least"``; ``"at most"``, ``"exactly"`` and
``"around"`` (within max(1, 10 %)) are accepted too, for RLVR-IFeval-style data that uses them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prism_lit.envs.instruction_following.text import (
    LanguageNotDetected,
    count_sentences,
    count_words,
    detect_language,
    word_tokens,
)

__all__ = [
    "FAMILIES",
    "INSTRUCTION_IDS",
    "LANGUAGE_NAMES",
    "RELATIONS",
    "Verdict",
    "check_instruction",
    "describe_instruction",
    "family_of",
    "loose_variants",
    "normalize_kwargs",
    "verify_instruction",
    "verify_response",
]

RELATIONS = ("less than", "at least", "at most", "exactly", "around")

# IFEval's language list (ISO 639-1 code -> name shown in the prompt)
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "es": "Spanish",
    "pt": "Portuguese",
    "ar": "Arabic",
    "hi": "Hindi",
    "fr": "French",
    "ru": "Russian",
    "de": "German",
    "ja": "Japanese",
    "it": "Italian",
    "bn": "Bengali",
    "uk": "Ukrainian",
    "th": "Thai",
    "ur": "Urdu",
    "ta": "Tamil",
    "te": "Telugu",
    "bg": "Bulgarian",
    "ko": "Korean",
    "pl": "Polish",
    "he": "Hebrew",
    "fa": "Persian",
    "vi": "Vietnamese",
    "ne": "Nepali",
    "sw": "Swahili",
    "kn": "Kannada",
    "mr": "Marathi",
    "gu": "Gujarati",
    "pa": "Punjabi",
    "ml": "Malayalam",
    "fi": "Finnish",
}
CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def family_of(instruction_id: str) -> str:
    """``"keywords:existence"`` -> ``"keywords"``."""
    return str(instruction_id).split(":", 1)[0]


def _compare(actual: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return actual < n
    if relation == "at least":
        return actual >= n
    if relation == "at most":
        return actual <= n
    if relation == "exactly":
        return actual == n
    if relation == "around":
        return abs(actual - n) <= max(1, round(n * 0.1))
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


# ------------------------------------------------------------------------------------------ the checks
def _keywords_existence(r: str, kw: Mapping[str, Any]) -> bool:
    return all(re.search(k, r, flags=re.IGNORECASE) for k in kw["keywords"])


def _keywords_frequency(r: str, kw: Mapping[str, Any]) -> bool:
    found = len(re.findall(kw["keyword"], r, flags=re.IGNORECASE))
    return _compare(found, kw["relation"], int(kw["frequency"]))


def _forbidden_words(r: str, kw: Mapping[str, Any]) -> bool:
    return not any(re.search(r"\b" + w + r"\b", r, flags=re.IGNORECASE) for w in kw["forbidden_words"])


def _letter_frequency(r: str, kw: Mapping[str, Any]) -> bool:
    count = r.lower().count(kw["letter"])
    return _compare(count, kw["let_relation"], int(kw["let_frequency"]))


def _response_language(r: str, kw: Mapping[str, Any]) -> bool:
    try:
        return detect_language(r) == kw["language"]
    except LanguageNotDetected:
        return True  # IFEval: an undetectable language counts as followed


def _number_sentences(r: str, kw: Mapping[str, Any]) -> bool:
    return _compare(count_sentences(r), kw["relation"], int(kw["num_sentences"]))


def _number_paragraphs(r: str, kw: Mapping[str, Any]) -> bool:
    # IFEval's divider is ``***``; RLVR-IFeval prompts ask for ``* * *`` (optional ``divider`` argument)
    divider = r"\*\s\*\s\*" if str(kw.get("divider", "***")).strip() == "* * *" else r"\*\*\*"
    parts = re.split(r"\s?" + divider + r"\s?", r)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False  # an empty paragraph between two dividers
    return count == int(kw["num_paragraphs"])


def _number_words(r: str, kw: Mapping[str, Any]) -> bool:
    return _compare(count_words(r), kw["relation"], int(kw["num_words"]))


def _nth_paragraph_first_word(r: str, kw: Mapping[str, Any]) -> bool:
    paragraphs = r.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    nth = int(kw["nth_paragraph"])
    if not 1 <= nth <= count:
        return False
    paragraph = paragraphs[nth - 1].strip()  # IFEval indexes the raw split, blanks included
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'\"")
    first = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        first += ch.lower()
    return count == int(kw["num_paragraphs"]) and first == str(kw["first_word"]).lower()


def _placeholders(r: str, kw: Mapping[str, Any]) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= int(kw["num_placeholders"])


def _postscript(r: str, kw: Mapping[str, Any]) -> bool:
    marker = str(kw["postscript_marker"]).strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


def _bullets(r: str, kw: Mapping[str, Any]) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == int(kw["num_bullets"])


def _constrained_response(r: str, kw: Mapping[str, Any]) -> bool:
    r = r.strip()
    return any(option in r for option in kw.get("options") or CONSTRAINED_RESPONSE_OPTIONS)


def _highlights(r: str, kw: Mapping[str, Any]) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h[2:-2].strip())
    return n >= int(kw["num_highlights"])


def _sections(r: str, kw: Mapping[str, Any]) -> bool:
    splitter = str(kw["section_spliter"]).strip()
    parts = re.split(r"\s?" + splitter + r"\s?\d+\s?", r)
    return len(parts) - 1 >= int(kw["num_sections"])


def _json_format(r: str, kw: Mapping[str, Any]) -> bool:
    text = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    text = text.removesuffix("```")
    try:
        json.loads(text.strip())
    except (ValueError, RecursionError):  # deeply nested brackets exhaust the decoder's recursion
        return False
    return True


def _title(r: str, kw: Mapping[str, Any]) -> bool:
    return any(t[2:-2].strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _two_responses(r: str, kw: Mapping[str, Any]) -> bool:
    parts = r.split("******")
    kept = []
    for i, part in enumerate(parts):
        if part.strip():
            kept.append(part)
        elif i not in (0, len(parts) - 1):
            return False
    return len(kept) == 2 and kept[0].strip() != kept[1].strip()


def _repeat_prompt(r: str, kw: Mapping[str, Any]) -> bool:
    return r.strip().lower().startswith(str(kw["prompt_to_repeat"]).strip().lower())


def _end_checker(r: str, kw: Mapping[str, Any]) -> bool:
    return r.strip().strip('"').lower().endswith(str(kw["end_phrase"]).strip().lower())


def _english_case(r: str, upper: bool) -> bool:
    if not (r.isupper() if upper else r.islower()):
        return False
    try:
        return detect_language(r) == "en"
    except LanguageNotDetected:
        return True


def _capital_word_frequency(r: str, kw: Mapping[str, Any]) -> bool:
    capitals = sum(1 for token in word_tokens(r) if token.isupper())
    return _compare(capitals, kw["capital_relation"], int(kw["capital_frequency"]))


def _no_comma(r: str, kw: Mapping[str, Any]) -> bool:
    return "," not in r


def _quotation(r: str, kw: Mapping[str, Any]) -> bool:
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


@dataclass(frozen=True)
class _Spec:
    check: Callable[[str, Mapping[str, Any]], bool]
    args: tuple[str, ...]
    describe: Callable[[Mapping[str, Any]], str]
    optional: tuple[str, ...] = ()


def _join_words(words: Sequence[str]) -> str:
    return ", ".join(words)


_SPECS: dict[str, _Spec] = {
    "keywords:existence": _Spec(
        _keywords_existence,
        ("keywords",),
        lambda k: f"Include keywords {_join_words(k['keywords'])} in the response.",
    ),
    "keywords:frequency": _Spec(
        _keywords_frequency,
        ("keyword", "frequency", "relation"),
        lambda k: (
            f"In your response, the word {k['keyword']} should appear {k['relation']} {k['frequency']} times."
        ),
    ),
    "keywords:forbidden_words": _Spec(
        _forbidden_words,
        ("forbidden_words",),
        lambda k: f"Do not include keywords {_join_words(k['forbidden_words'])} in the response.",
    ),
    "keywords:letter_frequency": _Spec(
        _letter_frequency,
        ("letter", "let_frequency", "let_relation"),
        lambda k: (
            f"In your response, the letter {k['letter']} should appear {k['let_relation']} "
            f"{k['let_frequency']} times."
        ),
    ),
    "language:response_language": _Spec(
        _response_language,
        ("language",),
        lambda k: (
            f"Your ENTIRE response should be in {LANGUAGE_NAMES.get(k['language'], k['language'])} "
            "language, no other language is allowed."
        ),
    ),
    "length_constraints:number_sentences": _Spec(
        _number_sentences,
        ("num_sentences", "relation"),
        lambda k: f"Your response should contain {k['relation']} {k['num_sentences']} sentences.",
    ),
    "length_constraints:number_paragraphs": _Spec(
        _number_paragraphs,
        ("num_paragraphs",),
        lambda k: (
            f"There should be {k['num_paragraphs']} paragraphs. "
            f"Paragraphs are separated with the markdown divider: {k.get('divider', '***')}"
        ),
        ("divider",),
    ),
    "length_constraints:number_words": _Spec(
        _number_words,
        ("num_words", "relation"),
        lambda k: f"Answer with {k['relation']} {k['num_words']} words.",
    ),
    "length_constraints:nth_paragraph_first_word": _Spec(
        _nth_paragraph_first_word,
        ("num_paragraphs", "nth_paragraph", "first_word"),
        lambda k: (
            f"There should be {k['num_paragraphs']} paragraphs. Paragraphs and only paragraphs are "
            "separated with each other by two new lines as if it was '\\n\\n' in python. "
            f"Paragraph {k['nth_paragraph']} must start with word {k['first_word']}."
        ),
    ),
    "detectable_content:number_placeholders": _Spec(
        _placeholders,
        ("num_placeholders",),
        lambda k: (
            f"The response must contain at least {k['num_placeholders']} placeholders represented by "
            "square brackets, such as [address]."
        ),
    ),
    "detectable_content:postscript": _Spec(
        _postscript,
        ("postscript_marker",),
        lambda k: (
            f"At the end of your response, please explicitly add a postscript starting with "
            f"{k['postscript_marker']}"
        ),
    ),
    "detectable_format:number_bullet_lists": _Spec(
        _bullets,
        ("num_bullets",),
        lambda k: (
            f"Your answer must contain exactly {k['num_bullets']} bullet points. Use the markdown bullet "
            "points such as:\n* This is point 1. \n* This is point 2"
        ),
    ),
    "detectable_format:constrained_response": _Spec(
        _constrained_response,
        (),
        lambda k: (
            "Answer with one of the following options: "
            f"{tuple(k.get('options') or CONSTRAINED_RESPONSE_OPTIONS)}"
        ),
        ("options",),
    ),
    "detectable_format:number_highlighted_sections": _Spec(
        _highlights,
        ("num_highlights",),
        lambda k: (
            f"Highlight at least {k['num_highlights']} sections in your answer with markdown, "
            "i.e. *highlighted section*."
        ),
    ),
    "detectable_format:multiple_sections": _Spec(
        _sections,
        ("section_spliter", "num_sections"),
        lambda k: (
            f"Your response must have {k['num_sections']} sections. Mark the beginning of each section "
            f"with {k['section_spliter']} X, such as:\n{k['section_spliter']} 1\n[content of section 1]\n"
            f"{k['section_spliter']} 2\n[content of section 2]"
        ),
    ),
    "detectable_format:json_format": _Spec(
        _json_format,
        (),
        lambda k: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
    ),
    "detectable_format:title": _Spec(
        _title,
        (),
        lambda k: (
            "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."
        ),
    ),
    "combination:two_responses": _Spec(
        _two_responses,
        (),
        lambda k: (
            "Give two different responses. Responses and only responses should be separated by 6 "
            "asterisk symbols: ******."
        ),
    ),
    "combination:repeat_prompt": _Spec(
        _repeat_prompt,
        ("prompt_to_repeat",),
        lambda k: (
            "First repeat the request word for word without change, then give your answer (1. do not "
            "say any words or characters before repeating the request; 2. the request you need to repeat "
            "does not include this sentence)"
        ),
    ),
    "startend:end_checker": _Spec(
        _end_checker,
        ("end_phrase",),
        lambda k: (
            f"Finish your response with this exact phrase {k['end_phrase']}. "
            "No other words should follow this phrase."
        ),
    ),
    "change_case:capital_word_frequency": _Spec(
        _capital_word_frequency,
        ("capital_frequency", "capital_relation"),
        lambda k: (
            f"In your response, words with all capital letters should appear {k['capital_relation']} "
            f"{k['capital_frequency']} times."
        ),
    ),
    "change_case:english_capital": _Spec(
        lambda r, k: _english_case(r, upper=True),
        (),
        lambda k: "Your entire response should be in English, and in all capital letters.",
    ),
    "change_case:english_lowercase": _Spec(
        lambda r, k: _english_case(r, upper=False),
        (),
        lambda k: (
            "Your entire response should be in English, and in all lowercase letters. "
            "No capital letters are allowed."
        ),
    ),
    "punctuation:no_comma": _Spec(
        _no_comma, (), lambda k: "In your entire response, refrain from the use of any commas."
    ),
    "startend:quotation": _Spec(
        _quotation, (), lambda k: "Wrap your entire response with double quotation marks."
    ),
}

INSTRUCTION_IDS: tuple[str, ...] = tuple(_SPECS)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(family_of(i) for i in INSTRUCTION_IDS))

_RELATION_ARGS = ("relation", "let_relation", "capital_relation")
_INT_ARGS = (
    "frequency",
    "let_frequency",
    "num_sentences",
    "num_paragraphs",
    "num_words",
    "nth_paragraph",
    "num_placeholders",
    "num_bullets",
    "num_highlights",
    "num_sections",
    "capital_frequency",
)


def normalize_kwargs(
    instruction_id: str, kwargs: Mapping[str, Any] | None, prompt: str | None = None
) -> dict[str, Any]:
    """The keyword arguments of one instruction, checked: ``None`` values dropped, types fixed.

    Raises ``KeyError`` for an unknown instruction id and ``ValueError`` for missing or bad arguments.
    ``repeat_prompt`` takes its ``prompt_to_repeat`` from ``prompt`` when the kwargs lack it.
    """
    if instruction_id not in _SPECS:
        raise KeyError(f"unknown instruction id {instruction_id!r}")
    spec = _SPECS[instruction_id]
    accepted = spec.args + spec.optional
    kw = {k: v for k, v in dict(kwargs or {}).items() if v is not None and k in accepted}
    if instruction_id == "combination:repeat_prompt" and "prompt_to_repeat" not in kw and prompt is not None:
        kw["prompt_to_repeat"] = prompt
    missing = [a for a in spec.args if a not in kw]
    if missing:
        raise ValueError(f"{instruction_id}: missing argument(s) {missing}")
    for name in _INT_ARGS:
        if name in kw:
            kw[name] = int(kw[name])
    for name in _RELATION_ARGS:
        if name in kw and kw[name] not in RELATIONS:
            raise ValueError(f"{instruction_id}: {name}={kw[name]!r} is not one of {RELATIONS}")
    if "options" in kw:
        kw["options"] = _parse_options(kw["options"])
    for name in ("keywords", "forbidden_words"):
        if name in kw:
            value = kw[name]
            kw[name] = [value] if isinstance(value, str) else [str(w) for w in value]
    if "letter" in kw:
        letter = str(kw["letter"]).strip().lower()
        if len(letter) != 1:
            raise ValueError(f"{instruction_id}: letter must be one character, got {kw['letter']!r}")
        kw["letter"] = letter
    if "section_spliter" in kw:
        kw["section_spliter"] = str(kw["section_spliter"]).strip()
    if "postscript_marker" in kw:
        kw["postscript_marker"] = str(kw["postscript_marker"]).strip()
    return kw


def _parse_options(value: Any) -> list[str]:
    """A list/tuple of options, or its string form (``"('My answer is yes.', 'My answer is no.')"``)."""
    if isinstance(value, str):
        quoted = re.findall(r"'([^']*)'|\"([^\"]*)\"", value)
        found = [a or b for a, b in quoted if (a or b)]
        return found or [value]
    return [str(v) for v in value]


def describe_instruction(instruction_id: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """The instruction's text as IFEval phrases it."""
    return _SPECS[instruction_id].describe(normalize_kwargs(instruction_id, kwargs, prompt=""))


def check_instruction(instruction_id: str, kwargs: Mapping[str, Any], response: str) -> bool:
    """The bare check (no strict/loose wrapping) on ``response``; ``kwargs`` must be normalized."""
    return bool(_SPECS[instruction_id].check(response, kwargs))


def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose variants: as written, first/last/both lines removed, each also without ``*``."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    variants = [response, response.replace("*", "")] + cut + [c.replace("*", "") for c in cut]
    return variants


@dataclass
class Verdict:
    """One instruction's result on one response."""

    instruction_id: str
    strict: bool
    loose: bool
    kwargs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def family(self) -> str:
        return family_of(self.instruction_id)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "id": self.instruction_id,
            "type": self.family,
            "hard": True,
            "strict": self.strict,
            "loose": self.loose,
            "score": 1.0 if self.strict else 0.0,
        }
        if self.error:
            out["error"] = self.error
        return out


def _safe_check(instruction_id: str, kw: Mapping[str, Any], text: str) -> bool:
    if not text.strip():
        return False
    try:
        return check_instruction(instruction_id, kw, text)
    except re.error:
        return False


def verify_instruction(
    instruction_id: str, kwargs: Mapping[str, Any] | None, response: str, prompt: str | None = None
) -> Verdict:
    """Strict and loose verdicts of one instruction on ``response`` (never raises on the response)."""
    response = "" if response is None else str(response)
    try:
        kw = normalize_kwargs(instruction_id, kwargs, prompt)
    except (KeyError, ValueError) as exc:
        return Verdict(instruction_id, False, False, dict(kwargs or {}), error=str(exc))
    strict = _safe_check(instruction_id, kw, response)
    loose = strict or any(_safe_check(instruction_id, kw, v) for v in loose_variants(response)[1:])
    return Verdict(instruction_id, strict, loose, kw)


def verify_response(
    instruction_ids: Sequence[str],
    kwargs_list: Sequence[Mapping[str, Any] | None],
    response: str,
    prompt: str | None = None,
) -> list[Verdict]:
    """Verdicts of every instruction of a prompt (``kwargs_list`` aligned with ``instruction_ids``)."""
    if len(instruction_ids) != len(kwargs_list):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs")
    return [verify_instruction(i, k, response, prompt) for i, k in zip(instruction_ids, kwargs_list)]
