"""Copy warm-up: grow a freshly built model's copy circuit before it reads a single episode.

Every decision of a WebShop agent copies something from its context (a product phrase, an option value). A
small model trained from scratch on whole episodes never starts copying in the chat format: the words and their
copy sit ~20 template tokens apart and the circuit gets no first gradient signal (``benchmarks/copy_task.py``;
docs/results.md §3). Copying a short word sequence right after a separator forms it within a few hundred steps,
and from there the chat format follows. So the warm-up trains, in that order:

    bare:  w1 … wn <|im_end|> w1 … wn                                      (loss on the copy)
    chat:  user "Type this search: [SEP] w1 … wn" → assistant "Action: search[w1 … wn]"

on words drawn from the tasks' own text. It teaches no task: the words are shuffled at random.

With ``nonce_fraction`` > 0 that share of the words are made-up letter strings (nonce words, 2-9 letters). A
tokenizer trained on the tasks' text splits a word it never saw into letters and short pieces, and a model that
only ever copied whole known words writes a known word instead; nonce words teach it to copy any piece sequence
(ALFWorld's valid_unseen objects, docs/results.md §1).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from typing import Any

from prism_lit.data.augment import nonce_word

CHAT_PROMPT = "Type this search: [SEP] {text}"
CHAT_REPLY = "Action: search[{text}]"


def task_words(texts: Iterable[str]) -> list[str]:
    """The distinct lower-case words of ``texts``, sorted: 3 letters or more, or any with a digit, and kept whole
    across hyphens and decimal points (option values such as ``xx-large`` or ``16``, prices such as ``40.00``)."""
    words: set[str] = set()
    for text in texts:
        words.update(w for w in re.findall(r"[a-z0-9]+(?:[-.][a-z0-9]+)*", text.lower())
                     if len(w) > 2 or any(c.isdigit() for c in w))
    return sorted(words)


def copy_sample(tokenizer: Any, words: list[str], rng: random.Random, form: str,
                nonce_fraction: float = 0.0) -> tuple[list[int], int]:
    """One copy example of 3-12 words, each a random one of ``words`` or, with probability ``nonce_fraction``, a
    nonce word: its token ids and the index where the copy starts."""
    text = " ".join(nonce_word(rng) if nonce_fraction and rng.random() < nonce_fraction else rng.choice(words)
                    for _ in range(rng.randint(3, 12)))
    if form == "bare":
        source = tokenizer(" " + text, add_special_tokens=False).input_ids
        return source + [tokenizer.eos_token_id] + source, len(source) + 1
    if form != "chat":
        raise ValueError(f"copy_sample: form must be 'bare' or 'chat', got {form!r}")
    messages = [{"role": "user", "content": CHAT_PROMPT.format(text=text)},
                {"role": "assistant", "content": CHAT_REPLY.format(text=text)}]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    return (tokenizer(full, add_special_tokens=False).input_ids,
            len(tokenizer(prompt, add_special_tokens=False).input_ids))


def copy_batch(samples: list[tuple[list[int], int]], pad_token_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside the copies)."""
    import torch

    width = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), width), pad_token_id)
    labels = torch.full((len(samples), width), -100)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (ids, start) in enumerate(samples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:])
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


def train_copy(
    model: Any,
    tokenizer: Any,
    words: list[str],
    bare_steps: int,
    chat_steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    nonce_fraction: float = 0.0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``bare_steps`` bare then ``chat_steps`` chat copy batches; the losses.

    ``nonce_fraction``: the share of copied words that are nonce words (:func:`copy_sample`).

    ``on_step(step, total, loss)`` is called after every step (progress reporting)."""
    import torch

    if not 0.0 <= nonce_fraction <= 1.0:
        raise ValueError(f"copy warm-up: nonce_fraction must be in [0, 1], got {nonce_fraction!r}")
    if len(words) < 2 and nonce_fraction < 1.0:
        raise ValueError(f"copy warm-up: needs at least 2 distinct words to copy, got {len(words)}")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(bare_steps + chat_steps):
        form = "bare" if step < bare_steps else "chat"
        input_ids, mask, labels = copy_batch([copy_sample(tokenizer, words, rng, form, nonce_fraction)
                                              for _ in range(batch_size)],
                                             tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, bare_steps + chat_steps, losses[-1])
    return losses
