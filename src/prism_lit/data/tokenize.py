"""Chat-template tokenisation with an assistant-only loss mask.

The mask is found by rendering growing prefixes of the conversation with the tokenizer's own chat template:
an assistant turn's tokens are those between ``render(messages[:i], add_generation_prompt=True)`` and
``render(messages[:i + 1])``. This works for any template (no ``{% generation %}`` markers needed) as long
as rendering is prefix-stable, which is checked. Each trained turn keeps its end-of-turn token (the
tokenizer's EOS, e.g. ``<|im_end|>``) so the model learns to stop; whatever the template puts after that token
(a newline) is not trained.

Truncation policy (``max_length``):
- ``right`` (default): keep the first ``max_length`` tokens (later turns are cut), as TRL's ``keep_start``;
- ``left``: keep the last ``max_length`` tokens (the system prompt and early turns are cut);
- ``skip``: leave the sample out (counted and logged by the DataModule);
- ``fail``: raise :class:`SampleTooLongError`.
A sample left with no trained token after truncation is skipped and counted too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prism_lit.data.schema import Trajectory

IGNORE_INDEX = -100
Truncation = Literal["right", "left", "skip", "fail"]
TRUNCATION_POLICIES = ("right", "left", "skip", "fail")


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


def _render(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    if not messages and not add_generation_prompt:
        return []
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def end_of_turn_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id


def tokenize_trajectory(
    trajectory: Trajectory,
    tokenizer,
    max_length: int | None = None,
    truncation: Truncation = "right",
    context_weight: float = 0.0,
) -> TokenizedSample | None:
    """Token ids and labels (``-100`` where not trained) for one trajectory; ``None`` when skipped.

    ``context_weight`` > 0 also trains every other token (system, observations, role headers) at that loss weight
    relative to the assistant turns: language modelling on the interaction text, which is how the embedded base
    model learns to read observations and copy from them. The sample then carries per-token ``weights``.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation: unknown policy {truncation!r}; choose one of {', '.join(TRUNCATION_POLICIES)}")
    if not 0.0 <= context_weight <= 1.0:
        raise ValueError(f"context_weight must be in [0, 1], got {context_weight!r}")
    messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in trajectory.messages]
    input_ids = _render(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(input_ids)
    eot = end_of_turn_id(tokenizer)
    for i, message in enumerate(trajectory.messages):
        if not message.trained:
            continue
        head = _render(tokenizer, messages[:i], add_generation_prompt=message.role == "assistant")
        upto = _render(tokenizer, messages[: i + 1])
        if input_ids[: len(upto)] != upto or upto[: len(head)] != head:
            raise TemplateError(
                f"trajectory {trajectory.id!r}: the chat template does not render prefixes stably at message {i}, "
                "so the assistant-only mask cannot be located; use a template without history-dependent rendering"
            )
        span_end = len(upto)
        if eot is not None and eot in upto[len(head) :]:
            span_end = len(upto) - upto[::-1].index(eot)  # up to and including the last end-of-turn token
        for t in range(len(head), span_end):
            labels[t] = input_ids[t]
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
