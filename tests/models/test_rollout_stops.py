"""Rollouts with the tiny real-architecture models: generation stops on each model's own end-of-turn token, thinking
replies (with blank lines inside) are neither cut nor misparsed, and the SFT rendering of a played episode's turn k
is exactly the rollout's prompt at step k plus the reply it generated."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ALL_KINDS
from torch import nn

from prism_lit.data.schema import Message, Trajectory
from prism_lit.data.tokenize import IGNORE_INDEX, tokenize_conversation
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec, load_policy
from prism_lit.rl.rollout import RolloutConfig, RolloutEngine

EOT = {"qwen3": "<|im_end|>", "qwen3-instruct-2507": "<|im_end|>", "qwen2.5": "<|im_end|>",
       "llama-3.1": "<|eot_id|>", "llama-3.2": "<|eot_id|>", "mistral": "</s>"}


class ScriptedPolicy(nn.Module):
    """The real model's forward pass, with logits overridden to follow a script: every reply is ``script`` (token
    ids), and after it whatever ``tail`` holds, so a rollout that did not stop at the right id would show it."""

    def __init__(self, model, script: list[int], tail: list[int]):
        super().__init__()
        self.inner, self.script, self.tail, self.position = model, list(script), list(tail), 0

    @property
    def config(self):
        return self.inner.config

    def forward(self, input_ids, **kwargs):
        out = self.inner(input_ids=input_ids, **kwargs)
        if input_ids.shape[1] > 1:  # a new prompt: the reply starts
            self.position = 0
        sequence = self.script + self.tail
        token = sequence[min(self.position, len(sequence) - 1)]
        self.position += 1
        logits = torch.full_like(out.logits, -1e4)
        logits[..., token] = 1e4
        out.logits = logits
        return out


def _play(model_dir, kind, reply, kwargs=None, protocol=None, steps=3):
    model, tokenizer = load_policy(PolicySpec(path=str(model_dir), chat_template_kwargs=kwargs or {}))
    protocol = protocol or AgentProtocol(env="guess_word", history_turns=1, system_in_user=kind == "mistral")
    eot = tokenizer.convert_tokens_to_ids(EOT[kind])
    script = tokenizer(reply, add_special_tokens=False)["input_ids"] + [eot]
    tail = tokenizer("\n\nAction: dog", add_special_tokens=False)["input_ids"]
    policy = ScriptedPolicy(model, script, tail)
    # draft_tokens=0: the scripted policy answers one token per decode forward (greedy drafts, which score several
    # tokens in one forward and give exactly the one-token result, are tested in tests/rl/test_rl_sequence.py)
    engine = RolloutEngine("prism_lit/GuessWord-v0", protocol, tokenizer,
                           RolloutConfig(max_new_tokens=len(script) + 8, max_steps=steps, draft_tokens=0))
    try:
        [episode] = engine.run(policy, [("guess_word/train/0", 0, 0)], greedy=True)
    finally:
        engine.close()
    return episode, tokenizer, protocol, eot, script


@pytest.mark.parametrize("kind, kwargs", [(k, {}) for k in ALL_KINDS] + [("qwen3", {"enable_thinking": False})])
def test_rollout_stops_on_the_models_own_end_of_turn_and_matches_sft(tiny_model_dirs, kind, kwargs):
    # Qwen3 in thinking mode (its default) answers with a think block, empty when it does not think
    thinking = kind == "qwen3" and kwargs.get("enable_thinking", True)
    reply = ("<think>\n\n</think>\n\n" if thinking else "") + "Action: zebra"
    episode, tokenizer, protocol, eot, script = _play(tiny_model_dirs(kind), kind, reply, kwargs)
    assert len(episode.steps) == 3  # zebra is never the answer: every step is played, none cut short
    for step in episode.steps:
        assert step.action_ids == script and step.action_ids[-1] == eot
        assert step.action == "zebra" and step.valid
    # the episode as an SFT trajectory, tokenised with the same protocol: turn k = prompt_k + reply_k, trained
    messages = [Message("system", protocol.system)]
    for step in episode.steps:
        messages += [Message("user", step.observation), Message("assistant", step.reply)]
    sequences = tokenize_conversation(Trajectory("e", "guess_word", episode.task_id, "", messages), tokenizer,
                                      protocol)
    for k, step in enumerate(episode.steps):
        whole = step.prompt_ids + step.action_ids
        matches = [labels for ids, labels in sequences if ids[: len(whole)] == whole]
        assert matches, f"step {k}: the rollout's prompt + reply is in no SFT sequence"
        labels = matches[0]
        n = len(step.prompt_ids)
        assert labels[n: len(whole)] == step.action_ids  # the reply and its end-of-turn token are trained
        assert all(label == IGNORE_INDEX for label in labels[max(0, n - 3): n])  # the prompt's tail is not


def test_qwen3_thinking_reply_with_blank_lines_is_not_cut_and_parses(tiny_model_dirs):
    reply = "<think>\nThe clue says monkeys peel it.\n\nThat is a fruit.\n</think>\n\nAction: zebra"
    episode, tokenizer, protocol, eot, script = _play(tiny_model_dirs("qwen3"), "qwen3", reply, steps=2)
    for step in episode.steps:
        assert step.action_ids == script
        assert step.reply == reply and step.action == "zebra"
    assert protocol.stop_strings == []
    # history shows the earlier reply without its thinking, as Qwen3's template renders it
    prompt = tokenizer.decode(episode.steps[1].prompt_ids, skip_special_tokens=False)
    assert "monkeys peel it.\n\nThat" not in prompt and "<|im_start|>assistant\nAction: zebra<|im_end|>" in prompt


def test_unclosed_think_block_is_malformed_and_strings_stop_only_when_asked():
    protocol = AgentProtocol(env="webshop", reply_format="thought_action")
    assert protocol.parse_action("<think>\nstill thinking about click[1]") is None
    assert protocol.parse_action("Thought: the first one fits.\n\nAction: click[1]") == "click[1]"
    assert protocol.stop_strings == []
    assert AgentProtocol(reply_format="bare").stop_strings == ["\n"]
    assert AgentProtocol(stop_at=["Observation:"]).stop_strings == ["Observation:"]
