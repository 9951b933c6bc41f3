"""Training-side scoring of recorded steps: pack them into tensors and run the policy on them.

Layout: prompts left-padded to a common length ``P`` and replies right-padded after it, so every reply starts
at column ``P`` (the layout generation used; position ids count real tokens only). The model is called whole
(so peft, FSDP and other wrappers are respected) with ``logits_to_keep = A + 1``: only the reply positions and
the one before them are projected to the vocabulary, which keeps memory small for large vocabularies.
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


@dataclass
class TokenBatch:
    """Padded tensors for a list of :class:`StepSample`."""

    input_ids: torch.Tensor  # [B, P + A]
    attention_mask: torch.Tensor  # [B, P + A]
    position_ids: torch.Tensor  # [B, P + A]
    action_ids: torch.Tensor  # [B, A]
    action_mask: torch.Tensor  # [B, A] float 0/1
    old_logprobs: torch.Tensor  # [B, A]
    advantages: torch.Tensor  # [B]
    returns: torch.Tensor  # [B]
    old_values: torch.Tensor  # [B]

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.action_ids.shape[1]

    def to(self, device) -> TokenBatch:
        return TokenBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


def collate_steps(samples: Sequence[StepSample], pad_token_id: int) -> TokenBatch:
    """Pack samples into a :class:`TokenBatch` (prompts left-padded, replies right-padded)."""
    if not samples:
        raise ValueError("collate_steps: no samples")
    for row, s in enumerate(samples):
        if len(s.action_ids) != len(s.old_logprobs):
            raise ValueError(f"collate_steps: sample {row} has {len(s.action_ids)} action ids but "
                             f"{len(s.old_logprobs)} log-probs")
    prompt_ids, prompt_mask = pad_sequences([s.prompt_ids for s in samples], pad_token_id, side="left")
    action_ids, action_mask = pad_sequences([s.action_ids for s in samples], pad_token_id, side="right")
    old_logprobs, _ = pad_sequences([s.old_logprobs for s in samples], 0.0, side="right", dtype=torch.float32)
    input_ids = torch.cat([prompt_ids, action_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, action_mask], dim=1)
    position_ids = position_ids_from_mask(attention_mask)
    action_mask = action_mask.to(torch.float32)
    return TokenBatch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, action_ids=action_ids,
        action_mask=action_mask, old_logprobs=old_logprobs,
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        returns=torch.tensor([s.ret for s in samples], dtype=torch.float32),
        old_values=torch.tensor([s.old_value for s in samples], dtype=torch.float32),
    )


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # [B, A] fp32 log-probs of the reply tokens (temperature-scaled)
    entropy: torch.Tensor | None  # [B, A] fp32
    state_hidden: torch.Tensor | None  # [B, H] last hidden state at the last prompt token (for a value head)


def policy_forward(
    model, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = False, with_hidden: bool = False
) -> PolicyOutput:
    """Log-probs of the reply tokens under ``model`` (and optionally entropy and the state's hidden vector)."""
    A = batch.action_ids.shape[1]
    out = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
        use_cache=False, logits_to_keep=A + 1, output_hidden_states=with_hidden,
    )
    logits = out.logits[:, :A, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, batch.action_ids[..., None]).squeeze(-1)
    entropy = entropy_from_logits(logits) if with_entropy else None
    hidden = out.hidden_states[-1][:, batch.prompt_len - 1, :] if with_hidden else None
    return PolicyOutput(logprobs=logprobs, entropy=entropy, state_hidden=hidden)
