"""Training-side scoring of recorded steps: pack them into token sequences and run the policy on them.

A *unit* is a list of steps whose prompts extend each other: step ``j+1``'s prompt starts with step ``j``'s prompt
and reply (a full-history episode rendered with a prefix-stable chat template). A unit is one token sequence (the
last step's prompt + reply); one causal forward over it gives the log-probs of every reply in it, exactly as the
per-step forwards would (each reply sees the same tokens at the same positions), for about k turns of tokens
instead of k²/2. A single step is a unit of one; :func:`chain_units` finds the units of a sample list.

Layout: each unit's sequence padded on one side (position ids count real tokens only, so the side changes
nothing). The model is called whole (so peft, FSDP and other wrappers are respected) with a per-row
``logits_to_keep``: only the columns that predict reply tokens are projected to the vocabulary, which keeps memory
small for large vocabularies. The outputs are then laid out per reply (``[num_replies, max_reply_len]``), the shape
the losses use whatever the packing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prism_lit.rl.generation import pad_sequences, position_ids_from_mask
from prism_lit.rl.losses import entropy_from_logits


@dataclass
class StepSample:
    """One recorded step ready for a loss: its tokens, rollout log-probs and per-step targets."""

    prompt_ids: list[int]
    action_ids: list[int]
    old_logprobs: list[float]
    advantage: float = 0.0
    ret: float = 0.0  # value target (PPO)
    old_value: float = 0.0  # value at rollout time (PPO)


def extends(prev: StepSample, nxt: StepSample) -> bool:
    """True when ``nxt``'s prompt starts with ``prev``'s prompt and reply (they fit in one sequence)."""
    n = len(prev.prompt_ids)
    m = n + len(prev.action_ids)
    return len(nxt.prompt_ids) >= m and nxt.prompt_ids[:n] == prev.prompt_ids and nxt.prompt_ids[n:m] == prev.action_ids


def chain_units(samples: Sequence[StepSample], pack: bool = True) -> list[list[int]]:
    """Indices of ``samples`` cut into units: maximal runs of consecutive samples each extending the one before
    (``pack=False``: one sample per unit). Chaining only needs the tokens to match, so a unit is exact whatever
    episodes its samples come from."""
    units: list[list[int]] = []
    for i, sample in enumerate(samples):
        if pack and units and extends(samples[units[-1][-1]], sample):
            units[-1].append(i)
        else:
            units.append([i])
    return units


@dataclass
class TokenBatch:
    """Padded tensors for a list of units: ``S`` sequences holding ``R`` replies (per-reply tensors are
    ``[R, A]`` with ``A`` the longest reply)."""

    input_ids: torch.Tensor  # [S, L]
    attention_mask: torch.Tensor  # [S, L]
    position_ids: torch.Tensor  # [S, L]
    logit_positions: torch.Tensor  # [S, K] columns whose logits are kept (the logit at c predicts token c + 1)
    reply_index: torch.Tensor  # [R, A] index of each reply token's logit in the flattened [S * K] kept logits
    state_index: torch.Tensor  # [R] index of each reply's last prompt token in the flattened [S * L] sequence
    action_ids: torch.Tensor  # [R, A]
    action_mask: torch.Tensor  # [R, A] float 0/1
    old_logprobs: torch.Tensor  # [R, A]
    advantages: torch.Tensor  # [R]
    returns: torch.Tensor  # [R]
    old_values: torch.Tensor  # [R]

    def to(self, device) -> TokenBatch:
        return TokenBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


def collate_units(units: Sequence[Sequence[StepSample]], pad_token_id: int, side: str = "right") -> TokenBatch:
    """Pack units (lists of samples, each extending the one before) into a :class:`TokenBatch`, one sequence per
    unit padded on ``side``; replies are listed unit by unit, step by step."""
    if not units or not all(units):
        raise ValueError("collate_units: no samples (or an empty unit)")
    seqs, kept, reply_pos, state_pos, replies = [], [], [], [], []
    for u, unit in enumerate(units):
        last = unit[-1]
        seq = list(last.prompt_ids) + list(last.action_ids)
        positions: list[int] = []
        for j, s in enumerate(unit):
            if len(s.action_ids) != len(s.old_logprobs):
                raise ValueError(f"collate_units: unit {u} step {j} has {len(s.action_ids)} action ids but "
                                 f"{len(s.old_logprobs)} log-probs")
            if not s.prompt_ids:
                raise ValueError(f"collate_units: unit {u} step {j} has an empty prompt")
            if j + 1 < len(unit) and not extends(s, unit[j + 1]):
                raise ValueError(f"collate_units: in unit {u}, step {j + 1}'s prompt does not extend step {j}'s "
                                 "prompt and reply; cut units with chain_units")
            start = len(s.prompt_ids)
            reply_pos.append((u, len(positions)))
            state_pos.append((u, start - 1))
            positions.extend(range(start - 1, start - 1 + len(s.action_ids)))
            replies.append(s)
        seqs.append(seq)
        kept.append(positions)
    input_ids, attention_mask = pad_sequences(seqs, pad_token_id, side=side)
    S, L = input_ids.shape
    shift = [L - len(q) if side == "left" else 0 for q in seqs]
    K = max(max((len(k) for k in kept), default=1), 1)
    logit_positions = torch.zeros((S, K), dtype=torch.long)
    for u, positions in enumerate(kept):
        if positions:
            logit_positions[u, :len(positions)] = torch.tensor(positions) + shift[u]
    action_ids, action_mask = pad_sequences([s.action_ids for s in replies], pad_token_id, side="right")
    A = action_ids.shape[1]
    lengths = torch.tensor([len(s.action_ids) for s in replies])
    first = torch.tensor([u * K + off for u, off in reply_pos])
    offsets = torch.arange(A)[None, :].expand(len(replies), A)
    reply_index = first[:, None] + torch.minimum(offsets, (lengths[:, None] - 1).clamp(min=0))
    old_logprobs, _ = pad_sequences([s.old_logprobs for s in replies], 0.0, side="right", dtype=torch.float32)
    return TokenBatch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
        logit_positions=logit_positions, reply_index=reply_index,
        state_index=torch.tensor([u * L + col + shift[u] for u, col in state_pos]),
        action_ids=action_ids, action_mask=action_mask.to(torch.float32), old_logprobs=old_logprobs,
        advantages=torch.tensor([s.advantage for s in replies], dtype=torch.float32),
        returns=torch.tensor([s.ret for s in replies], dtype=torch.float32),
        old_values=torch.tensor([s.old_value for s in replies], dtype=torch.float32),
    )


def collate_steps(samples: Sequence[StepSample], pad_token_id: int, side: str = "left") -> TokenBatch:
    """One sequence per sample (the per-step layout): a :class:`TokenBatch` of units of one."""
    if not samples:
        raise ValueError("collate_steps: no samples")
    return collate_units([[s] for s in samples], pad_token_id, side=side)


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # [R, A] fp32 log-probs of the reply tokens (temperature-scaled)
    entropy: torch.Tensor | None  # [R, A] fp32
    state_hidden: torch.Tensor | None  # [R, H] last hidden state at each reply's last prompt token (value head)


def _per_row_logits_to_keep() -> bool:
    """transformers >= 5 accepts a 2-D ``logits_to_keep`` (positions per row); older versions a 1-D one."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


PER_ROW_LOGITS = _per_row_logits_to_keep()


def policy_forward(
    model, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = False, with_hidden: bool = False,
    per_row_logits: bool | None = None,
) -> PolicyOutput:
    """Log-probs of the reply tokens under ``model`` (and optionally entropy and each state's hidden vector)."""
    per_row = PER_ROW_LOGITS if per_row_logits is None else per_row_logits
    S, K = batch.logit_positions.shape
    if per_row:
        keep, index = batch.logit_positions, batch.reply_index
    else:  # one column list for every row: the union, and each reply token's place in it
        cols = batch.logit_positions.reshape(-1)[batch.reply_index]
        keep = torch.unique(batch.logit_positions.reshape(-1)[batch.reply_index.reshape(-1)])
        index = torch.div(batch.reply_index, K, rounding_mode="floor") * keep.numel() + torch.searchsorted(keep, cols)
        K = keep.numel()
    out = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
        use_cache=False, logits_to_keep=keep, output_hidden_states=with_hidden,
    )
    if tuple(out.logits.shape[:2]) != (S, K):
        raise RuntimeError(f"policy_forward: the model returned logits of shape {tuple(out.logits.shape)} for "
                           f"logits_to_keep of shape {tuple(keep.shape)}; expected ({S}, {K}, vocab)")
    logits = out.logits.reshape(S * K, -1)[index].float()  # [R, A, V]
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, batch.action_ids[..., None]).squeeze(-1)
    entropy = entropy_from_logits(logits) if with_entropy else None
    hidden = None
    if with_hidden:
        last = out.hidden_states[-1]
        hidden = last.reshape(-1, last.shape[-1])[batch.state_index]
    return PolicyOutput(logprobs=logprobs, entropy=entropy, state_hidden=hidden)
