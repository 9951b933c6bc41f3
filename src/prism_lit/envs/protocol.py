"""The agent protocol: how an environment turn becomes chat messages and how a reply becomes an action.

One protocol object is shared by expert-data generation, SFT and RL rollouts, so the model is trained
on exactly the text it later sees. It has no torch / Lightning dependency (env code stays light).

Conversation layout (prefix-consistent, so a multi-turn SFT sample equals the last rollout prompt plus
its reply whenever the history fits in ``history_turns``)::

    system:    system prompt
    user:      render_observation(obs_0, admissible_0)       # always kept: it holds the task
    assistant: format_reply(action_0)
    user:      render_observation(obs_1, admissible_1)
    ...                                                         # only the last ``history_turns`` pairs
    user:      render_observation(obs_t, admissible_t)         # the current step

Action handles: with ``numbered_actions`` the admissible actions are listed as ``1. click[b0x7k]`` and
the agent may answer ``Action: 1``; ``parse_action`` maps the number back to the env's own action, so the
environment stays faithful while a small model only has to copy a short number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DEFAULT_SYSTEM_PROMPTS = {
    "webshop": (
        "You are a shopping agent in the WebShop website. Follow the instruction to buy the right product. "
        "Each turn, answer with an action: search[keywords] or click[button]."
    ),
    "alfworld": (
        "You are a household agent in a text world. Complete the task in as few steps as possible. "
        "Each turn, answer with one admissible action."
    ),
}
GENERIC_SYSTEM_PROMPT = "You are an agent acting in a text environment. Each turn, answer with one action."

ReplyFormat = Literal["action", "thought_action", "think_tags", "bare", "text"]
REPLY_FORMATS = ("action", "thought_action", "think_tags", "bare", "text")


@dataclass
class Turn:
    """One step of an episode as the protocol shows it: the rendered user message and the reply text."""

    observation: str
    reply: str


@dataclass
class AgentProtocol:
    """Prompt building and action parsing shared by data generation, SFT and rollouts.

    Args:
        env: environment family, selects the default system prompt ("webshop", "alfworld", other).
        system_prompt: overrides the default system prompt.
        reply_format: ``action`` (``Action: ...``), ``thought_action`` (ETO/AgentGym ``Thought: ...\\nAction: ...``)
            or ``think_tags`` (verl-agent ``<think>...</think><action>...</action>``), or ``bare`` (the reply's
            first non-empty line is the action; for tiny test envs and models that must not learn a format), or
            ``text`` (the whole reply, after any ``<think>`` block, is the action: free-text envs such as
            instruction following, where the response is the action).
        history_turns: how many past (observation, reply) pairs are shown besides the first observation.
        show_admissible: append the admissible actions to each observation (AgentGym / verl-agent style).
        numbered_actions: number the admissible actions and accept the number as an answer.
        number_pattern: with ``numbered_actions``, experts answer with the number only for actions matching this
            regular expression (e.g. ``^click\\[b0`` for WebShop product IDs) and write the others out; ``None``:
            every listed action by number. Parsing accepts either form.
        max_admissible: at most this many admissible actions are listed (the rest are still valid).
        list_only_numbered: with ``numbered_actions`` and a ``number_pattern``, list only the actions answered by
            number (WebShop: the products); the others are on the page itself and are written out. Shorter
            prompts, the same env.
        repeat_task: keep the task statement WebShop repeats at the top of every page; ``False`` shows it once,
            in the first observation (as verl-agent's prompts state the task once).
        train_thinking: SFT trains the tokens of a reply's ``<think>...</think>`` block (``False``: they are context
            only; the rest of the reply and its end-of-turn token are still trained). RL always trains every generated
            token, thinking included: the advantage weighs the whole reply.
        stop_at: strings that end a reply during rollouts, besides the model's own end-of-turn / EOS ids (which come
            from the tokenizer and generation config, see :func:`prism_lit.policy.chat.stop_token_ids`). ``None``:
            ``["\\n"]`` for ``bare`` replies, none otherwise (a blank line may sit inside a thought or a ``<think>``
            block, as in ETO/AgentGym ``Thought: ...\\n\\nAction: ...`` replies).
        system_in_user: put the system prompt at the top of the first user message instead of a system message, for
            chat templates that have no system role (Mistral v0.1/v0.2, Gemma) or move it (Mistral v0.3 writes it
            into the last user message, so earlier prompts change as the episode goes on).
    """

    env: str = "generic"
    system_prompt: str | None = None
    reply_format: ReplyFormat = "action"
    history_turns: int = 8
    show_admissible: bool = True
    numbered_actions: bool = False
    number_pattern: str | None = None
    max_admissible: int = 40
    list_only_numbered: bool = False
    repeat_task: bool = True
    train_thinking: bool = True
    stop_at: list[str] | None = None
    system_in_user: bool = False

    def __post_init__(self) -> None:
        if self.reply_format not in REPLY_FORMATS:
            raise ValueError(
                f"AgentProtocol.reply_format: unknown value {self.reply_format!r}; "
                f"choose {', '.join(map(repr, REPLY_FORMATS))}"
            )
        if self.history_turns < 0:
            raise ValueError(f"AgentProtocol.history_turns must be >= 0, got {self.history_turns}")

    # ---------------------------------------------------------------- prompts
    @property
    def system(self) -> str:
        if self.system_prompt is not None:
            return self.system_prompt
        return DEFAULT_SYSTEM_PROMPTS.get(self.env, GENERIC_SYSTEM_PROMPT)

    def listed_actions(self, admissible: Sequence[str]) -> list[str]:
        """The admissible actions in the order (and numbering) the prompt shows them."""
        actions = list(admissible)
        if self.list_only_numbered and self.numbered_actions and self.number_pattern is not None:
            pattern = re.compile(self.number_pattern)
            actions = [a for a in actions if pattern.search(a)]
        return actions[: self.max_admissible]

    _REPEATED_TASK_RE = re.compile(r"^Instruction: \[SEP\] .*? \[SEP\] ")

    def render_observation(self, observation: str, admissible: Sequence[str] | None = None) -> str:
        """The user message for one step."""
        text = observation.strip()
        if not self.repeat_task:
            # WebShop pages after the first start with "Instruction: [SEP] <task> [SEP] "; the first keeps it
            text = self._REPEATED_TASK_RE.sub("", text, count=1)
        shown = self.listed_actions(admissible) if self.show_admissible and admissible else []
        if shown:
            if self.numbered_actions:
                lines = [f"{i + 1}. {a}" for i, a in enumerate(shown)]
            else:
                lines = [f"- {a}" for a in shown]
            text += "\nAdmissible actions:\n" + "\n".join(lines)
        return text

    def build_messages(self, turns: Sequence[Turn], current_observation: str) -> list[dict[str, str]]:
        """Chat messages for the next reply. ``current_observation`` is already rendered."""
        messages = [{"role": "system", "content": self.system}]
        for turn in turns:
            messages.append({"role": "user", "content": turn.observation})
            messages.append({"role": "assistant", "content": turn.reply})
        messages.append({"role": "user", "content": current_observation})
        return self.prompt_messages(messages)

    def prompt_messages(self, messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """What the policy is shown of a conversation that ends with the current user message: the history bound
        (:func:`bound_history`), then ``system_in_user``. Rollouts and SFT tokenisation both call this."""
        shown = bound_history(messages, self.history_turns)
        if self.system_in_user and shown and shown[0]["role"] == "system":
            system, rest = shown[0]["content"], list(shown[1:])
            if rest and rest[0]["role"] == "user":
                rest[0] = {**rest[0], "content": f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]}
                return rest
        return shown

    # ---------------------------------------------------------------- replies
    def format_reply(self, action: str, thought: str | None = None, admissible: Sequence[str] | None = None) -> str:
        """The assistant text an expert writes for ``action`` (uses the number when numbering is on)."""
        shown = action
        if self.numbered_actions and admissible is not None:
            listed = self.listed_actions(admissible)
            if action in listed and (self.number_pattern is None or re.search(self.number_pattern, action)):
                shown = str(listed.index(action) + 1)
        if self.reply_format in ("bare", "text"):
            return shown
        if self.reply_format == "action":
            return f"Action: {shown}"
        if self.reply_format == "thought_action":
            return f"Thought: {thought or 'I should act.'}\nAction: {shown}"
        return f"<think>{thought or 'I should act.'}</think><action>{shown}</action>"

    _ACTION_RE = re.compile(r"Action:\s*(.+?)\s*$", re.DOTALL)
    _BRACKET_SPACE_RE = re.compile(r"\[\s+|\s+\]")  # "click[ white ]" -> "click[white]"
    _TAG_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL)

    def parse_action(self, reply: str, admissible: Sequence[str] | None = None) -> str | None:
        """The env action in ``reply``, or ``None`` when the reply is malformed.

        A malformed reply (no ``Action:`` / ``<action>`` part, or an empty one) returns ``None`` so the
        rollout can apply the invalid-format penalty. A number maps to the listed admissible action.
        A reasoning model's ``<think>...</think>`` block is skipped: the action is read after the last ``</think>``;
        a reply with ``<think>`` and no ``</think>`` (cut by ``max_new_tokens``) is malformed.
        """
        reply = strip_thinking(reply)
        if reply is None:
            return None
        if self.reply_format == "think_tags":
            found = self._TAG_RE.findall(reply)
            if not found:
                return None
            action = found[-1].strip()
        elif self.reply_format == "text":
            return reply.strip() or None  # the whole response, newlines and brackets as written
        elif self.reply_format == "bare":
            lines = [line.strip() for line in reply.splitlines() if line.strip()]
            action = lines[0] if lines else ""
        else:
            match = self._ACTION_RE.search(reply)
            if match is None:
                return None
            action = match.group(1).strip().splitlines()[0].strip() if match.group(1).strip() else ""
        action = self._BRACKET_SPACE_RE.sub(lambda m: "[" if m.group(0).startswith("[") else "]", action)
        if not action:
            return None
        if self.numbered_actions and admissible is not None and action.isdigit():
            listed = self.listed_actions(admissible)
            index = int(action) - 1
            if 0 <= index < len(listed):
                return listed[index]
        return action

    @property
    def stop_strings(self) -> list[str]:
        """Generation also stops at these strings (see ``stop_at``); the model's end-of-turn ids always stop it."""
        if self.stop_at is not None:
            return list(self.stop_at)
        return ["\n"] if self.reply_format == "bare" else []


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def strip_thinking(reply: str) -> str | None:
    """The reply after its last ``</think>`` (the reply itself when it has no think block); ``None`` when a
    ``<think>`` block is never closed."""
    if THINK_CLOSE in reply:
        return reply.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in reply:
        return None
    return reply


def bound_history(messages: Sequence[dict[str, str]], history_turns: int | None) -> list[dict[str, str]]:
    """The messages a policy is shown before its next reply, with a bounded history.

    ``messages`` is a conversation that ends with the current user message: leading system message(s), then
    user/assistant pairs, then the current user message. Kept: the system message(s), the first pair (it holds the
    task), the last ``history_turns`` pairs and the current message. ``None``: everything. Rollouts
    (:meth:`AgentProtocol.build_messages`) and SFT tokenisation (:func:`prism_lit.data.tokenize.tokenize_conversation`)
    both bound their prompts with this function, so a trained turn sees exactly its rollout prompt.
    """
    messages = list(messages)
    if history_turns is None:
        return messages
    if history_turns < 0:
        raise ValueError(f"history_turns must be >= 0 or None, got {history_turns}")
    start = 0
    while start < len(messages) and messages[start]["role"] == "system":
        start += 1
    body = messages[start:]
    if not body or body[-1]["role"] != "user" or len(body) % 2 != 1 or any(
        m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(body)
    ):
        raise ValueError(
            "bound_history: a bounded history needs system message(s), then alternating user/assistant messages "
            f"ending with a user message; got roles {[m['role'] for m in messages]}"
        )
    pairs = [body[i : i + 2] for i in range(0, len(body) - 1, 2)]
    if len(pairs) <= 1 + history_turns:
        return messages
    kept = pairs[:1] + (pairs[1:][-history_turns:] if history_turns > 0 else [])
    return messages[:start] + [m for pair in kept for m in pair] + [body[-1]]
