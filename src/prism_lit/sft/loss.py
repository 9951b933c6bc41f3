"""Next-token cross-entropy from the final hidden states, a chunk of positions at a time (no [B, T, V] logits).

A causal LM's logits are the largest activation of a training step: Qwen3's 151,936-token vocabulary makes them
0.6 MB per token in fp32 (0.3 MB in bf16), plus as much again for their gradient, while a layer's activations are
a few tens of kB per token. Here the model returns its final hidden states (``output_hidden_states``, with
``logits_to_keep=1`` so it projects one position only); the trained positions are gathered, and each chunk of
``chunk_tokens`` of them is projected onto the vocabulary inside :func:`torch.utils.checkpoint.checkpoint`: the
chunk's logits exist only while its loss is computed, in the forward and again in the backward. Peak extra memory
is one chunk's logits and their gradient (``chunk_tokens × V`` × 4 bytes × about 3), whatever the batch.

The loss equals Hugging Face's ``labels=`` loss (the mean CE over targets ``labels[:, 1:] != -100``) and, with
``weights``, ``Σ w·CE / Σ w`` over the same targets, to float rounding. The LM head runs in the model's own
forward context (autocast, FSDP's unsharded root) and its weight gradient accumulates through autograd as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["IGNORE_INDEX", "causal_lm_loss", "hidden_states_and_head"]

IGNORE_INDEX = -100


def hidden_states_and_head(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
) -> tuple[torch.Tensor, nn.Module]:
    """The final (normed) hidden states ``[B, T, H]`` of a HF causal LM (peft-wrapped or not) and its LM head.

    The model projects only its last position onto the vocabulary (``logits_to_keep=1``).
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1,
                use_cache=False, **kwargs)
    head = model.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings (LM head); chunked loss needs one")
    return out.hidden_states[-1], head


def _chunk_ce(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return (F.cross_entropy(logits, targets, reduction="none") * weights).sum()


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    chunk_tokens: int = 1024,
) -> torch.Tensor:
    """Σ w·CE / Σ w over next-token targets ``labels[:, 1:] != -100`` (w = 1 without ``weights``), chunked.

    Args:
        model: a HF causal LM (or peft model) whose forward accepts ``output_hidden_states`` and
            ``logits_to_keep``.
        input_ids, attention_mask, labels: ``[B, T]``; labels aligned with input_ids (HF's shift is applied here).
        weights: ``[B, T]`` per-token loss weights aligned with labels (``TrajectoryDataModule(context_weight=)``).
        chunk_tokens: trained positions projected onto the vocabulary at a time.
    """
    if chunk_tokens < 1:
        raise ValueError(f"logits_chunk_tokens must be >= 1, got {chunk_tokens}")
    hidden, head = hidden_states_and_head(model, input_ids, attention_mask)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    rows, cols = valid.nonzero(as_tuple=True)
    h = hidden[:, :-1][rows, cols]  # [N, H]: only positions that predict a trained token
    t = targets[rows, cols]
    w = (weights[:, 1:][rows, cols] if weights is not None else torch.ones_like(t)).to(torch.float32)
    total = hidden.new_zeros((), dtype=torch.float32) + 0.0 * hidden.sum()  # keeps the graph when N = 0
    for lo in range(0, t.numel(), chunk_tokens):
        hi = lo + chunk_tokens
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_ce, head, h[lo:hi], t[lo:hi], w[lo:hi], use_reentrant=False)
        else:
            total = total + _chunk_ce(head, h[lo:hi], t[lo:hi], w[lo:hi])
    return total / w.sum().clamp_min(1e-8)
