"""What prism_lit needs to know about a model's chat template: its name, its settings, its stop tokens.

- :func:`template_name`: which known template a tokenizer carries (Qwen3, Qwen3-Instruct-2507, Qwen2.5,
  Llama-3.1/3.2, Mistral ``[INST]``, ChatML), for error messages and docs.
- :func:`set_chat_template_kwargs`: chat-template settings (``enable_thinking`` and others) configured once on
  :class:`~prism_lit.policy.PolicySpec` and written into the tokenizer's template as ``{% set %}`` lines, so
  *every* rendering of a conversation (SFT and probe tokenisation, rollouts, evaluation, anything calling
  ``tokenizer.apply_chat_template``) applies them, and an exported policy keeps them.
- :func:`stop_token_ids`: every id that ends an assistant turn: the tokenizer's EOS, the template's own
  end-of-turn token (read off a rendered reply, e.g. ``<|im_end|>``, ``<|eot_id|>``, ``</s>``) and the EOS ids of
  the model's ``generation_config.json`` (Llama-3.1 lists three).

No torch import here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

KWARGS_BEGIN = "{#- prism_lit chat_template_kwargs: begin #}"
KWARGS_END = "{#- prism_lit chat_template_kwargs: end #}"
_KWARGS_BLOCK_RE = re.compile(re.escape(KWARGS_BEGIN) + r".*?" + re.escape(KWARGS_END) + r"\n?", re.DOTALL)
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROBE_CONTENT = "prism-lit-probe-reply"


def base_template(template: str | None) -> str:
    """The template text without the settings block :func:`set_chat_template_kwargs` prepends."""
    return _KWARGS_BLOCK_RE.sub("", template or "", count=1)


def baked_kwargs(template: str | None) -> dict[str, Any]:
    """The settings written into ``template`` by :func:`set_chat_template_kwargs` (``{}`` when none)."""
    match = _KWARGS_BLOCK_RE.search(template or "")
    if match is None:
        return {}
    found = re.search(r"\{#- settings: (.*?) #\}", match.group(0))
    return json.loads(found.group(1)) if found else {}


def template_name(tokenizer_or_template: Any) -> str:
    """A readable name of the chat template: ``qwen3``, ``qwen3-instruct-2507``, ``qwen2.5``, ``llama-3.1``,
    ``llama-3.2``, ``llama-3``, ``mistral-inst``, ``chatml``, else ``custom``."""
    text = tokenizer_or_template if isinstance(tokenizer_or_template, str) else getattr(
        tokenizer_or_template, "chat_template", None)
    text = base_template(text if isinstance(text, str) else "")
    if "<|im_start|>" in text:
        if "enable_thinking" in text or "reasoning_content" in text:
            return "qwen3"
        if "You are Qwen, created by Alibaba Cloud" in text:
            return "qwen2.5"
        if "<tool_response>" in text:
            return "qwen3-instruct-2507"
        return "chatml"
    if "<|start_header_id|>" in text:
        if "strftime_now" in text:
            return "llama-3.2"
        if "Cutting Knowledge Date" in text:
            return "llama-3.1"
        return "llama-3"
    if "[INST]" in text:
        return "mistral-inst"
    return "custom"


def describe_template(tokenizer) -> str:
    """``'qwen3' template of /path/to/model`` (for error messages)."""
    where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    settings = baked_kwargs(getattr(tokenizer, "chat_template", None))
    extra = f" with chat_template_kwargs {settings}" if settings else ""
    return f"the {template_name(tokenizer)!r} chat template of {where}{extra}"


def _jinja_literal(value: Any, name: str) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja_literal(v, name) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_jinja_literal(v, name)}" for k, v in value.items()) + "}"
    raise ValueError(f"chat_template_kwargs.{name}: {type(value).__name__} values cannot be passed to a template; "
                     "use a bool, number, string, null, list or dict")


def with_chat_template_kwargs(template: str, kwargs: dict[str, Any]) -> str:
    """``template`` with ``{% set name = value %}`` lines for ``kwargs`` in front (any earlier block replaced)."""
    text = base_template(template)
    if not kwargs:
        return text
    lines = []
    for name, value in kwargs.items():
        if not _IDENTIFIER_RE.match(str(name)):
            raise ValueError(f"chat_template_kwargs: {name!r} is not a template variable name")
        if not re.search(r"\b" + re.escape(str(name)) + r"\b", text):
            raise ValueError(
                f"chat_template_kwargs.{name}: the {template_name(text)!r} chat template never reads {name!r}, "
                "so setting it would change nothing; remove it or use a template that has this setting "
                "(e.g. enable_thinking is a Qwen3 setting)"
            )
        lines.append(f"{{%- set {name} = {_jinja_literal(value, str(name))} %}}")
    settings = json.dumps(dict(kwargs), sort_keys=True)
    return "\n".join([KWARGS_BEGIN, f"{{#- settings: {settings} #}}", *lines, KWARGS_END]) + "\n" + text


def set_chat_template_kwargs(tokenizer, kwargs: dict[str, Any] | None) -> None:
    """Write ``kwargs`` into ``tokenizer.chat_template`` (see the module docstring); ``{}`` removes a block."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        if kwargs:
            raise ValueError("chat_template_kwargs: the tokenizer has no (single) chat template to apply them to")
        return
    tokenizer.chat_template = with_chat_template_kwargs(template, dict(kwargs or {}))


def render_text(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages`` (``""`` for no message and no generation prompt)."""
    if not messages and not add_generation_prompt:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _added_token_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i in decoder)
    return ids


def end_of_turn_token_ids(tokenizer) -> list[int]:
    """The added token(s) the chat template writes right after an assistant reply (``<|im_end|>``, ``<|eot_id|>``,
    ``</s>``): the first added token after the reply text. ``[]`` when the template cannot render a probe
    conversation or writes no added token there."""
    conversations = (
        [{"role": "user", "content": "ping"}, {"role": "assistant", "content": _PROBE_CONTENT}],
        [{"role": "system", "content": "system"}, {"role": "user", "content": "ping"},
         {"role": "assistant", "content": _PROBE_CONTENT}],
    )
    added = _added_token_ids(tokenizer)
    for messages in conversations:
        try:
            text = render_text(tokenizer, messages)
        except Exception:  # noqa: BLE001, S112  (a template may refuse one of the layouts; try the next)
            continue
        at = text.rfind(_PROBE_CONTENT)
        if at < 0:
            continue
        tail = text[at + len(_PROBE_CONTENT):]
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        for token in ids:
            if token in added:
                return [int(token)]
    return []


def renders_history_stably(tokenizer) -> bool:
    """Whether the template renders a growing conversation stably: the prompt of turn k+1 starts with the prompt
    of turn k plus the reply (true for Qwen2.5, Qwen3-Instruct-2507, Llama-3.x, ChatML; false for Qwen3, whose
    last assistant turn differs). Only then can one forward over an episode's tokens score every turn's reply."""
    messages = [{"role": "system", "content": "system"}]
    previous = None
    for k in range(3):
        messages.append({"role": "user", "content": f"observation {k}"})
        prompt = render_text(tokenizer, messages, add_generation_prompt=True)
        if previous is not None and not prompt.startswith(previous):
            return False
        messages.append({"role": "assistant", "content": f"Action: act {k}"})
        previous = render_text(tokenizer, messages)
        if not previous.startswith(prompt):
            return False
    return True


def generation_config_eos_ids(path: str | Path | None) -> list[int]:
    """The ``eos_token_id`` entries of ``<path>/generation_config.json`` (``[]`` when absent)."""
    if not path:
        return []
    file = Path(path) / "generation_config.json"
    if not file.is_file():
        return []
    try:
        value = json.loads(file.read_text()).get("eos_token_id")
    except (OSError, json.JSONDecodeError):
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int)]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a reply: EOS, the template's end-of-turn token, and the generation config's EOS ids
    (``model.generation_config`` when given, else ``generation_config.json`` next to the tokenizer)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    ids.update(end_of_turn_token_ids(tokenizer))
    config = getattr(model, "generation_config", None) if model is not None else None
    if config is not None and getattr(config, "eos_token_id", None) is not None:
        eos = config.eos_token_id
        ids.update(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    else:
        ids.update(generation_config_eos_ids(getattr(tokenizer, "name_or_path", None)))
    vocab = len(tokenizer)
    return sorted(i for i in ids if 0 <= i < vocab)


__all__ = [
    "baked_kwargs", "base_template", "describe_template", "end_of_turn_token_ids", "generation_config_eos_ids",
    "render_text", "renders_history_stably", "set_chat_template_kwargs", "stop_token_ids", "template_name",
    "with_chat_template_kwargs",
]
