"""Text utilities the verifiers need, with no downloads: sentence splitting, word counts, language detection.

IFEval's reference code counts sentences with nltk's punkt model (a pickle fetched from nltk's data server)
and tokenizes words for the capital-word count with ``nltk.word_tokenize`` (punkt again). Neither is
available offline and loading a pickle is not acceptable here, so this module has its own rule-based
equivalents, written for this project:

* :func:`split_sentences` cuts after ``.``, ``?`` or ``!`` (runs of them, optionally followed by closing
  quotes/brackets) when whitespace follows, except after known abbreviations (``Dr.``, ``e.g.``, ...),
  single-letter initials (``J. Smith``), list numbers at the start of a line (``1.``) and an ellipsis
  followed by a lowercase word. Like punkt, a bare line break does not end a sentence.
* :func:`count_words` is exactly IFEval's (``\\w+`` tokens, as nltk's ``RegexpTokenizer(r"\\w+")``).
* :func:`word_tokens` approximates ``nltk.word_tokenize`` for the all-capital word count: punctuation is
  split off, hyphenated words stay whole, and English contractions split the way the Treebank tokenizer
  splits them (``DON'T`` -> ``DO`` ``N'T``).
* :func:`detect_language` uses ``langdetect`` (the detector IFEval uses; it ships its language profiles in
  the package, so it works offline), seeded for determinism. Without it installed, a small script- and
  stopword-based detector stands in (documented as less accurate).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["count_sentences", "count_words", "detect_language", "split_sentences", "word_tokens"]

_WORD_RE = re.compile(r"\w+")

ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al approx dept est fig figs inc ltd co corp no nos vol
    vols jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun gen col lt sgt capt
    rev hon gov pres sen rep ph.d u.s u.k a.m p.m""".split()
)

# a sentence end: terminal punctuation, optional closing quotes/brackets, then whitespace or the end
_END_RE = re.compile(r"([.?!]+)([\"'\u201d\u2019)\]]*)(?=\s|$)")
_TOKEN_BEFORE_RE = re.compile(r"(\S+)$")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (see the module docstring for the rules)."""
    text = str(text)
    sentences: list[str] = []
    start = 0
    for match in _END_RE.finditer(text):
        end = match.end()
        punct = match.group(1)
        before = text[start : match.start()]
        token_match = _TOKEN_BEFORE_RE.search(before)
        token = token_match.group(1) if token_match else ""
        following = text[end:].lstrip()
        if punct == ".":
            bare = token.lstrip("\"'(\u201c\u2018[").lower()
            if bare in ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()):
                continue
            if re.fullmatch(r"[a-z](\.[a-z])+", bare):  # u.s. / e.g. written with internal dots
                continue
            if bare.isdigit() and _at_line_start(text, start + token_match.start() if token_match else start):
                continue  # "1. First item": a list number, not a sentence end
        elif set(punct) == {"."} and len(punct) >= 3 and following[:1].islower():
            continue  # "wait... then" goes on
        sentence = text[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = end
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _at_line_start(text: str, index: int) -> bool:
    line_start = text.rfind("\n", 0, index) + 1
    return not text[line_start:index].strip()


def count_sentences(text: str) -> int:
    """Number of sentences in ``text`` (0 for blank text)."""
    return len(split_sentences(text))


def count_words(text: str) -> int:
    """IFEval's word count: the number of ``\\w+`` tokens."""
    return len(_WORD_RE.findall(str(text)))


_CHUNK_RE = re.compile(r"\w+(?:[-'\u2019.]\w+)*\.?|[^\w\s]")
_CONTRACTION_RE = re.compile(r"(?i)^(\w+?)(n['\u2019]t|['\u2019](?:s|re|ve|ll|d|m))$")


def word_tokens(text: str) -> list[str]:
    """Tokens approximating ``nltk.word_tokenize`` (punctuation split off, contractions split)."""
    tokens: list[str] = []
    for chunk in _CHUNK_RE.findall(str(text)):
        if chunk.endswith(".") and len(chunk) > 1 and "." not in chunk[:-1]:
            chunk_body = chunk[:-1]
            tokens.extend(_split_contraction(chunk_body))
            tokens.append(".")
            continue
        tokens.extend(_split_contraction(chunk))
    return tokens


def _split_contraction(token: str) -> list[str]:
    match = _CONTRACTION_RE.match(token)
    if match and match.group(1):
        return [match.group(1), match.group(2)]
    return [token]


# ------------------------------------------------------------------------------------------- language
class LanguageNotDetected(ValueError):
    """The text has no features to detect a language from (IFEval then counts the instruction as followed)."""


@lru_cache(maxsize=1)
def _langdetect():
    try:
        import langdetect
        from langdetect import DetectorFactory
    except (
        ImportError
    ):  # pragma: no cover - langdetect is a dependency; the fallback is for stripped installs
        return None
    DetectorFactory.seed = 0  # langdetect is random by default; seeded, the same text gets the same answer
    return langdetect


def detect_language(text: str) -> str:
    """ISO 639-1 code of ``text``'s language; :class:`LanguageNotDetected` when there is nothing to read."""
    module = _langdetect()
    if module is not None:
        try:
            return module.detect(str(text))
        except module.LangDetectException as exc:
            raise LanguageNotDetected(str(exc)) from exc
    return _fallback_detect(str(text))


_SCRIPT_LANG = (
    ("HIRAGANA", "ja"),
    ("KATAKANA", "ja"),
    ("HANGUL", "ko"),
    ("CJK", "zh-cn"),
    ("THAI", "th"),
    ("HEBREW", "he"),
    ("ARABIC", "ar"),
    ("DEVANAGARI", "hi"),
    ("BENGALI", "bn"),
    ("TAMIL", "ta"),
    ("TELUGU", "te"),
    ("KANNADA", "kn"),
    ("MALAYALAM", "ml"),
    ("GUJARATI", "gu"),
    ("GURMUKHI", "pa"),
    ("CYRILLIC", "ru"),
    ("GREEK", "el"),
)
_STOPWORDS = {
    "en": "the and is are of to in that it for with as on this be was have not you".split(),
    "es": "el la los las de que y en un una es por con para no se del".split(),
    "pt": "o a os as de que e em um uma é não para com do da se".split(),
    "fr": "le la les de des et est un une que en dans pour pas sur du au".split(),
    "de": "der die das und ist nicht ein eine zu den mit von für auf ich sie".split(),
    "it": "il lo la gli le di che e è un una per non con del della".split(),
    "pl": "i w nie na się z jest to że do jak co ale".split(),
    "fi": "ja on ei se että hän oli ovat kun mutta myös tämä".split(),
    "sw": "na ya wa kwa ni za la katika hii kama lakini".split(),
    "vi": "và là của có không được cho những một các này".split(),
}


def _fallback_detect(text: str) -> str:
    """Script majority, then stopword overlap for Latin script (a stand-in when langdetect is missing)."""
    counts: dict[str, int] = {}
    letters = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        name = unicodedata.name(ch, "")
        for script, lang in _SCRIPT_LANG:
            if name.startswith(script) or f" {script} " in f" {name} ":
                counts[lang] = counts.get(lang, 0) + 1
                break
    if letters == 0:
        raise LanguageNotDetected("no letters")
    if counts:
        lang, n = max(counts.items(), key=lambda kv: kv[1])
        if n * 2 > letters:
            return lang
    words = [w.lower() for w in _WORD_RE.findall(text)]
    scores = {lang: sum(w in set(stop) for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(scores.items(), key=lambda kv: kv[1])
    return best[0] if best[1] > 0 else "en"
