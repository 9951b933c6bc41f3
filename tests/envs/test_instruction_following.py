"""prism_lit/InstructionFollowing-v0: IFEval verifiers, generator splits, loaders, oracle, judge, env."""

import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import prism_lit.envs  # noqa: F401  (registers the ids)
from prism_lit.envs.instruction_following import INSTRUCTION_FOLLOWING_ID
from prism_lit.envs.instruction_following.env import InstructionFollowingEnv
from prism_lit.envs.instruction_following.expert import InstructionFollowingExpert, write_response
from prism_lit.envs.instruction_following.judge import (
    SOFT_CONSTRAINTS,
    RuleBasedJudge,
    judge_agreement,
    make_judge,
)
from prism_lit.envs.instruction_following.scoring import evaluate_responses, ifeval_scores
from prism_lit.envs.instruction_following.tasks import (
    DEFAULT_HELD_OUT_TYPES,
    SPLITS,
    IFTask,
    TaskGenerator,
    conflicts,
    load_ifeval_jsonl,
    load_rlvr_ifeval,
    load_tasks,
    save_ifeval_jsonl,
)
from prism_lit.envs.instruction_following.text import (
    count_sentences,
    count_words,
    split_sentences,
    word_tokens,
)
from prism_lit.envs.instruction_following.verifiers import (
    INSTRUCTION_IDS,
    describe_instruction,
    loose_variants,
    verify_instruction,
)

FIXTURES = Path(__file__).parent / "fixtures" / "instruction_following"

# (instruction id, kwargs, response, strict, loose): hand-written against IFEval's reference rules
CASES = [
    # keywords: plain case-insensitive regex search, no word boundary
    ("keywords:existence", {"keywords": ["apple", "river"]}, "An Apple fell into the river.", True, True),
    ("keywords:existence", {"keywords": ["apple", "river"]}, "An apple fell.", False, False),
    ("keywords:existence", {"keywords": ["cat"]}, "Concatenate the strings.", True, True),
    (
        "keywords:frequency",
        {"keyword": "data", "frequency": 3, "relation": "at least"},
        "Data, data and more DATA.",
        True,
        True,
    ),
    (
        "keywords:frequency",
        {"keyword": "data", "frequency": 3, "relation": "at least"},
        "Data and data.",
        False,
        False,
    ),
    (
        "keywords:frequency",
        {"keyword": "data", "frequency": 2, "relation": "less than"},
        "data\nData is good.",
        False,
        True,
    ),
    # forbidden words: whole words only
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "This is not a badge.", True, True),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "Nothing BAD here.", False, False),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["bad"]},
        "Bad start.\nAll fine afterwards.",
        False,
        True,
    ),
    # letters are counted case-insensitively; the kwarg letter is lowercased
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
        "Zebras zigzag.",
        True,
        True,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": "less than"},
        "Zebras zigzag.",
        False,
        False,
    ),
    (
        "keywords:letter_frequency",
        {"letter": "A", "let_frequency": 3, "let_relation": "at least"},
        "a A a",
        True,
        True,
    ),
    # response language (langdetect; nothing to detect counts as followed)
    (
        "language:response_language",
        {"language": "fr"},
        "Bonjour tout le monde. Ceci est une réponse écrite entièrement en français pour le test.",
        True,
        True,
    ),
    (
        "language:response_language",
        {"language": "fr"},
        "Hello everyone. This answer is written entirely in English for the test.",
        False,
        False,
    ),
    ("language:response_language", {"language": "de"}, "12345 !!!", True, True),
    # sentences (our punkt-free splitter)
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "One. Two! Three?",
        True,
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "Dr. Smith went home. He slept.",
        True,
        True,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "less than"},
        "Dr. Smith went home. He slept.",
        False,
        False,
    ),
    # paragraphs split by ***
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "First part.\n***\nSecond part.",
        True,
        True,
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nA\n***\nB", True, True),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "First.\n***\n***\nSecond.",
        False,
        False,
    ),
    # words are \w+ tokens
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "less than"},
        "one two three four",
        True,
        True,
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "at least"},
        "don't stop-me now",
        True,
        True,
    ),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "two words", False, False),
    # nth paragraph's first word: quotes stripped, cut at punctuation, lowercased
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        'Intro text.\n\n"However, this."',
        True,
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        "Intro.\n\nBut this.",
        False,
        False,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 1, "first_word": "so"},
        "So it begins.\n\nMiddle.",
        False,
        False,
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], see [address].",
        True,
        True,
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 3},
        "Dear [name], see [address].",
        False,
        False,
    ),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\n\nP.S. see you", True, True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\np.p.s. later", True, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body without it.", False, False),
    # bullets: lines starting with "* " (not "**") or "-"
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two\n* three", False, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 4}, "* one\n- two\n* three", False, False),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 2},
        "Here:\n* one\n* two\n* three",
        False,
        True,
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, "**bold** line\n* one", True, True),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True, True),
    ("detectable_format:constrained_response", {}, "Yes.", False, False),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "This *one* and *two*.",
        True,
        True,
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "Only *one* here.",
        False,
        False,
    ),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "**bold** text", True, True),
    # sections: the splitter is case-sensitive
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nA\nSection 2\nB",
        True,
        True,
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "Section 1\nA\nSection 2\nB",
        False,
        False,
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True, True),
    ("detectable_format:json_format", {}, 'Here: {"a": 1}', False, False),
    ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": 1}', False, True),
    ("detectable_format:title", {}, "<<My Title>>\nText", True, True),
    ("detectable_format:title", {}, "<< >> text", False, False),
    ("detectable_format:title", {}, "<<a\nb>>", False, False),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True, True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False, False),
    ("combination:two_responses", {}, "A\n******\nB\n******\nC", False, True),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem."},
        "write a poem. Roses are red.",
        True,
        True,
    ),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "Sure! Write a poem.", False, False),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem."},
        "Sure!\nWrite a poem.\nRoses.",
        False,
        True,
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        'Done. any other questions?"',
        True,
        True,
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Any other questions? Bye.",
        False,
        False,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "NASA and ESA launch.",
        True,
        True,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "NASA and ESA launch.",
        False,
        False,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "DON'T go.",
        True,
        True,
    ),
    (
        "change_case:english_capital",
        {},
        "THIS IS AN ENGLISH SENTENCE WRITTEN IN CAPITAL LETTERS.",
        True,
        True,
    ),
    ("change_case:english_capital", {}, "THIS IS Mostly CAPITAL TEXT IN ENGLISH.", False, False),
    (
        "change_case:english_lowercase",
        {},
        "this is an english sentence written in lowercase letters.",
        True,
        True,
    ),
    (
        "change_case:english_lowercase",
        {},
        "Title Line\nthis is an english sentence written in lowercase letters.",
        False,
        True,
    ),
    (
        "change_case:english_lowercase",
        {},
        "ceci est une phrase écrite en français et en minuscules.",
        False,
        False,
    ),
    ("punctuation:no_comma", {}, "No commas here.", True, True),
    ("punctuation:no_comma", {}, "One, two.", False, False),
    ("punctuation:no_comma", {}, "   ", False, False),  # an empty response never passes
    ("startend:quotation", {}, '"Quoted answer."', True, True),
    ("startend:quotation", {}, "Not quoted.", False, False),
    ("startend:quotation", {}, '"', False, False),
    ("startend:quotation", {}, '*"Quoted answer."*', False, True),  # loose strips markdown asterisks
]


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "response", "strict", "loose"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_verifier_matches_ifeval_reference(instruction_id, kwargs, response, strict, loose):
    verdict = verify_instruction(instruction_id, kwargs, response)
    assert verdict.error is None
    assert (verdict.strict, verdict.loose) == (strict, loose)


def test_every_ifeval_type_has_cases_and_a_description():
    assert len(INSTRUCTION_IDS) == 25
    covered = {c[0] for c in CASES}
    assert covered == set(INSTRUCTION_IDS)
    for instruction_id in INSTRUCTION_IDS:
        passing = [c for c in CASES if c[0] == instruction_id and c[3]]
        failing = [c for c in CASES if c[0] == instruction_id and not c[3]]
        assert passing and failing, instruction_id
        assert describe_instruction(instruction_id, passing[0][1])


def test_loose_variants_are_ifevals_eight():
    variants = loose_variants("*a*\nb\nc")
    assert variants == ["*a*\nb\nc", "a\nb\nc", "b\nc", "*a*\nb", "b", "b\nc", "a\nb", "b"]


def test_bad_kwargs_and_bad_regex_are_verdicts_not_exceptions():
    assert verify_instruction("keywords:nonexistent", {}, "x").error
    assert verify_instruction("length_constraints:number_words", {"relation": "about"}, "x").error
    assert verify_instruction("keywords:existence", {"keywords": ["(unclosed"]}, "(unclosed").strict is False


# ---------------------------------------------------------------------------------- text machinery
def test_sentence_splitter_without_downloads():
    assert split_sentences("Mr. Smith met Dr. Jones at 3.30 p.m. today. They talked!") == [
        "Mr. Smith met Dr. Jones at 3.30 p.m. today.",
        "They talked!",
    ]
    assert count_sentences('He said "Stop." Then he left.') == 2
    assert count_sentences("Wait... then go. Done") == 2
    assert count_sentences("1. First item\n2. Second item") == 1
    assert count_sentences("") == 0
    assert count_words("It's a well-known fact.") == 6
    assert word_tokens("DON'T stop-now, U.S. team.") == ["DO", "N'T", "stop-now", ",", "U.S.", "team", "."]


def test_env_package_imports_no_torch():
    code = (
        "import sys, prism_lit.envs.instruction_following.env, prism_lit.envs.instruction_following.expert;"
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


# ---------------------------------------------------------------------------------- generator
def test_generator_splits_are_disjoint_and_hold_out_types():
    gen = TaskGenerator(seed=0)
    tasks = {split: gen.tasks(split, 120) for split in SPLITS}
    prompts = {split: {t.prompt for t in ts} for split, ts in tasks.items()}
    assert not prompts["train"] & prompts["test_seen"]
    assert not prompts["train"] & prompts["test_unseen"]
    held = set(DEFAULT_HELD_OUT_TYPES)
    for split in ("train", "test_seen"):
        assert not any(held & set(t.instruction_id_list) for t in tasks[split])
    assert all(held & set(t.instruction_id_list) for t in tasks["test_unseen"])
    train_types = {i for t in tasks["train"] for i in t.instruction_id_list}
    assert train_types == set(INSTRUCTION_IDS) - held  # every seen type is trained on
    for ts in tasks.values():
        for t in ts:
            ids = t.instruction_id_list
            assert 1 <= len(ids) <= 3 and len(set(ids)) == len(ids)
            assert not any(conflicts(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :])
    # deterministic, and the seed matters
    assert TaskGenerator(seed=0).task("train", 7).prompt == tasks["train"][7].prompt
    assert [t.prompt for t in TaskGenerator(seed=1).tasks("train", 20)] != [
        t.prompt for t in tasks["train"][:20]
    ]


def test_repeat_prompt_task_repeats_exactly_its_request():
    gen = TaskGenerator(seed=0)
    found = [t for t in gen.tasks("train", 300) if "combination:repeat_prompt" in t.instruction_id_list]
    assert found
    for t in found:
        kw = t.kwargs[t.instruction_id_list.index("combination:repeat_prompt")]
        assert t.prompt.startswith(kw["prompt_to_repeat"])
        assert "First repeat the request" not in kw["prompt_to_repeat"]


# ---------------------------------------------------------------------------------- oracle
def test_expert_satisfies_every_hard_constraint_of_generated_tasks():
    gen = TaskGenerator(
        seed=3, ensure_feasible=False
    )  # raw draws: the oracle is not allowed to pick its tasks
    tasks = [t for split in SPLITS for t in gen.tasks(split, 100)]
    failed = []
    for t in tasks:
        response = write_response(t)
        verdicts = [
            verify_instruction(i, k, response, t.prompt) for i, k in zip(t.instruction_id_list, t.kwargs)
        ]
        if not all(v.strict for v in verdicts):
            failed.append((t.instruction_id_list, response[:200]))
    assert len(failed) <= 0.03 * len(tasks), failed[:5]
    # with feasibility checking on (the env's default), every task is solved
    feasible = TaskGenerator(seed=3)
    for split in SPLITS:
        for t in feasible.tasks(split, 60):
            response = write_response(t)
            assert all(
                verify_instruction(i, k, response, t.prompt).strict
                for i, k in zip(t.instruction_id_list, t.kwargs)
            ), t.instruction_id_list


def test_expert_writes_other_languages():
    t = IFTask(
        "x",
        "Describe rain. Your ENTIRE response should be in German language, no other language is allowed.",
        ["language:response_language", "length_constraints:number_sentences"],
        [{"language": "de"}, {"num_sentences": 3, "relation": "at least"}],
    )
    response = write_response(t)
    assert all(verify_instruction(i, k, response).strict for i, k in zip(t.instruction_id_list, t.kwargs))


# ---------------------------------------------------------------------------------- env
def test_check_env_and_garbage_actions():
    env = gym.make(INSTRUCTION_FOLLOWING_ID, n_tasks=30)
    check_env(env.unwrapped)
    for split in ("test_unseen",):
        check_env(InstructionFollowingEnv(split=split, n_tasks=10, soft_fraction=0.5, soft_splits=[split]))
    raw = InstructionFollowingEnv(n_tasks=10)
    for garbage in ("", "\x00\x01", "}{" * 5000, "\u2603 snowman", "*" * 100):
        raw.reset(seed=1)
        _, reward, terminated, truncated, info = raw.step(garbage)
        assert terminated and not truncated and 0.0 <= reward <= 1.0
        assert info["valid_action"] is bool(garbage.strip())
    _, reward, terminated, _, _ = raw.step("again")  # after the end: a normal answer
    assert terminated and reward == 0.0


def test_env_info_verdicts_and_rewards():
    env = gym.make(INSTRUCTION_FOLLOWING_ID, n_tasks=40, split="test_unseen")
    expert = InstructionFollowingExpert(env)
    obs, info = env.reset(options={"task_id": "ifgen/test_unseen/5"})
    assert info["task_id"] == "ifgen/test_unseen/5" and info["admissible_actions"] == []
    task = env.unwrapped.task
    assert obs == task.prompt and info["constraint_ids"] == task.instruction_id_list
    action, _ = expert.act(obs, info)
    _, reward, terminated, _, info = env.step(action)
    assert terminated and reward == 1.0 and info["won"] and info["score"] == 1.0
    assert [v["id"] for v in info["verdicts"]] == task.instruction_id_list
    assert all(v["strict"] and v["loose"] and v["hard"] for v in info["verdicts"])
    assert info["constraint_types"] == [i.split(":")[0] for i in task.instruction_id_list]

    # a response failing one of two constraints scores 1/2
    t = IFTask(
        "k/1",
        "Say hi. No commas. Use at least 3 words.",
        ["punctuation:no_comma", "length_constraints:number_words"],
        [{}, {"num_words": 3, "relation": "at least"}],
    )
    env2 = InstructionFollowingEnv(tasks=[t])
    env2.reset(options={"task_id": "k/1"})
    _, reward, _, _, info = env2.step("Hi, there.")
    assert reward == 0.0 and info["score"] == 0.0 and not info["won"]
    env2.reset(options={"task_id": "k/1"})
    _, reward, _, _, info = env2.step("Hi there friend, hello.")
    assert reward == 0.5 and info["score"] == 0.5 and info["valid_action"]
    all_or_nothing = InstructionFollowingEnv(tasks=[t], reward="all")
    all_or_nothing.reset(options={"task_id": "k/1"})
    assert all_or_nothing.step("Hi there friend, hello.")[1] == 0.0
    with pytest.raises(ValueError, match="unknown task_id"):
        env2.reset(options={"task_id": "nope"})


def test_soft_constraints_are_judged_and_routable():
    t = IFTask(
        "s/1",
        "Write about tea. Answer with at least 3 words. Keep the tone warm and friendly.",
        ["length_constraints:number_words"],
        [{"num_words": 3, "relation": "at least"}],
        ["soft:tone_friendly"],
    )
    friendly = "Thank you for asking and I hope you enjoy your tea."
    mixed = InstructionFollowingEnv(tasks=[t], judge="rule_based")
    mixed.reset(options={"task_id": "s/1"})
    _, reward, _, _, info = mixed.step(friendly)
    soft = [v for v in info["verdicts"] if not v["hard"]]
    assert soft == [
        {
            "id": "soft:tone_friendly",
            "type": "soft",
            "hard": False,
            "score": 1.0,
            "passed": True,
            "judge": "rule_based_stand_in",
        }
    ]
    assert info["won"] and reward == 1.0 and info["constraint_types"] == ["length_constraints", "soft"]
    mixed.reset(options={"task_id": "s/1"})
    _, reward, _, _, info = mixed.step("Tea is a drink made from leaves.")
    assert info["hard_won"] and not info["won"] and reward == 0.5
    hard_only = InstructionFollowingEnv(tasks=[t], reward="hard")
    hard_only.reset(options={"task_id": "s/1"})
    assert hard_only.step("Tea is a drink made from leaves.")[1] == 1.0
    no_judge = InstructionFollowingEnv(tasks=[t], judge=None)
    no_judge.reset(options={"task_id": "s/1"})
    assert no_judge.step(friendly)[4]["won"] is False  # a soft constraint without a judge is never passed


def test_task_types_are_instruction_families():
    env = InstructionFollowingEnv(n_tasks=40, task_types=["keywords", "punctuation"])
    assert env.task_types == ["keywords", "punctuation"]
    for i in range(40):
        _, info = env.reset(seed=i)
        assert info["task_type"] in ("keywords", "punctuation")
        assert set(info["task_families"].split("+")) <= {"keywords", "punctuation"}
    full = InstructionFollowingEnv(n_tasks=5)
    assert len(full.task_types) == 9
    with pytest.raises(ValueError, match="unknown families"):
        InstructionFollowingEnv(n_tasks=5, task_types=["tone"])


@pytest.mark.slow
def test_rl_rollouts_and_evaluation_run_on_the_env(tiny_policy_dir):
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.policy import PolicySpec, load_policy
    from prism_lit.rl import evaluate_policy

    model, tok = load_policy(PolicySpec(path=str(tiny_policy_dir)))
    protocol = AgentProtocol(
        env="instruction_following", reply_format="think_tags", history_turns=0, show_admissible=False
    )
    env_kwargs = {"n_tasks": 6, "split": "test_unseen"}
    tasks = InstructionFollowingEnv(**env_kwargs).task_ids[:4]
    result = evaluate_policy(
        model,
        tok,
        protocol,
        INSTRUCTION_FOLLOWING_ID,
        env_kwargs,
        tasks,
        max_steps=1,
        max_new_tokens=8,
        batch_size=2,
        return_episodes=True,
    )
    assert result["episodes"] == 4 and result["mean_steps"] == 1.0
    for episode in result["episodes_list"]:
        assert len(episode.steps) == 1 and episode.steps[0].done
        assert episode.task_type in DEFAULT_FAMILIES_OF_HELD_OUT


DEFAULT_FAMILIES_OF_HELD_OUT = {t.split(":")[0] for t in DEFAULT_HELD_OUT_TYPES}


def test_soft_constraints_only_in_training_splits_by_default():
    mixed_train = InstructionFollowingEnv(split="train", n_tasks=40, soft_fraction=1.0)
    assert all(len(t.soft_constraints) == 1 for t in mixed_train.tasks)
    hard_train = InstructionFollowingEnv(split="train", n_tasks=40)
    assert not any(t.soft_constraints for t in hard_train.tasks)
    same = sum(
        a.instruction_id_list == b.instruction_id_list for a, b in zip(mixed_train.tasks, hard_train.tasks)
    )
    assert same >= 30  # the two arms train on (mostly) the same hard constraints
    for split in ("test_seen", "test_unseen"):  # evaluation is the same hard-only panel for both arms
        mixed = InstructionFollowingEnv(split=split, n_tasks=20, soft_fraction=1.0)
        hard = InstructionFollowingEnv(split=split, n_tasks=20)
        assert [t.prompt for t in mixed.tasks] == [t.prompt for t in hard.tasks]


def test_rule_based_judge_is_labelled_and_its_precision_is_measurable():
    judge = RuleBasedJudge()
    assert isinstance(make_judge("rule_based"), RuleBasedJudge) and isinstance(
        make_judge(None), RuleBasedJudge
    )
    with pytest.raises(ValueError, match="class_path"):
        make_judge({"init_args": {}})
    assert "stand_in" in judge.name
    assert set(SOFT_CONSTRAINTS) >= {"soft:tone_formal", "soft:helpful"}
    formal = SOFT_CONSTRAINTS["soft:tone_formal"].rubric
    assert judge.score("p", "We are pleased to present the findings.", formal).passed
    assert not judge.score("p", "Hey guys this is totally awesome! Don't miss it!", formal).passed
    gen = TaskGenerator(seed=0)
    tasks = gen.tasks("train", 20)
    responses = [write_response(t) if i % 2 else "A short reply." for i, t in enumerate(tasks)]
    stats = judge_agreement(judge, tasks, responses)
    assert stats["n"] == sum(len(t.instruction_id_list) for t in tasks)
    assert 0.0 <= stats["false_pass_rate"] <= 1.0 and 0.0 <= stats["precision"] <= 1.0


@pytest.mark.slow
def test_llm_judge_scores_with_a_local_model(tiny_policy_dir):
    from prism_lit.policy.judge import LLMJudge

    judge = make_judge(str(tiny_policy_dir))  # a model path means the LLM judge
    assert isinstance(judge, LLMJudge) and judge.name.startswith("llm:")
    spec = {
        "class_path": "prism_lit.policy.judge.LLMJudge",
        "init_args": {"model_path": str(tiny_policy_dir)},
    }
    assert make_judge(spec) is judge  # cached per config: the env copies of a rollout pool share one model
    result = judge.score("Write about tea.", "Tea is nice.", SOFT_CONSTRAINTS["soft:tone_formal"].rubric)
    assert 0.0 <= result.score <= 1.0 and result.passed == (result.score >= 0.5)
    assert "REQUIREMENT" in judge.render("p", "r", "q")
    t = IFTask("j/1", "Write about tea. Use a formal, professional tone.", [], [], ["soft:tone_formal"])
    env = InstructionFollowingEnv(tasks=[t], judge=spec)
    env.reset(options={"task_id": "j/1"})
    verdict = env.step("Tea is a beverage.")[4]["verdicts"][0]
    assert verdict["judge"] == judge.name and verdict["hard"] is False


# ---------------------------------------------------------------------------------- loaders and scores
def test_ifeval_loader_and_scores_on_fixture():
    tasks = load_ifeval_jsonl(FIXTURES / "input_data.jsonl")
    assert [t.key for t in tasks] == [
        "ifeval/1000",
        "ifeval/1001",
        "ifeval/1005",
        "ifeval/1012",
        "ifeval/1019",
    ]
    assert tasks[0].kwargs[2] == {"relation": "at least", "num_words": 300}
    assert tasks[3].kwargs == [{}]  # IFEval's null-valued extra kwargs are dropped
    responses = {}
    for line in (FIXTURES / "responses.jsonl").read_text().splitlines():
        row = json.loads(line)
        responses[row["prompt"]] = row["response"]
    scores = evaluate_responses(tasks, responses, by_type=True)
    assert scores["n_prompts"] == 5 and scores["n_instructions"] == 7
    assert scores["prompt_level_strict"] == pytest.approx(2 / 5)
    assert scores["prompt_level_loose"] == pytest.approx(3 / 5)
    assert scores["instruction_level_strict"] == pytest.approx(2 / 7)
    assert scores["instruction_level_loose"] == pytest.approx(3 / 7)
    assert scores["by_type"]["change_case"] == {"n": 1, "strict": 0.0, "loose": 1.0}
    # the env serves the file, non-ASCII prompt included
    env = InstructionFollowingEnv(data_path=str(FIXTURES / "input_data.jsonl"), split="test")
    check_env(env)
    obs, _ = env.reset(options={"task_id": "ifeval/1012"})
    assert "Résumé" in obs and env.observation_space.contains(obs)


def test_ifeval_scores_from_verdict_dicts():
    results = [
        [{"id": "a:x", "strict": True, "loose": True}, {"id": "b:y", "strict": False, "loose": True}],
        [{"id": "a:x", "strict": True, "loose": True}, {"id": "soft:z", "hard": False, "score": 0.0}],
    ]
    scores = ifeval_scores(results)
    assert scores["prompt_level_strict"] == 0.5 and scores["prompt_level_loose"] == 1.0
    assert (
        scores["instruction_level_strict"] == pytest.approx(2 / 3)
        and scores["instruction_level_loose"] == 1.0
    )
    assert math.isnan(ifeval_scores([])["prompt_level_strict"])


def test_rlvr_loader_maps_open_instruct_functions():
    tasks = load_rlvr_ifeval(FIXTURES / "rlvr_ifeval.jsonl")
    assert [t.instruction_id_list for t in tasks] == [
        ["keywords:frequency"],
        ["length_constraints:number_paragraphs"],
        ["detectable_format:constrained_response"],
        ["length_constraints:number_words"],
    ]
    assert tasks[0].kwargs == [{"keyword": "tea", "frequency": 2, "relation": "exactly"}]
    assert tasks[0].prompt.startswith("Write a short note about tea.")
    assert tasks[2].kwargs[0]["options"] == ["My answer is yes.", "My answer is no.", "My answer is maybe."]

    def check(t, r):
        return all(
            verify_instruction(i, k, r, t.prompt).strict for i, k in zip(t.instruction_id_list, t.kwargs)
        )

    assert check(tasks[0], "Tea time. I love tea.") and not check(tasks[0], "Tea tea tea.")
    assert check(tasks[1], "The sun sets.\n* * *\nThe sky glows.")
    assert check(tasks[3], "Gravity pulls.") and not check(tasks[3], "word " * 21)
    assert [t.key for t in load_tasks(FIXTURES / "rlvr_ifeval.jsonl")] == [t.key for t in tasks]
    assert len(load_tasks(FIXTURES / "input_data.jsonl")) == 5
    env = InstructionFollowingEnv(data_path=str(FIXTURES / "rlvr_ifeval.jsonl"), data_format="rlvr")
    env.reset(options={"task_id": tasks[1].key})
    expert_response = write_response(env.task)
    assert env.step(expert_response)[4]["won"]


def test_generated_split_round_trips_through_ifeval_format(tmp_path):
    tasks = TaskGenerator(seed=0).tasks("test_unseen", 30)
    path = save_ifeval_jsonl(tasks, tmp_path / "input_data.jsonl")
    loaded = load_ifeval_jsonl(path)
    assert [t.key for t in loaded] == [t.key for t in tasks]
    assert [(t.prompt, t.instruction_id_list, t.kwargs) for t in loaded] == [
        (t.prompt, t.instruction_id_list, t.kwargs) for t in tasks
    ]
    responses = {t.prompt: write_response(t) for t in tasks}
    assert evaluate_responses(loaded, responses)["prompt_level_strict"] == 1.0


def test_loader_errors_name_the_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["made:up"], "kwargs": [{}]}) + "\n"
    )
    with pytest.raises(ValueError, match="task 1"):
        load_ifeval_jsonl(bad)
    assert load_ifeval_jsonl(bad, on_unknown="skip") == []


# ---------------------------------------------------------------------------------- expert data
def test_generate_command_writes_expert_sft_data(tmp_path):
    out = tmp_path / "if.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prism_lit.cli",
            "generate",
            "instruction_following",
            str(out),
            "--n_tasks",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(r["won"] and r["reward"] == 1.0 for r in rows)
    assert all(r["task_id"].startswith("ifgen/train/") and r["env"] == "instruction_following" for r in rows)
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]


def test_reward_verification_and_the_judge_audit_in_info():
    """``reward_verified`` says whether code checks every paid part; ``reward_judged`` is the judge-paid part;
    ``audit_judge`` adds the judge's word on each hard constraint next to the code's."""
    t = IFTask(
        "s/1",
        "Write about tea. Answer with at least 3 words. Keep the tone warm and friendly.",
        ["length_constraints:number_words"],
        [{"num_words": 3, "relation": "at least"}],
        ["soft:tone_friendly"],
    )
    friendly = "Thank you for asking and I hope you enjoy your tea."
    mixed = InstructionFollowingEnv(tasks=[t], audit_judge=True)
    _, info = mixed.reset(options={"task_id": "s/1"})
    assert info["reward_verified"] is False
    _, reward, _, _, info = mixed.step(friendly)
    assert reward == 1.0 and info["reward_judged"] == 0.5  # the soft half of the reward is the judge's
    hard = [v for v in info["verdicts"] if v["hard"]]
    assert [set(v) >= {"strict", "judge_passed"} for v in hard] == [True]
    assert isinstance(hard[0]["judge_passed"], bool)
    hard_only = InstructionFollowingEnv(tasks=[t], reward="hard")
    assert hard_only.reset(options={"task_id": "s/1"})[1]["reward_verified"] is True
    info = hard_only.step(friendly)[4]
    assert info["reward_judged"] == 0.0 and "judge_passed" not in info["verdicts"][0]  # no audit unless asked
    plain = InstructionFollowingEnv(tasks=[IFTask("h/1", "Write.", t.instruction_id_list, t.kwargs)])
    assert plain.reset(options={"task_id": "h/1"})[1]["reward_verified"] is True


def test_ifeval_metrics_match_ifeval_scores_and_the_judge_agreement():
    """The env's metrics (EnvSpec.metrics): per-panel IFEval scores equal ``ifeval_scores`` on the same verdicts,
    and the RL audit equals ``judge_agreement`` of the same judge on the same responses."""
    from prism_lit.envs import env_metrics
    from prism_lit.envs.instruction_following.scoring import IFEvalMetrics

    metrics = env_metrics("instruction_following")
    assert isinstance(metrics, IFEvalMetrics) and metrics.rates == ("prompt_level_strict", "prompt_level_loose")
    env = InstructionFollowingEnv(split="train", n_tasks=30, soft_fraction=0.5, audit_judge=True)
    tasks = [env.get_task(i) for i in range(30)]
    responses = [write_response(t) if i % 3 else "A short reply, about nothing." for i, t in enumerate(tasks)]
    infos = []
    for task, response in zip(tasks, responses):
        env.reset(options={"task_id": task.key})
        infos.append(env.step(response)[4])
    panel = metrics.panel([metrics.episode(i) for i in infos])
    reference = ifeval_scores([i["verdicts"] for i in infos])
    for name in ("prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose"):
        assert panel[name] == pytest.approx(reference[name]), name
    assert panel["n_prompts"] == 30 and panel["n_instructions"] == reference["n_instructions"]

    rollout = metrics.rollout(infos)
    agreement = judge_agreement(RuleBasedJudge(), tasks, responses)
    assert rollout["judge_audited"] == agreement["n"]
    for name in ("precision", "recall", "false_pass_rate"):
        assert rollout[f"judge_{name}"] == pytest.approx(agreement[name], nan_ok=True), name
    assert rollout["judge_pass_right"] + rollout["judge_pass_wrong"] <= rollout["judge_audited"]
    soft = sum(bool(t.soft_constraints) for t in tasks)
    assert 0 < soft < 30 and rollout["unverified_tasks"] == pytest.approx(soft / 30)
    assert 0.0 < rollout["reward_judged_share"] < 1.0
    assert rollout["hard_won"] == pytest.approx(sum(i["hard_won"] for i in infos) / 30)
    assert metrics.episode({"verdicts": []}) == {} and metrics.rollout([]) == {}
