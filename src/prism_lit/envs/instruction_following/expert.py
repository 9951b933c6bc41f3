"""The oracle: writes a response that satisfies a task's hard constraints (for SFT data and tests).

:func:`write_response` builds the response from its constraints: a body of plain sentences (English, or
one of the generator's languages), laid out in the required blocks (``***`` paragraphs, ``\\n\\n``
paragraphs with a given first word, ``Section X`` sections or two ``******``-separated answers), with the
required pieces added (keywords, placeholders, highlights, bullets, all-capital words, letters, title,
postscript, end phrase), then the case change, quotation marks or JSON wrapping. The body length is the one
free knob: it is searched (1..60 sentences) until every hard constraint passes the strict verifier, so the
oracle never claims a response it has not checked. Soft constraints are not targeted beyond plain, polite
sentences. Tasks it cannot satisfy (e.g. some combinations in real IFEval data) get its best attempt.

:class:`InstructionFollowingExpert` is the project's expert interface (``cls(env)``, ``reset``, ``act``).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from typing import Any

from prism_lit.envs.instruction_following.tasks import IFTask
from prism_lit.envs.instruction_following.verifiers import CONSTRAINED_RESPONSE_OPTIONS, verify_response

__all__ = ["InstructionFollowingExpert", "write_response"]

_EN_TOPICAL = (
    "{T} is a subject that rewards careful attention.",
    "Many people find that {t} changes the way they see daily life.",
    "A good place to start with {t} is to learn the basic ideas.",
    "Over time {t} has grown from a small interest into a wide field.",
    "Those who know {t} well say that it works best with steady practice.",
    "The story of {t} shows how small steps can add up.",
)
_EN_GENERIC = (
    "Small steps made every day often matter more than big plans.",
    "It helps to set a clear goal and to check progress often.",
    "Friends and neighbors can offer support along the way.",
    "A calm and patient mind makes hard work feel lighter.",
    "Reading widely gives new ideas and fresh points of view.",
    "Notes written by hand help many people remember details.",
    "Mistakes are normal and they show where to improve.",
    "Sharing results with others keeps the work honest.",
    "A short walk outside can clear the head before a new task.",
    "Good habits grow slowly but they last for a long time.",
    "Asking simple questions often leads to the best answers.",
    "Every season brings a new chance to try something different.",
)
_FOREIGN: dict[str, tuple[str, ...]] = {
    "es": (
        "Este tema es interesante para muchas personas.",
        "Es importante aprender un poco cada día.",
        "La práctica constante ayuda a mejorar los resultados.",
        "Los amigos pueden ofrecer apoyo en el camino.",
        "Leer mucho da nuevas ideas y otros puntos de vista.",
        "Los errores son normales y muestran dónde mejorar.",
        "Un paseo corto ayuda a pensar con claridad.",
        "Los buenos hábitos crecen despacio pero duran mucho.",
    ),
    "fr": (
        "Ce sujet est intéressant pour beaucoup de gens.",
        "Il est important d'apprendre un peu chaque jour.",
        "La pratique régulière aide à améliorer les résultats.",
        "Les amis peuvent offrir un soutien en chemin.",
        "Lire beaucoup donne de nouvelles idées.",
        "Les erreurs sont normales et montrent où progresser.",
        "Une courte promenade aide à penser clairement.",
        "Les bonnes habitudes grandissent lentement.",
    ),
    "de": (
        "Dieses Thema ist für viele Menschen interessant.",
        "Es ist wichtig jeden Tag ein wenig zu lernen.",
        "Regelmäßiges Üben hilft die Ergebnisse zu verbessern.",
        "Freunde können auf dem Weg Unterstützung geben.",
        "Viel zu lesen bringt neue Ideen und andere Sichtweisen.",
        "Fehler sind normal und zeigen den Weg.",
        "Ein kurzer Spaziergang hilft klar zu denken.",
        "Gute Gewohnheiten wachsen langsam aber sie halten lange.",
    ),
    "it": (
        "Questo tema è interessante per molte persone.",
        "È importante imparare qualcosa ogni giorno.",
        "La pratica costante aiuta a migliorare i risultati.",
        "Gli amici possono offrire sostegno nel cammino.",
        "Leggere molto porta nuove idee e altri punti di vista.",
        "Gli errori sono normali e mostrano la strada.",
        "Una breve passeggiata aiuta a pensare con chiarezza.",
        "Le buone abitudini crescono piano ma durano.",
    ),
    "pt": (
        "Este tema é interessante para muitas pessoas.",
        "É importante aprender um pouco todos os dias.",
        "A prática constante ajuda a melhorar os resultados.",
        "Os amigos podem oferecer apoio no caminho.",
        "Ler muito traz novas ideias e outros pontos de vista.",
        "Os erros são normais e mostram onde melhorar.",
        "Uma caminhada curta ajuda a pensar com clareza.",
        "Os bons hábitos crescem devagar mas duram muito.",
    ),
}
_TITLE_WORD = {"en": "Notes on", "es": "Notas", "fr": "Notes", "de": "Notizen", "it": "Note", "pt": "Notas"}
_PLACEHOLDERS = ("[name]", "[address]", "[date]", "[city]", "[phone]", "[email]")
_CAPS = ("NOTE", "KEY", "CORE", "MAIN", "REAL", "BASIC", "CLEAR", "SIMPLE", "FIRST", "NEXT", "GREAT", "TRUE")
_SOFT_SENTENCES = {
    "soft:tone_friendly": "Thank you for reading and enjoy your day.",
    "soft:style_vivid": "Picture the bright and fresh morning light.",
}
_LETTER_WORDS = (
    "banana",
    "apple",
    "river",
    "stone",
    "letter",
    "moment",
    "tree",
    "sound",
    "island",
    "mirror",
    "door",
    "lemon",
    "salad",
    "tiger",
    "radio",
    "model",
    "melon",
    "idea",
    "oasis",
    "tomato",
)


def _kwargs_by_id(task: IFTask) -> dict[str, Mapping[str, Any]]:
    return {i: k for i, k in zip(task.instruction_id_list, task.kwargs)}


def _topic(task: IFTask) -> str:
    request = str(task.meta.get("template_request") or task.prompt)
    match = re.search(r"about (.+?)[.?!]", request) or re.search(r"(?:to|of|in which) (.+?)[ .?!]", request)
    return match.group(1) if match else "this topic"


def _allowed(sentence: str, kw: Mapping[str, Mapping[str, Any]]) -> bool:
    for word in (kw.get("keywords:forbidden_words") or {}).get("forbidden_words", []):
        if re.search(r"\b" + re.escape(word) + r"\b", sentence, flags=re.IGNORECASE):
            return False
    letter = kw.get("keywords:letter_frequency")
    if (
        letter
        and letter["let_relation"] in ("less than", "at most", "exactly")
        and letter["letter"] in sentence.lower()
    ):
        return False
    freq = kw.get("keywords:frequency")
    if freq and freq["keyword"].lower() in sentence.lower():
        return False
    return "," not in sentence


def _wrap_tail(sentence: str) -> str:
    """``"a b c d."`` -> ``"a b *c d*."``: a highlight that never starts a line."""
    words = sentence.rstrip(".").split()
    if len(words) < 3:
        return f"Note *{sentence.rstrip('.')}*."
    return " ".join(words[:-2]) + " *" + " ".join(words[-2:]) + "*."


def _build(task: IFTask, n: int, extra_letters: int, rotation: int) -> str:
    kw = _kwargs_by_id(task)
    lang = (kw.get("language:response_language") or {}).get("language", "en")
    topic = _topic(task)
    if lang in _FOREIGN:
        bank = list(_FOREIGN[lang])
    else:
        topical = [s.replace("{T}", topic[:1].upper() + topic[1:]).replace("{t}", topic) for s in _EN_TOPICAL]
        bank = topical + list(_EN_GENERIC)
    bank = [s for s in bank if _allowed(s, kw)] or ["Steady work pays off."]
    bank = bank[rotation % len(bank) :] + bank[: rotation % len(bank)]

    def take(count: int, offset: int = 0) -> list[str]:
        return [bank[(offset + i) % len(bank)] for i in range(count)]

    if "detectable_format:constrained_response" in kw:
        options = list(
            kw["detectable_format:constrained_response"].get("options") or CONSTRAINED_RESPONSE_OPTIONS
        )
        return " ".join([options[0]] + take(max(n - 1, 0)))

    # blocks and their sentences
    if "length_constraints:number_paragraphs" in kw:
        k = kw["length_constraints:number_paragraphs"]["num_paragraphs"]
    elif "length_constraints:nth_paragraph_first_word" in kw:
        k = kw["length_constraints:nth_paragraph_first_word"]["num_paragraphs"]
    elif "detectable_format:multiple_sections" in kw:
        k = kw["detectable_format:multiple_sections"]["num_sections"]
    elif "combination:two_responses" in kw:
        k = 2
    else:
        k = 1
    n = max(n, k)
    sentences = take(n)
    blocks: list[list[str]] = [[] for _ in range(k)]
    for i, s in enumerate(sentences):
        blocks[i * k // n].append(s)
    if "combination:two_responses" in kw:
        blocks[1] = take(len(blocks[1]), offset=len(blocks[0]) + 1)
        if " ".join(blocks[1]) == " ".join(blocks[0]):
            blocks[1].append("That is another way to see it.")

    extras: list[str] = []
    if "keywords:existence" in kw:
        words = kw["keywords:existence"]["keywords"]
        extras.append("This note touches on " + " and ".join(words) + ".")
    freq = kw.get("keywords:frequency")
    if freq and freq["relation"] in ("at least", "exactly", "around", "at most"):
        target = freq["frequency"]
        extras.extend(
            f"Think about {freq['keyword']} once more." if i else f"Consider {freq['keyword']}."
            for i in range(target)
        )
    if "detectable_content:number_placeholders" in kw:
        count = kw["detectable_content:number_placeholders"]["num_placeholders"]
        holders = [_PLACEHOLDERS[i % len(_PLACEHOLDERS)] for i in range(count)]
        first = blocks[0][0].rstrip(".")
        blocks[0][0] = first + " " + " ".join(holders) + "."
    if "detectable_format:number_highlighted_sections" in kw:
        count = kw["detectable_format:number_highlighted_sections"]["num_highlights"]
        extras.extend(_wrap_tail(s) for s in take(count, offset=n))
    cap = kw.get("change_case:capital_word_frequency")
    if cap and cap["capital_relation"] in ("at least", "exactly", "around", "at most"):
        count = cap["capital_frequency"]
        words = [_CAPS[i % len(_CAPS)] for i in range(count)]
        extras.append("These words stand out: " + " ".join(words) + ".")
    if extra_letters > 0:
        letter = kw["keywords:letter_frequency"]["letter"]
        pool = [w for w in _LETTER_WORDS if letter in w] or [letter * 3]
        chosen = [pool[i % len(pool)] for i in range(extra_letters)]
        extras.append("Related words: " + " ".join(chosen) + ".")
    if lang == "en":  # a nod to soft constraints the judge scores (kept only when the hard checks still pass)
        extras.extend(_SOFT_SENTENCES[s] for s in task.soft_constraints if s in _SOFT_SENTENCES)
    blocks[0] = blocks[0][:1] + extras + blocks[0][1:]

    bullets: list[str] = []
    if "detectable_format:number_bullet_lists" in kw:
        count = kw["detectable_format:number_bullet_lists"]["num_bullets"]
        bullets = ["* " + s for s in take(count, offset=n + 5)]

    nth = kw.get("length_constraints:nth_paragraph_first_word")
    texts = [" ".join(b) for b in blocks]
    if bullets:
        texts[0] = texts[0] + "\n" + "\n".join(bullets)
    if nth:
        i = nth["nth_paragraph"] - 1
        first = nth["first_word"]
        texts[i] = first[:1].upper() + first[1:] + " " + texts[i][:1].lower() + texts[i][1:]

    title = None
    if "detectable_format:title" in kw:
        name = _TITLE_WORD.get(lang, "Notes")
        title = f"<<{name} {topic.title()}>>" if lang == "en" else f"<<{name}>>"
        if nth and nth["nth_paragraph"] == 1:
            head, _, rest = texts[0].partition(". ")
            texts[0] = head + ".\n" + title + ("\n" + rest if rest else "")
            title = None

    if "length_constraints:number_paragraphs" in kw:
        divider = (
            "\n* * *\n"
            if str(kw["length_constraints:number_paragraphs"].get("divider")) == "* * *"
            else "\n***\n"
        )
        body = divider.join(texts)
    elif nth:
        body = "\n\n".join(texts)
    elif "detectable_format:multiple_sections" in kw:
        splitter = kw["detectable_format:multiple_sections"]["section_spliter"]
        body = "\n\n".join(f"{splitter} {i + 1}\n{t}" for i, t in enumerate(texts))
    elif "combination:two_responses" in kw:
        body = texts[0] + "\n******\n" + texts[1]
    else:
        body = texts[0]
    if title:
        body = title + "\n" + body
    if "combination:repeat_prompt" in kw:
        body = kw["combination:repeat_prompt"]["prompt_to_repeat"] + "\n" + body
    if "detectable_content:postscript" in kw:
        marker = kw["detectable_content:postscript"]["postscript_marker"]
        sep = "\n" if nth else "\n\n"
        body = body + sep + marker + " " + take(1, offset=n + 11)[0]
    if "startend:end_checker" in kw:
        body = body + " " + kw["startend:end_checker"]["end_phrase"]
    if "change_case:english_capital" in kw:
        body = body.upper()
    if "change_case:english_lowercase" in kw:
        body = body.lower()
    if "startend:quotation" in kw:
        body = '"' + body + '"'
    if "detectable_format:json_format" in kw:
        body = json.dumps({"response": body}, ensure_ascii=False)
    return body


def _passes(task: IFTask, response: str) -> tuple[int, list[str]]:
    verdicts = verify_response(task.instruction_id_list, task.kwargs, response, task.prompt)
    failed = [v.instruction_id for v in verdicts if not v.strict]
    return len(verdicts) - len(failed), failed


def write_response(task: IFTask, max_sentences: int = 60) -> str:
    """A response meeting every hard constraint of ``task`` (its best attempt when none is found)."""
    rotation = zlib.crc32(task.key.encode())
    letter = _kwargs_by_id(task).get("keywords:letter_frequency")
    best, best_passed = "", -1
    for n in range(1, max_sentences + 1):
        response = _build(task, n, 0, rotation)
        if letter and letter["let_relation"] in ("at least", "exactly", "around", "at most"):
            deficit = letter["let_frequency"] - response.lower().count(letter["letter"])
            if deficit > 0:
                response = _build(task, n, deficit, rotation)
        passed, failed = _passes(task, response)
        if not failed:
            return response
        if passed > best_passed:
            best, best_passed = response, passed
    return best


class InstructionFollowingExpert:
    """Expert interface of the project (``cls(env)``): answers each prompt with :func:`write_response`."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def reset(self, observation: str, info: dict) -> None:
        pass

    def act(self, observation: str, info: dict) -> tuple[str, str | None]:
        task = self.env.unwrapped.task
        return write_response(task), "I check each constraint of the request before answering."
