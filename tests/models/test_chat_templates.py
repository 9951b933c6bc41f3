"""Exact assistant-only masks with the real chat templates of Qwen3 (thinking and not), Qwen3-Instruct-2507,
Qwen2.5, Llama-3.1/3.2 and Mistral v0.3, checked token by token against the rollout's own prompt rendering."""

from __future__ import annotations

import pytest
from tiny_models import ALL_KINDS

from prism_lit.data.schema import Message, Trajectory
from prism_lit.data.tokenize import (
    IGNORE_INDEX,
    TemplateError,
    tokenize_conversation,
    tokenize_trajectory_samples,
)
from prism_lit.envs.protocol import AgentProtocol, Turn
from prism_lit.policy import PolicySpec, load_tokenizer
from prism_lit.policy.chat import renders_history_stably, stop_token_ids, template_name
from prism_lit.rl.rollout import chat_prompt_ids

OBSERVATIONS = ["WebShop [SEP] Instruction: [SEP] i want a black sofa [SEP] Search",
                "Results [SEP] 1. black sofa [SEP] 2. plain sofa", "black sofa [SEP] Buy Now [SEP] < Prev",
                "Thank you for shopping [SEP] Search"]
REPLIES = ["Action: search[black sofa]", "Action: click[1]", "Action: click[buy now]", "Action: search[lamp]"]

# (kind, chat_template_kwargs, what the template writes before a reply's content, its end-of-turn token)
CASES = {
    "qwen3-thinking": ("qwen3", {}, "<think>\n\n</think>\n\n", "<|im_end|>"),
    "qwen3-nothink": ("qwen3", {"enable_thinking": False}, "", "<|im_end|>"),
    "qwen3-instruct-2507": ("qwen3-instruct-2507", {}, "", "<|im_end|>"),
    "qwen2.5": ("qwen2.5", {}, "", "<|im_end|>"),
    "llama-3.1": ("llama-3.1", {}, "", "<|eot_id|>"),
    "llama-3.2": ("llama-3.2", {"date_string": "26 Jul 2024"}, "", "<|eot_id|>"),
    "mistral": ("mistral", {}, "", "</s>"),
}
# sequences per 4-turn trajectory with the whole history: one for prefix-stable templates, one per turn for Qwen3
WHOLE_HISTORY_SEQUENCES = {"qwen3-thinking": 4, "qwen3-nothink": 4}


def _tokenizer(dirs, case):
    kind, kwargs, _, _ = CASES[case]
    return load_tokenizer(PolicySpec(path=str(dirs(kind)), chat_template_kwargs=kwargs))


def _protocol(case, history_turns):
    return AgentProtocol(env="webshop", history_turns=history_turns, system_in_user=case == "mistral")


def _trajectory(protocol, replies=REPLIES):
    messages = [Message("system", protocol.system)]
    for obs, reply in zip(OBSERVATIONS, replies):
        messages += [Message("user", obs), Message("assistant", reply)]
    return Trajectory("t-0", "webshop", "webshop/train/0", "", messages)


def _spans(labels):
    spans, start = [], None
    for t, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = t
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, t))
            start = None
    return spans


@pytest.mark.parametrize("history_turns", [8, 1])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_turn_is_trained_exactly_in_its_rollout_prompt(tiny_model_dirs, case, history_turns):
    """Token by token: every trained span is one reply plus its end-of-turn token, directly after the prompt the
    rollout engine renders for that step (same function, same history bound); nothing else is trained."""
    tokenizer = _tokenizer(tiny_model_dirs, case)
    _, _, before, eot = CASES[case]
    protocol = _protocol(case, history_turns)
    sequences = tokenize_conversation(_trajectory(protocol), tokenizer, protocol)
    spans = {(s, span) for s, (_, labels) in enumerate(sequences) for span in _spans(labels)}
    for ids, labels in sequences:
        assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    turns: list[Turn] = []
    for k, (obs, reply) in enumerate(zip(OBSERVATIONS, REPLIES)):
        prompt = chat_prompt_ids(tokenizer, protocol.build_messages(turns, obs))  # what the rollout feeds the model
        found = [(s, span) for s, span in spans
                 if span[0] == len(prompt) and sequences[s][0][: len(prompt)] == prompt]
        assert len(found) == 1, f"turn {k}: no trained span right after its rollout prompt"
        s, (start, end) = found[0]
        trained = sequences[s][0][start:end]
        assert trained[-1] == tokenizer.convert_tokens_to_ids(eot)
        text = tokenizer.decode(trained, skip_special_tokens=False)
        assert text.lstrip() == (before + reply + eot).lstrip()
        spans.discard(found[0])
        turns.append(Turn(obs, reply))
    assert not spans, f"trained tokens that belong to no reply: {spans}"
    if history_turns == 8:
        assert len(sequences) == WHOLE_HISTORY_SEQUENCES.get(case, 1)


def test_template_names_and_stop_ids(tiny_model_dirs):
    expected = {
        "qwen3": ("qwen3", {"<|im_end|>", "<|endoftext|>"}),
        "qwen3-instruct-2507": ("qwen3-instruct-2507", {"<|im_end|>", "<|endoftext|>"}),
        "qwen2.5": ("qwen2.5", {"<|im_end|>", "<|endoftext|>"}),
        "llama-3.1": ("llama-3.1", {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}),
        "llama-3.2": ("llama-3.2", {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}),
        "mistral": ("mistral-inst", {"</s>"}),
    }
    assert sorted(expected) == ALL_KINDS
    for kind, (name, stops) in expected.items():
        tokenizer = load_tokenizer(PolicySpec(path=str(tiny_model_dirs(kind))))
        assert template_name(tokenizer) == name
        assert set(tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer))) == stops
        # Qwen3 re-renders the last assistant turn; Mistral v0.3 moves the system message to the last user turn
        assert renders_history_stably(tokenizer) == (kind not in ("qwen3", "mistral"))


def test_thinking_replies_are_trained_or_masked_by_option(tiny_model_dirs):
    tokenizer = _tokenizer(tiny_model_dirs, "qwen3-thinking")
    replies = ["<think>\nThe task asks for a black sofa.\n\nSearch first.\n</think>\n\nAction: search[black sofa]"]
    for train_thinking, want in ((True, replies[0] + "<|im_end|>"), (False, "Action: search[black sofa]<|im_end|>")):
        protocol = AgentProtocol(env="webshop", train_thinking=train_thinking)
        traj = _trajectory(protocol, replies)
        traj.messages = traj.messages[:3]
        [(ids, labels)] = tokenize_conversation(traj, tokenizer, protocol)
        trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained, skip_special_tokens=False) == want
        assert protocol.parse_action(replies[0]) == "search[black sofa]"


def test_a_template_that_cannot_be_masked_exactly_is_an_error_naming_it_and_the_way_out(tiny_model_dirs):
    mistral = load_tokenizer(PolicySpec(path=str(tiny_model_dirs("mistral"))))
    protocol = AgentProtocol(env="webshop")  # a system message: Mistral v0.3 moves it into the last user turn
    with pytest.raises(TemplateError, match=r"'mistral-inst' chat template.*system_in_user"):
        tokenize_conversation(_trajectory(protocol), mistral, protocol)
    nothink = _tokenizer(tiny_model_dirs, "qwen3-nothink")
    thinking_data = _trajectory(protocol, ["<think>\nhmm\n</think>\n\nAction: search[sofa]"] * 4)
    with pytest.raises(TemplateError, match=r"'qwen3' chat template.*enable_thinking"):
        tokenize_trajectory_samples(thinking_data, nothink, protocol=protocol)
    qwen = load_tokenizer(PolicySpec(path=str(tiny_model_dirs("qwen2.5"))))
    qwen.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}" \
                         "{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(TemplateError, match="no end-of-turn or EOS token"):
        tokenize_conversation(_trajectory(protocol), qwen, protocol)
    with pytest.raises(ValueError, match="'qwen2.5' chat template never reads 'enable_thinking'"):
        load_tokenizer(PolicySpec(path=str(tiny_model_dirs("qwen2.5")), chat_template_kwargs={"enable_thinking": False}))


def test_chat_template_kwargs_reach_every_rendering_and_the_export(tiny_model_dirs, tmp_path):
    """enable_thinking=False set once on the PolicySpec: a plain apply_chat_template call (as the rollout engine
    makes) gets the empty think block, and the exported tokenizer keeps the setting."""
    from prism_lit.policy import export_policy, load_model

    spec = PolicySpec(path=str(tiny_model_dirs("qwen3")), chat_template_kwargs={"enable_thinking": False})
    tokenizer = load_tokenizer(spec)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    export_policy(load_model(spec), tokenizer, tmp_path / "export")
    again = load_tokenizer(PolicySpec(path=str(tmp_path / "export")))
    assert again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True) == prompt
    # a new setting replaces the carried one
    think = load_tokenizer(PolicySpec(path=str(tmp_path / "export"), chat_template_kwargs={"enable_thinking": True}))
    assert think.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_datamodule_rows_per_sequence_with_a_protocol(tiny_model_dirs):
    """A Llama-3.1 tokenizer by path (no pad token of its own) and a Qwen3 one: with the RL stage's protocol the
    DataModule keeps one row per training sequence, rows of a trajectory share its id and are numbered."""
    from pathlib import Path

    from prism_lit.data.datamodule import TrajectoryDataModule

    fixture = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_trajectories.jsonl")
    protocol = AgentProtocol(env="webshop", history_turns=0)
    for kind, parts in (("llama-3.1", 1), ("qwen3", 2)):
        data = TrajectoryDataModule(train_files=[fixture], tokenizer_path=str(tiny_model_dirs(kind)),
                                    protocol=protocol, batch_size=4)
        data.setup("fit")
        rows = data.train_rows
        assert data.tokenizer.pad_token_id is not None
        first = [r for r in rows if r["id"] == "fx-0"]
        assert [r["part"] for r in first] == list(range(parts))  # two replies: Qwen3 trains each in its own prompt
        batch = next(iter(data.train_dataloader()))
        assert batch["input_ids"].shape[0] <= 4


def test_a_template_without_a_system_role_points_to_system_in_user(tiny_model_dirs):
    """Mistral v0.1/v0.2-style templates refuse a system message (raise_exception): the error says what to set."""
    tokenizer = load_tokenizer(PolicySpec(path=str(tiny_model_dirs("mistral"))))
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% elif m['role'] == 'user' %}"
        "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    protocol = AgentProtocol(env="webshop")
    with pytest.raises(TemplateError, match=r"System role not supported.*system_in_user"):
        tokenize_conversation(_trajectory(protocol), tokenizer, protocol)
    fixed = AgentProtocol(env="webshop", system_in_user=True)
    assert len(tokenize_conversation(_trajectory(fixed), tokenizer, fixed)) == 1
