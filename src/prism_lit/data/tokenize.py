"""Chat-template tokenisation with an exact assistant-only loss mask, rendered turn by turn as rollouts render it.

Each trained assistant message ``i`` is rendered the way the rollout engine renders step ``i``: its context is
``protocol.prompt_messages(messages[:i])`` (the method :meth:`AgentProtocol.build_messages` uses: the
``history_turns`` bound, ``system_in_user``; without a protocol, the whole recorded history), and

- ``prompt`` = the model's own chat template applied to the context with ``add_generation_prompt=True`` (the
  rollout prompt, token for token: the same ``apply_chat_template`` call, the same template settings);
- ``full``   = the template applied to the context plus the reply (the reply is the last message).

The rendered ``full`` text must start with the ``prompt`` text, and ``full``'s tokens with ``prompt``'s tokens;
the reply's tokens are the rest, and the trained ones run up to and including the first end-of-turn / EOS token
(:func:`prism_lit.policy.chat.stop_token_ids`: ``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...). What the template puts
after that token (a newline) is context, not a target. Anything else is a :class:`TemplateError` that names the
template and the way out; a mask is never guessed.

This works for templates that render an assistant turn differently once later messages follow (Qwen3 writes an
empty ``<think>\\n\\n</think>\\n\\n`` only into the last assistant turn, and its ``enable_thinking=False``
generation prompt ends with that block): each turn is trained in exactly the context the rollout shows. Turns whose
sequences are prefixes of a later turn's sequence share it, so a prefix-stable template (Qwen2.5, Llama-3.x,
ChatML) with the whole history gives one sequence per trajectory, as before; Qwen3, or a history bound that cuts
turns, gives several sequences per trajectory (:func:`tokenize_conversation`).

``protocol.train_thinking=False`` leaves a reply's ``<think>...</think>`` block (and the whitespace after it) out
of the loss.

Truncation policy (``max_length``), per sequence:
- ``right`` (default): keep the first ``max_length`` tokens (later turns are cut), as TRL's ``keep_start``;
- ``left``: keep the last ``max_length`` tokens (the system prompt and early turns are cut);
- ``skip``: leave the sequence out (counted and logged by the DataModule);
- ``fail``: raise :class:`SampleTooLongError`.
A sequence left with no trained token after truncation is left out too.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prism_lit.data.schema import Trajectory

if TYPE_CHECKING:
    from prism_lit.envs.protocol import AgentProtocol

IGNORE_INDEX = -100
Truncation = Literal["right", "left", "skip", "fail"]
TRUNCATION_POLICIES = ("right", "left", "skip", "fail")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class SampleTooLongError(ValueError):
    pass


class TemplateError(ValueError):
    pass


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    weights: list[float] | None = None  # per-token loss weights; None: every trained token weighs 1
    full_length: int = 0  # tokens before truncation


def _encode(tokenizer, text: str, offsets: bool = False):
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    return (list(out["input_ids"]), list(out["offset_mapping"])) if offsets else list(out["input_ids"])


def end_of_turn_id(tokenizer) -> int | None:
    """The template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ...), else EOS."""
    from prism_lit.policy.chat import end_of_turn_token_ids

    ids = end_of_turn_token_ids(tokenizer)
    return ids[0] if ids else tokenizer.eos_token_id


_STOP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (template, stop ids)


def _stop_ids(tokenizer) -> frozenset[int]:
    from prism_lit.policy.chat import stop_token_ids

    template = str(getattr(tokenizer, "chat_template", ""))
    try:
        cached = _STOP_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        return frozenset(stop_token_ids(tokenizer))
    if cached is None or cached[0] != template:
        cached = (template, frozenset(stop_token_ids(tokenizer)))
        _STOP_CACHE[tokenizer] = cached
    return cached[1]


def _mismatch_hint(prompt: str, full: str, reply: str) -> str:
    common = 0
    for a, b in zip(prompt, full):
        if a != b:
            break
        common += 1
    hints = [(f"the generation prompt reads {prompt[common:common + 60]!r} where the reply's rendering reads "
              f"{full[common:common + 60]!r}")]
    if prompt.rstrip().endswith(THINK_CLOSE) and THINK_CLOSE in reply:
        hints.append("the reply has a <think> block but the generation prompt already closes one "
                     "(enable_thinking=False): drop the thinking from the data or set "
                     "policy.chat_template_kwargs.enable_thinking to true")
    elif "[INST]" in prompt:
        hints.append("this [INST] template moves the system message into the last user message, so the prompt "
                     "changes once the reply follows: set protocol.system_in_user to true (the system prompt then "
                     "opens the first user message, for SFT and rollouts alike), or give policy.chat_template a "
                     "template that keeps the system message in place")
    else:
        hints.append("give policy.chat_template a template whose assistant turn starts with its generation prompt")
    return "; ".join(hints)


def _think_span(full: str, start: int) -> tuple[int, int] | None:
    """Character span of the first ``<think>...</think>`` block (and the whitespace after it) from ``start``."""
    open_at = full.find(THINK_OPEN, start)
    if open_at < 0:
        return None
    close_at = full.find(THINK_CLOSE, open_at)
    if close_at < 0:
        return None
    end = close_at + len(THINK_CLOSE)
    while end < len(full) and full[end] in " \n\r\t":
        end += 1
    return open_at, end


def _turn_sequence(
    trajectory: Trajectory, tokenizer, messages: list[dict[str, Any]], index: int, protocol: AgentProtocol | None,
) -> tuple[list[int], list[int], int]:
    """``(input_ids, labels, end)`` of message ``index`` in its rollout context; ``end`` = one past its last
    trained token."""
    from prism_lit.policy.chat import describe_template, render_text

    message = messages[index]
    is_reply = message["role"] == "assistant"
    context = messages[:index]
    if is_reply and protocol is not None:
        try:
            context = protocol.prompt_messages(context)
        except ValueError as err:
            raise TemplateError(f"trajectory {trajectory.id!r}, message {index}: {err}") from None
    try:
        prompt = render_text(tokenizer, context, add_generation_prompt=is_reply)
        full = render_text(tokenizer, context + [message])
    except Exception as err:  # noqa: BLE001  (jinja raise_exception, TemplateError, ...)
        way_out = "give policy.chat_template a template that accepts this conversation"
        if "system" in str(err).lower() or "alternate" in str(err).lower():
            way_out = ("set protocol.system_in_user to true (the system prompt then opens the first user message), "
                       f"or {way_out}")
        raise TemplateError(
            f"trajectory {trajectory.id!r}: {describe_template(tokenizer)} cannot render message {index} "
            f"({type(err).__name__}: {err}); {way_out}"
        ) from None
    if not full.startswith(prompt):
        raise TemplateError(
            f"trajectory {trajectory.id!r}: {describe_template(tokenizer)} does not render message {index} as its "
            f"generation prompt followed by the reply, so the trained tokens cannot be located exactly: "
            f"{_mismatch_hint(prompt, full, message['content'])}"
        )
    prompt_ids = _encode(tokenizer, prompt)
    input_ids, offsets = _encode(tokenizer, full, offsets=True)
    n = len(prompt_ids)
    if input_ids[:n] != prompt_ids:
        raise TemplateError(
            f"trajectory {trajectory.id!r}: with {describe_template(tokenizer)}, the tokens of message {index}'s "
            "prompt are not a prefix of the tokens of prompt + reply (a token spans the boundary), so the rollout "
            "prompt and the SFT sequence would differ; give policy.chat_template a template whose generation prompt "
            "ends at a token boundary (e.g. with a newline or a special token)"
        )
    stops = _stop_ids(tokenizer)
    end = next((t + 1 for t in range(n, len(input_ids)) if input_ids[t] in stops), None)
    if end is None:
        if is_reply:
            raise TemplateError(
                f"trajectory {trajectory.id!r}: {describe_template(tokenizer)} ends assistant message {index} with no "
                f"end-of-turn or EOS token (stop ids {sorted(stops)}), so the model could not learn to stop; set the "
                "tokenizer's eos_token to the template's end-of-turn token, or fix the template"
            )
        end = len(input_ids)
    labels = [IGNORE_INDEX] * len(input_ids)
    for t in range(n, end):
        labels[t] = input_ids[t]
    if is_reply and protocol is not None and not protocol.train_thinking:
        span = _think_span(full, len(prompt))
        if span is not None:
            for t in range(n, end):
                if offsets[t][0] >= span[0] and offsets[t][1] <= span[1] and offsets[t][1] > offsets[t][0]:
                    labels[t] = IGNORE_INDEX
    return input_ids, labels, end


def tokenize_conversation(
    trajectory: Trajectory,
    tokenizer,
    protocol: AgentProtocol | None = None,
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` sequences that train every trained message of ``trajectory`` in its rollout context.

    Turn ``k``'s sequence is its rollout prompt (same template, same settings, and with ``protocol``, what
    :meth:`AgentProtocol.prompt_messages` shows: the ``history_turns`` bound, ``system_in_user``) plus its
    reply; ``protocol.train_thinking=False`` leaves ``<think>`` blocks out of the loss. ``protocol=None``: the whole
    recorded history, thinking trained. A turn whose sequence is a prefix of the next kept sequence (up to its last
    trained token) is trained inside that sequence instead, so prefix-stable templates give one sequence.
    """
    messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in trajectory.messages]
    trained = [i for i, m in enumerate(trajectory.messages) if m.trained]
    sequences: list[tuple[list[int], list[int]]] = []
    for index in reversed(trained):
        ids, labels, end = _turn_sequence(trajectory, tokenizer, messages, index, protocol)
        if sequences and sequences[0][0][:end] == ids[:end]:
            target = sequences[0][1]
            for t in range(end):
                if labels[t] != IGNORE_INDEX:
                    target[t] = labels[t]
        else:
            sequences.insert(0, (ids, labels))
    return sequences


def _finish(
    trajectory: Trajectory, input_ids: list[int], labels: list[int], max_length: int | None,
    truncation: Truncation, context_weight: float,
) -> TokenizedSample | None:
    weights = None
    if context_weight > 0:
        weights = [1.0 if label != IGNORE_INDEX else context_weight for label in labels]
        labels = list(input_ids)
    truncated, full_length = False, len(input_ids)
    if max_length is not None and len(input_ids) > max_length:
        if truncation == "fail":
            raise SampleTooLongError(
                f"trajectory {trajectory.id!r} has {len(input_ids)} tokens, over max_length={max_length}"
            )
        if truncation == "skip":
            return None
        truncated = True
        keep = slice(None, max_length) if truncation == "right" else slice(-max_length, None)
        input_ids, labels = input_ids[keep], labels[keep]
        weights = weights[keep] if weights is not None else None
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return TokenizedSample(input_ids, labels, truncated, weights, full_length)


def _check_options(truncation: str, context_weight: float) -> None:
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation: unknown policy {truncation!r}; choose one of {', '.join(TRUNCATION_POLICIES)}")
    if not 0.0 <= context_weight <= 1.0:
        raise ValueError(f"context_weight must be in [0, 1], got {context_weight!r}")


def tokenize_trajectory_samples(
    trajectory: Trajectory,
    tokenizer,
    max_length: int | None = None,
    truncation: Truncation = "right",
    context_weight: float = 0.0,
    protocol: AgentProtocol | None = None,
) -> list[TokenizedSample]:
    """Every training sequence of ``trajectory`` (see :func:`tokenize_conversation`), truncated; the sequences
    left out by the truncation policy (or with nothing left to train) are dropped."""
    _check_options(truncation, context_weight)
    samples = []
    for ids, labels in tokenize_conversation(trajectory, tokenizer, protocol):
        sample = _finish(trajectory, ids, labels, max_length, truncation, context_weight)
        if sample is not None:
            samples.append(sample)
    return samples


def tokenize_trajectory(
    trajectory: Trajectory,
    tokenizer,
    max_length: int | None = None,
    truncation: Truncation = "right",
    context_weight: float = 0.0,
    protocol: AgentProtocol | None = None,
) -> TokenizedSample | None:
    """Token ids and labels (``-100`` where not trained) for a trajectory that fits one sequence; ``None`` when
    skipped.

    ``context_weight`` > 0 also trains every other token (system, observations, role headers) at that loss weight
    relative to the assistant turns: language modelling on the interaction text, which is how the embedded base
    model learns to read observations and copy from them. The sample then carries per-token ``weights``.
    A trajectory that needs several sequences (a template such as Qwen3's, or a binding ``history_turns``) is a
    :class:`TemplateError` here; :func:`tokenize_trajectory_samples` returns all of them.
    """
    _check_options(truncation, context_weight)
    sequences = tokenize_conversation(trajectory, tokenizer, protocol)
    if len(sequences) > 1:
        raise TemplateError(
            f"trajectory {trajectory.id!r} is trained as {len(sequences)} sequences (each turn in its rollout "
            "context); use tokenize_trajectory_samples"
        )
    if not sequences:
        return None
    return _finish(trajectory, *sequences[0], max_length, truncation, context_weight)
