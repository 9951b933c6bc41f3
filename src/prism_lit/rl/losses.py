"""Loss terms of the RL modules, on padded ``[batch, action_len]`` tensors with a 0/1 ``mask`` of real action tokens.

Aggregation takes the *minibatch* totals (``num_tokens``, ``num_seqs``) so that summing the contributions of
several micro-batches (gradient accumulation) gives exactly the loss of the whole minibatch:

- ``token-mean``: sum over all tokens / number of tokens in the minibatch (DAPO, verl's default).
- ``seq-mean-token-sum``: per sequence, the sum over its tokens; mean over sequences.
- ``seq-mean-token-mean``: per sequence, the mean over its tokens; mean over sequences (original GRPO).
- ``seq-mean-token-sum-norm``: token sum per sequence divided by ``norm_length``; mean over sequences (Dr. GRPO).

A "sequence" is one reply (one env step's action tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossAggregation = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS = ("k1", "k2", "k3")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_length: float | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values`` to a scalar (see the module docstring); totals default to this batch's."""
    mask = mask.to(values.dtype)
    num_tokens = float(mask.sum()) if num_tokens is None else float(num_tokens)
    num_seqs = float(values.shape[0]) if num_seqs is None else float(num_seqs)
    if mode == "token-mean":
        return (values * mask).sum() / max(num_tokens, 1.0)
    per_seq = (values * mask).sum(dim=-1)
    if mode == "seq-mean-token-sum":
        return per_seq.sum() / max(num_seqs, 1.0)
    if mode == "seq-mean-token-mean":
        return (per_seq / mask.sum(dim=-1).clamp(min=1.0)).sum() / max(num_seqs, 1.0)
    if mode == "seq-mean-token-sum-norm":
        if norm_length is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_length (e.g. max_new_tokens)")
        return (per_seq / float(norm_length)).sum() / max(num_seqs, 1.0)
    raise ValueError(f"loss aggregation {mode!r} is unknown; choose one of {AGGREGATIONS}")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    mode: LossAggregation = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_length: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate ``max(-A r, -A clip(r, 1-clip_low, 1+clip_high))`` per token, aggregated.

    ``advantages`` is ``[batch]`` (broadcast over the reply) or ``[batch, len]``. Returns the loss and, for
    logging, the clip fraction and the ``k3`` estimate of KL(old || new) over the tokens of this batch.
    """
    clip_high = clip_low if clip_high is None else clip_high
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, mask, mode, num_tokens, num_seqs, norm_length)
    with torch.no_grad():
        m = mask.to(per_token.dtype)
        n = m.sum().clamp(min=1.0)
        stats = {
            "clipfrac": ((clipped > unclipped).to(m.dtype) * m).sum() / n,
            "approx_kl": ((ratio - 1.0 - log_ratio) * m).sum() / n,
            "ratio_mean": (ratio * m).sum() / n,
        }
    return loss, stats


@dataclass(frozen=True)
class Minibatch:
    """Totals of the minibatch a micro-batch belongs to; :meth:`aggregate` reduces with them, so summing the
    micro-batch values gives exactly the minibatch's (gradient accumulation changes nothing).

    ``num_tokens`` / ``num_seqs`` count every step of the minibatch, those not run because the algorithm skips them
    (:meth:`~prism_lit.rl.base.RLModuleBase.skip_sample`) included; ``run_tokens`` counts the reply tokens actually run.
    """

    num_tokens: int
    num_seqs: int
    run_tokens: int
    run_seqs: int
    norm_length: int
    agg: LossAggregation

    def aggregate(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reduce per-token ``values`` (``[B, A]``, ``mask`` = real reply tokens) with ``update.loss_agg``."""
        return aggregate(values, mask, self.agg, self.num_tokens, self.num_seqs, self.norm_length)

    def aggregate_run(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same over the steps that were run only (for terms skipped steps must not dilute)."""
        return aggregate(values, mask, self.agg, self.run_tokens, self.run_seqs, self.norm_length)

    def share(self, mask: torch.Tensor) -> float:
        """This micro-batch's share of the run tokens: weights a per-micro-batch mean for logging."""
        return float(mask.sum()) / max(self.run_tokens, 1)


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    mb: Minibatch, clip_low: float = 0.2, clip_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`clipped_policy_loss` of one micro-batch with its minibatch's totals, and its logs
    (``train/pg_loss``; clip fraction, approximate KL and mean ratio weighted by the micro-batch's token share)."""
    loss, stats = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, mb.agg,
                                      mb.num_tokens, mb.num_seqs, mb.norm_length)
    share = mb.share(mask)
    return loss, {"train/pg_loss": loss.item(), **{f"train/{k}": float(v) * share for k, v in stats.items()}}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs (Schulman's k1/k2/k3).

    k1 = log p - log q; k2 = (log p - log q)^2 / 2; k3 = q/p - 1 - log(q/p) (unbiased, always >= 0).
    """
    diff = logprobs - ref_logprobs
    if estimator == "k1":
        return diff
    if estimator == "k2":
        return 0.5 * diff.pow(2)
    if estimator == "k3":
        log_q_over_p = (-diff).clamp(-20.0, 20.0)
        return log_q_over_p.exp() - 1.0 - log_q_over_p
    raise ValueError(f"KL estimator {estimator!r} is unknown; choose 'k1', 'k2' or 'k3'")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dimension, per position (fp32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None = 0.2
) -> torch.Tensor:
    """Per-sample PPO value loss ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`` (unclipped if None)."""
    unclipped = (values - returns).pow(2)
    if clip is None:
        return 0.5 * unclipped
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum(unclipped, (clipped_values - returns).pow(2))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: float | torch.Tensor = 0.0,
    gamma: float = 1.0, lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over one trajectory of T steps; returns ``(advantages, returns)``.

    ``dones[t]`` = the episode ended at step t (no bootstrap past it); ``last_value`` bootstraps after the last
    step when it did not end (a truncated rollout).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(values, dtype=torch.float64)
    next_value = torch.as_tensor(last_value, dtype=torch.float64)
    running = torch.zeros((), dtype=torch.float64)
    for t in range(T - 1, -1, -1):
        nonterminal = 1.0 - float(dones[t])
        delta = float(rewards[t]) + gamma * next_value * nonterminal - float(values[t])
        running = delta + gamma * lam * nonterminal * running
        adv[t] = running
        next_value = torch.as_tensor(float(values[t]), dtype=torch.float64)
    adv = adv.to(values.dtype)
    return adv, adv + values
