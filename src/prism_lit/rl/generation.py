"""Batched autoregressive sampling with a KV cache that records each sampled token's log-probability.

Written out (rather than ``model.generate``) so that the log-probabilities are exactly the rollout policy's:
``log_softmax(logits / temperature)`` in fp32 from the same forward that picked the token, with top-p only
restricting *which* tokens may be drawn (as verl and TRL do). A fresh forward over ``prompt + action`` gives the
same numbers (tested), so the PPO ratio is 1 at the first update.

Prompts are left-padded; position ids count real tokens only, so padding changes nothing. A row stops at an
end-of-turn token (kept: the policy learns to stop), when its decoded text contains a stop string, or at
``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Generation:
    """One row's output: the generated token ids (stop token included) and their log-probs."""

    token_ids: list[int]
    logprobs: list[float]
    stopped: bool  # True when an end-of-turn token or a stop string ended it (False: max_new_tokens)


def pad_sequences(
    rows: Sequence[Sequence[float]], value: float, side: str = "right", dtype: torch.dtype = torch.long,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, mask)`` of shape ``[len(rows), width]`` (default: the longest row), each row aligned to ``side``
    (``left``: right-aligned, as generation needs) and padded with ``value``; ``mask`` is 1 on real entries."""
    if side not in ("left", "right"):
        raise ValueError(f"pad_sequences: side must be 'left' or 'right', got {side!r}")
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            out[i, cols] = torch.as_tensor(list(r), dtype=dtype)
            mask[i, cols] = 1
    return out, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding changes nothing."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every prompt right-aligned."""
    ids, mask = pad_sequences(prompts, pad_token_id, side="left")
    return ids.to(device), mask.to(device)


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, greedy: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return ``(tokens, logprobs)`` with logprobs of the temperature-scaled softmax."""
    logits = logits.float()
    if greedy:
        tokens = logits.argmax(dim=-1)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        return tokens, logprobs
    if temperature <= 0:
        raise ValueError(f"sampling temperature must be > 0 (use greedy for argmax), got {temperature}")
    logp = torch.log_softmax(logits / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly above each token
        keep_sorted = before < top_p  # the smallest prefix whose mass reaches top_p (always >= 1 token)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
    tokens = torch.multinomial(probs.to(torch.float64) if probs.device.type == "cpu" else probs, 1,
                               generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    stop_token_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    tokenizer=None,
    stop_strings: Sequence[str] = (),
) -> list[Generation]:
    """Generate a reply for every prompt in one batch with a KV cache (see the module docstring)."""
    from transformers import DynamicCache

    if not prompts:
        return []
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need the tokenizer to decode")
    device = next(model.parameters()).device
    input_ids, mask = left_pad(prompts, pad_token_id, device)
    position_ids = position_ids_from_mask(mask)
    batch = len(prompts)
    stop_ids = torch.as_tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    out_tokens: list[list[int]] = [[] for _ in range(batch)]
    out_logprobs: list[list[float]] = [[] for _ in range(batch)]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    stopped = [False] * batch
    cache = DynamicCache()
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    for _ in range(max_new_tokens):
        tokens, logprobs = sample_tokens(out.logits[:, -1, :], temperature, top_p, greedy, generator)
        tokens = torch.where(finished, torch.full_like(tokens, pad_token_id), tokens)
        tok_list, lp_list = tokens.tolist(), logprobs.tolist()
        hit_stop = torch.isin(tokens, stop_ids) & ~finished
        for row in range(batch):
            if finished[row]:
                continue
            out_tokens[row].append(tok_list[row])
            out_logprobs[row].append(lp_list[row])
            if hit_stop[row]:
                stopped[row] = True
            elif stop_strings:
                text = tokenizer.decode(out_tokens[row], skip_special_tokens=True)
                if any(s in text for s in stop_strings):
                    stopped[row] = True
        finished = finished | torch.as_tensor(stopped, device=device)
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position_ids,
                    past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
    return [Generation(t, lp, s) for t, lp, s in zip(out_tokens, out_logprobs, stopped)]
