"""Instruction-following tasks: the task record, a generator with seen / held-out splits, and file loaders.

A task is IFEval's record (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``) plus optional *soft*
constraints (judge-scored, see :mod:`.judge`) and its split.

Generator (:class:`TaskGenerator`): a request (template x topic) followed by 1..``max_constraints``
instruction sentences, drawn without conflicts (IFEval's conflict table plus a few pairs our oracle cannot
satisfy together). Splits, all deterministic in ``seed``:

* ``train``: topics of the train half; only *seen* instruction types;
* ``test_seen``: topics of the held-out half; only seen types (new prompts, known instructions);
* ``test_unseen``: held-out topics; every task has at least one *held-out type* (the paper's "unseen
  instructions"), which never occur in ``train`` / ``test_seen``.

Loaders: :func:`load_ifeval_jsonl` reads IFEval's ``input_data.jsonl``; :func:`load_rlvr_ifeval` reads
RLVR-IFeval-style rows (``messages`` + ``ground_truth`` with open-instruct's ``func_name``), mapped onto the
IFEval instruction ids (see :data:`RLVR_FUNC_TO_IFEVAL`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prism_lit.envs.instruction_following import SPLITS
from prism_lit.envs.instruction_following.verifiers import (
    INSTRUCTION_IDS,
    describe_instruction,
    normalize_kwargs,
)

__all__ = [
    "DEFAULT_HELD_OUT_TYPES",
    "RLVR_FUNC_TO_IFEVAL",
    "SPLITS",
    "IFTask",
    "TaskGenerator",
    "conflicts",
    "load_ifeval_jsonl",
    "load_rlvr_ifeval",
    "load_tasks",
    "save_ifeval_jsonl",
]


# instruction types kept out of train / test_seen by default: one per family where the family has others
DEFAULT_HELD_OUT_TYPES: tuple[str, ...] = (
    "detectable_format:title",
    "startend:quotation",
    "change_case:english_capital",
    "keywords:letter_frequency",
    "detectable_content:postscript",
)


@dataclass
class IFTask:
    """One prompt with its constraints. ``soft_constraints`` are ids from :data:`.judge.SOFT_CONSTRAINTS`."""

    key: str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]
    soft_constraints: list[str] = field(default_factory=list)
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.instruction_id_list) != len(self.kwargs):
            raise ValueError(
                f"task {self.key!r}: {len(self.instruction_id_list)} instruction ids but "
                f"{len(self.kwargs)} kwargs"
            )

    @property
    def constraint_ids(self) -> list[str]:
        return list(self.instruction_id_list) + list(self.soft_constraints)

    def to_ifeval(self) -> dict[str, Any]:
        """The IFEval ``input_data.jsonl`` row of this task (soft constraints are not IFEval's)."""
        return {
            "key": self.key,
            "prompt": self.prompt,
            "instruction_id_list": list(self.instruction_id_list),
            "kwargs": [dict(k) for k in self.kwargs],
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ conflicts
def _build_conflicts() -> dict[str, set[str]]:
    every = set(INSTRUCTION_IDS)
    table: dict[str, set[str]] = {i: {i} for i in INSTRUCTION_IDS}
    pairs = [
        # IFEval's conflict table
        (
            "language:response_language",
            {
                "detectable_format:multiple_sections",
                "keywords:existence",
                "keywords:frequency",
                "keywords:forbidden_words",
                "startend:end_checker",
                "change_case:english_capital",
                "change_case:english_lowercase",
            },
        ),
        (
            "length_constraints:number_paragraphs",
            {"length_constraints:nth_paragraph_first_word", "length_constraints:number_sentences"},
        ),
        ("detectable_format:constrained_response", every),
        ("detectable_format:multiple_sections", {"detectable_format:number_highlighted_sections"}),
        ("detectable_format:json_format", every - {"keywords:forbidden_words", "keywords:existence"}),
        (
            "combination:two_responses",
            every
            - {
                "keywords:forbidden_words",
                "keywords:existence",
                "language:response_language",
                "detectable_format:title",
                "punctuation:no_comma",
            },
        ),
        (
            "combination:repeat_prompt",
            every - {"keywords:existence", "detectable_format:title", "punctuation:no_comma"},
        ),
        (
            "change_case:capital_word_frequency",
            {"change_case:english_lowercase", "change_case:english_capital"},
        ),
        ("change_case:english_lowercase", {"change_case:english_capital"}),
        ("startend:quotation", {"detectable_format:title"}),
        # ours: pairs the generator avoids because no simple response satisfies both
        (
            "detectable_format:multiple_sections",
            {
                "change_case:english_lowercase",
                "change_case:english_capital",
                "length_constraints:nth_paragraph_first_word",
                "length_constraints:number_paragraphs",
            },
        ),
        ("length_constraints:nth_paragraph_first_word", {"length_constraints:number_sentences"}),
        ("keywords:letter_frequency", {"language:response_language"}),
        ("combination:repeat_prompt", {"punctuation:no_comma"}),  # the repeated request often has commas
    ]
    for a, others in pairs:
        for b in others:
            table[a].add(b)
            table[b].add(a)
    return table


_CONFLICTS = _build_conflicts()


def conflicts(a: str, b: str) -> bool:
    """Whether instruction types ``a`` and ``b`` may not appear in one task."""
    return b in _CONFLICTS.get(a, set())


# ------------------------------------------------------------------------------------------ the content
TEMPLATES: tuple[str, ...] = (
    "Write a short essay about {topic}.",
    "Write a blog post about {topic}.",
    "Explain {topic} to a high school student.",
    "Write a letter to a friend about {topic}.",
    "Give practical advice to someone who is new to {topic}.",
    "Describe why {topic} matters to ordinary people.",
    "Write a short story in which {topic} plays a part.",
    "Write a speech about {topic} for a school assembly.",
    "Write an email to your team about {topic}.",
    "Summarize the main arguments for and against {topic}.",
    "Write a product description for a new app about {topic}.",
    "Write a newsletter introduction about {topic}.",
)

TOPICS: tuple[str, ...] = (
    "urban gardening",
    "learning a second language",
    "remote work",
    "honey bees",
    "the water cycle",
    "public libraries",
    "electric cars",
    "volcanoes",
    "chess",
    "healthy breakfasts",
    "recycling",
    "jazz music",
    "rainforests",
    "time management",
    "coffee",
    "the printing press",
    "marathon training",
    "solar power",
    "board games",
    "photography",
    "ocean tides",
    "saving money",
    "dinosaurs",
    "city parks",
    "baking bread",
    "mountain hiking",
    "sleep",
    "ancient Rome",
    "video games",
    "public transport",
    # the held-out half (test splits)
    "museums",
    "green tea",
    "space telescopes",
    "bird migration",
    "volunteering",
    "street food",
    "wind turbines",
    "handwriting",
    "coral reefs",
    "podcasts",
)
_TRAIN_TOPICS = TOPICS[:30]
_TEST_TOPICS = TOPICS[30:]

KEYWORDS: tuple[str, ...] = (
    "balance",
    "community",
    "future",
    "journey",
    "patience",
    "season",
    "curiosity",
    "habit",
    "budget",
    "window",
    "garden",
    "signal",
    "harvest",
    "village",
    "lantern",
    "compass",
    "bridge",
    "rhythm",
    "canvas",
    "anchor",
)
FORBIDDEN: tuple[str, ...] = (
    "very",
    "really",
    "thing",
    "stuff",
    "basically",
    "literally",
    "amazing",
    "awesome",
    "nice",
    "bad",
    "good",
    "just",
    "quite",
    "simply",
)
FIRST_WORDS: tuple[str, ...] = ("today", "first", "finally", "overall", "however", "imagine", "consider")
END_PHRASES: tuple[str, ...] = (
    "Any other questions?",
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "That is all for now.",
    "Peace!",
)
GENERATOR_LANGUAGES: tuple[str, ...] = ("es", "fr", "de", "it", "pt")


def _sample_kwargs(instruction_id: str, rng: random.Random) -> dict[str, Any]:
    """Parameters for one instruction type, in ranges a careful response can meet."""
    rel = rng.choice(("less than", "at least"))
    if instruction_id == "keywords:existence":
        return {"keywords": rng.sample(KEYWORDS, 2)}
    if instruction_id == "keywords:frequency":
        return {
            "keyword": rng.choice(KEYWORDS),
            "relation": rel,
            "frequency": rng.randint(2, 4) if rel == "less than" else rng.randint(1, 4),
        }
    if instruction_id == "keywords:forbidden_words":
        return {"forbidden_words": rng.sample(FORBIDDEN, rng.randint(2, 4))}
    if instruction_id == "keywords:letter_frequency":
        if rel == "less than":
            return {"letter": rng.choice("qzxj"), "let_relation": rel, "let_frequency": rng.randint(2, 6)}
        return {"letter": rng.choice("aeiostnrlmd"), "let_relation": rel, "let_frequency": rng.randint(3, 12)}
    if instruction_id == "language:response_language":
        return {"language": rng.choice(GENERATOR_LANGUAGES)}
    if instruction_id == "length_constraints:number_sentences":
        return {
            "relation": rel,
            "num_sentences": rng.randint(12, 24) if rel == "less than" else rng.randint(2, 10),
        }
    if instruction_id == "length_constraints:number_paragraphs":
        return {"num_paragraphs": rng.randint(2, 5)}
    if instruction_id == "length_constraints:number_words":
        return {
            "relation": rel,
            "num_words": rng.randint(150, 400) if rel == "less than" else rng.randint(30, 250),
        }
    if instruction_id == "length_constraints:nth_paragraph_first_word":
        n = rng.randint(2, 4)
        return {
            "num_paragraphs": n,
            "nth_paragraph": rng.randint(1, n),
            "first_word": rng.choice(FIRST_WORDS),
        }
    if instruction_id == "detectable_content:number_placeholders":
        return {"num_placeholders": rng.randint(1, 4)}
    if instruction_id == "detectable_content:postscript":
        return {"postscript_marker": rng.choice(("P.S.", "P.P.S"))}
    if instruction_id == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.randint(1, 5)}
    if instruction_id == "detectable_format:number_highlighted_sections":
        return {"num_highlights": rng.randint(1, 4)}
    if instruction_id == "detectable_format:multiple_sections":
        return {"section_spliter": rng.choice(("Section", "SECTION")), "num_sections": rng.randint(2, 5)}
    if instruction_id == "startend:end_checker":
        return {"end_phrase": rng.choice(END_PHRASES)}
    if instruction_id == "change_case:capital_word_frequency":
        return {
            "capital_relation": rel,
            "capital_frequency": rng.randint(3, 10) if rel == "less than" else rng.randint(1, 8),
        }
    return {}  # types without arguments (repeat_prompt's prompt is filled in when the prompt is built)


class TaskGenerator:
    """Compose tasks from templates x topics x constraint sets, with seen / held-out type splits.

    Args:
        seed: generation seed (a task is a pure function of ``(seed, split, index)``).
        held_out_types: instruction types reserved for ``test_unseen``.
        max_constraints: at most this many hard instructions per task (at least 1).
        soft_fraction: share of tasks that also carry one soft (judge-scored) constraint.
        types: the instruction types to draw from (default: all 25 IFEval types).
        ensure_feasible: redraw a constraint set until the oracle (:mod:`.expert`) satisfies it, so every
            task is solvable (``False`` keeps the first draw).
    """

    def __init__(
        self,
        seed: int = 0,
        held_out_types: Sequence[str] = DEFAULT_HELD_OUT_TYPES,
        max_constraints: int = 3,
        soft_fraction: float = 0.0,
        types: Sequence[str] | None = None,
        ensure_feasible: bool = True,
    ) -> None:
        pool = list(types) if types is not None else list(INSTRUCTION_IDS)
        unknown = [t for t in list(pool) + list(held_out_types) if t not in INSTRUCTION_IDS]
        if unknown:
            raise ValueError(f"TaskGenerator: unknown instruction types {unknown}")
        if max_constraints < 1:
            raise ValueError(f"TaskGenerator.max_constraints must be >= 1, got {max_constraints}")
        if not 0.0 <= soft_fraction <= 1.0:
            raise ValueError(f"TaskGenerator.soft_fraction must be in [0, 1], got {soft_fraction}")
        self.seed = seed
        self.held_out_types = tuple(t for t in held_out_types if t in pool)
        self.seen_types = tuple(t for t in pool if t not in self.held_out_types)
        if not self.seen_types:
            raise ValueError("TaskGenerator: every type is held out; nothing is left for train")
        self.max_constraints = max_constraints
        self.soft_fraction = soft_fraction
        self.ensure_feasible = ensure_feasible

    def task(self, split: str, index: int) -> IFTask:
        """Task ``index`` of ``split`` (deterministic)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split == "test_unseen" and not self.held_out_types:
            raise ValueError("split 'test_unseen' needs held_out_types")
        rng = random.Random(f"{self.seed}/{split}/{index}")
        topics = _TRAIN_TOPICS if split == "train" else _TEST_TOPICS
        request = rng.choice(TEMPLATES).format(topic=rng.choice(topics))
        task = None
        for attempt in range(40):
            ids = self._draw_types(split, rng)
            kwargs = [_sample_kwargs(i, rng) for i in ids]
            soft: list[str] = []
            if self.soft_fraction > 0 and rng.random() < self.soft_fraction:
                from prism_lit.envs.instruction_following.judge import SOFT_CONSTRAINTS

                soft = [rng.choice(sorted(SOFT_CONSTRAINTS))]
            task = compose_task(
                f"ifgen/{split}/{index}",
                request,
                ids,
                kwargs,
                soft,
                split=split,
                meta={"template_request": request, "attempt": attempt, "source": "generator"},
            )
            if not self.ensure_feasible or _oracle_solves(task):
                break
        assert task is not None
        return task

    def tasks(self, split: str, n: int, start: int = 0) -> list[IFTask]:
        return [self.task(split, i) for i in range(start, start + n)]

    def _draw_types(self, split: str, rng: random.Random) -> list[str]:
        k = rng.randint(1, self.max_constraints)
        chosen: list[str] = []
        if split == "test_unseen":
            chosen.append(rng.choice(self.held_out_types))
            pool = list(self.seen_types) + list(self.held_out_types)
        else:
            pool = list(self.seen_types)
        candidates = [t for t in pool if t not in chosen]
        rng.shuffle(candidates)
        for t in candidates:
            if len(chosen) >= k:
                break
            if not any(conflicts(t, c) for c in chosen):
                chosen.append(t)
        if not chosen:
            chosen.append(rng.choice(pool))
        return chosen


def compose_task(
    key: str,
    request: str,
    instruction_ids: Sequence[str],
    kwargs: Sequence[Mapping[str, Any]],
    soft_constraints: Sequence[str] = (),
    *,
    split: str = "train",
    meta: Mapping[str, Any] | None = None,
) -> IFTask:
    """Build the prompt: the request, then each instruction's sentence (``repeat_prompt`` last)."""
    from prism_lit.envs.instruction_following.judge import SOFT_CONSTRAINTS

    order = sorted(
        range(len(instruction_ids)), key=lambda i: instruction_ids[i] == "combination:repeat_prompt"
    )
    ids = [instruction_ids[i] for i in order]
    kws = [dict(kwargs[i]) for i in order]
    parts = [request]
    for i, kw in zip(ids, kws):
        parts.append(describe_instruction(i, kw))
    for s in soft_constraints:
        parts.append(SOFT_CONSTRAINTS[s].instruction)
    prompt = " ".join(parts) if not any("\n" in p for p in parts) else "\n".join(parts)
    # repeat_prompt must repeat exactly what precedes its instruction in the final prompt text
    if "combination:repeat_prompt" in ids:
        j = ids.index("combination:repeat_prompt")
        sentence = describe_instruction(ids[j], kws[j])
        kws[j]["prompt_to_repeat"] = prompt[: prompt.index(sentence)].strip()
    return IFTask(key, prompt, ids, kws, list(soft_constraints), split, dict(meta or {}))


def _oracle_solves(task: IFTask) -> bool:
    from prism_lit.envs.instruction_following.expert import write_response
    from prism_lit.envs.instruction_following.verifiers import verify_response

    response = write_response(task)
    return all(
        v.strict for v in verify_response(task.instruction_id_list, task.kwargs, response, task.prompt)
    )


# ------------------------------------------------------------------------------------------ loaders
def _read_rows(path: str | Path) -> Iterable[dict[str, Any]]:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        yield from (data if isinstance(data, list) else data.get("data", []))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from exc


def load_ifeval_jsonl(path: str | Path, *, split: str = "test", on_unknown: str = "error") -> list[IFTask]:
    """Tasks from IFEval's ``input_data.jsonl`` (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``).

    ``on_unknown``: ``"error"`` raises on an instruction id without a verifier, ``"skip"`` drops that task.
    """
    tasks = []
    for row in _read_rows(path):
        ids = list(row["instruction_id_list"])
        kwargs = [dict(k or {}) for k in row.get("kwargs") or [{} for _ in ids]]
        try:
            kwargs = [normalize_kwargs(i, k, row["prompt"]) for i, k in zip(ids, kwargs)]
        except (KeyError, ValueError) as exc:
            if on_unknown == "skip":
                continue
            raise ValueError(f"{path}: task {row.get('key')!r}: {exc}") from exc
        key = str(row.get("key", len(tasks)))
        tasks.append(
            IFTask(
                key if "/" in key else f"ifeval/{key}",
                row["prompt"],
                ids,
                kwargs,
                [],
                split,
                {"source": str(path)},
            )
        )
    return tasks


# open-instruct's func_name -> (IFEval instruction id, {their argument: IFEval argument}, fixed arguments)
RLVR_FUNC_TO_IFEVAL: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "verify_keywords": ("keywords:existence", {"keyword_list": "keywords"}, {}),
    "verify_keyword_frequency": (
        "keywords:frequency",
        {"word": "keyword", "N": "frequency"},
        {"relation": "exactly"},
    ),
    "validate_forbidden_words": ("keywords:forbidden_words", {"forbidden_words": "forbidden_words"}, {}),
    "verify_letter_frequency": (
        "keywords:letter_frequency",
        {"letter": "letter", "N": "let_frequency"},
        {"let_relation": "exactly"},
    ),
    "validate_response_language": ("language:response_language", {"language": "language"}, {}),
    "verify_paragraph_count": (
        "length_constraints:number_paragraphs",
        {"N": "num_paragraphs"},
        {"divider": "* * *"},
    ),
    "validate_word_constraint": (
        "length_constraints:number_words",
        {"N": "num_words", "quantifier": "relation"},
        {},
    ),
    "verify_sentence_constraint": (
        "length_constraints:number_sentences",
        {"N": "num_sentences", "quantifier": "relation"},
        {},
    ),
    "validate_paragraphs": (
        "length_constraints:nth_paragraph_first_word",
        {"N": "num_paragraphs", "i": "nth_paragraph", "first_word": "first_word"},
        {},
    ),
    "verify_postscript": ("detectable_content:postscript", {"postscript_marker": "postscript_marker"}, {}),
    "validate_placeholders": ("detectable_content:number_placeholders", {"N": "num_placeholders"}, {}),
    "verify_bullet_points": ("detectable_format:number_bullet_lists", {"N": "num_bullets"}, {}),
    "validate_title": ("detectable_format:title", {}, {}),
    "validate_choice": ("detectable_format:constrained_response", {"options": "options"}, {}),
    "validate_highlighted_sections": (
        "detectable_format:number_highlighted_sections",
        {"N": "num_highlights"},
        {},
    ),
    "validate_sections": (
        "detectable_format:multiple_sections",
        {"N": "num_sections", "section_splitter": "section_spliter"},
        {},
    ),
    "validate_json_format": ("detectable_format:json_format", {}, {}),
    "validate_repeat_prompt": ("combination:repeat_prompt", {"original_prompt": "prompt_to_repeat"}, {}),
    "validate_two_responses": ("combination:two_responses", {}, {}),
    "validate_uppercase": ("change_case:english_capital", {}, {}),
    "validate_lowercase": ("change_case:english_lowercase", {}, {}),
    "validate_frequency_capital_words": (
        "change_case:capital_word_frequency",
        {"N": "capital_frequency", "quantifier": "capital_relation"},
        {},
    ),
    "validate_end": ("startend:end_checker", {"end_phrase": "end_phrase"}, {}),
    "validate_quotation": ("startend:quotation", {}, {}),
    "validate_no_commas": ("punctuation:no_comma", {}, {}),
}


def _rlvr_constraints(ground_truth: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(ground_truth, str):
        ground_truth = json.loads(ground_truth)
    items = ground_truth if isinstance(ground_truth, list) else [ground_truth]
    out: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if isinstance(item, str):
            item = json.loads(item)
        if "instruction_id" in item:  # IFEval-style ground truth (lists of ids and kwargs)
            ids = (
                item["instruction_id"]
                if isinstance(item["instruction_id"], list)
                else [item["instruction_id"]]
            )
            kws = item.get("kwargs") or [{} for _ in ids]
            kws = kws if isinstance(kws, list) else [kws]
            out.extend((i, dict(k or {})) for i, k in zip(ids, kws))
            continue
        func = item.get("func_name")
        if func not in RLVR_FUNC_TO_IFEVAL:
            raise KeyError(f"unknown RLVR func_name {func!r}")
        instruction_id, names, fixed = RLVR_FUNC_TO_IFEVAL[func]
        kw = {ours: item[theirs] for theirs, ours in names.items() if item.get(theirs) is not None}
        kw.update(fixed)
        out.append((instruction_id, kw))
    return out


def load_rlvr_ifeval(path: str | Path, *, split: str = "train", on_unknown: str = "error") -> list[IFTask]:
    """Tasks from RLVR-IFeval-style rows: the prompt is the last user message of ``messages`` (or ``prompt``),
    the constraints are ``ground_truth`` (open-instruct ``func_name`` JSON, or IFEval-style lists)."""
    tasks = []
    for n, row in enumerate(_read_rows(path)):
        messages = row.get("messages") or []
        users = [m["content"] for m in messages if m.get("role") == "user"]
        prompt = users[-1] if users else row.get("prompt")
        if prompt is None:
            raise ValueError(f"{path}: row {n} has neither a user message nor a prompt")
        try:
            pairs = _rlvr_constraints(row["ground_truth"])
            ids = [i for i, _ in pairs]
            kwargs = [normalize_kwargs(i, k, prompt) for i, k in pairs]
        except (KeyError, ValueError) as exc:
            if on_unknown == "skip":
                continue
            raise ValueError(f"{path}: row {n}: {exc}") from exc
        key = str(row.get("key", row.get("id", n)))
        meta = {"source": str(path), "constraint_type": row.get("constraint_type")}
        tasks.append(IFTask(f"rlvr/{key}", prompt, ids, kwargs, [], split, meta))
    return tasks


def save_ifeval_jsonl(tasks: Sequence[IFTask], path: str | Path) -> Path:
    """Write tasks as IFEval ``input_data.jsonl`` rows (e.g. a generated split, for IFEval's own tooling).

    Soft constraints are not IFEval's and are left out; ``load_ifeval_jsonl`` reads the file back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for task in tasks:
            row = task.to_ifeval()
            row["key"] = task.key
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def load_tasks(path: str | Path, data_format: str = "auto", *, split: str = "train") -> list[IFTask]:
    """Load ``path`` as ``"ifeval"`` or ``"rlvr"`` rows; ``"auto"`` looks at the first row's fields."""
    if data_format == "auto":
        first = next(iter(_read_rows(path)), None)
        if first is None:
            return []
        data_format = "ifeval" if "instruction_id_list" in first else "rlvr"
    if data_format == "ifeval":
        return load_ifeval_jsonl(path, split=split)
    if data_format == "rlvr":
        return load_rlvr_ifeval(path, split=split)
    raise ValueError(f"unknown data_format {data_format!r}; expected 'auto', 'ifeval' or 'rlvr'")
