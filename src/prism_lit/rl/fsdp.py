"""What the RL loop needs from FSDP2 (``ModelParallelStrategy`` / :class:`~prism_lit.distributed.FSDP2Strategy`).

FSDP2 all-gathers a unit's weights in its forward (and again in its backward) and reduce-scatters its gradients at
the end of a backward: collectives that every rank must enter the same number of times. An RL iteration breaks that
twice, and :class:`FSDP2Sync` mends both:

- the rollout (and PPO's value pass, and greedy evaluation) runs a different number of forwards per rank (episodes
  end at different turns, replies at different tokens): :meth:`FSDP2Sync.gathered` all-gathers every unit of the
  policy once, keeps the weights gathered for the whole rollout, and reshards after;
- the update runs each rank's own number of micro-batches: :meth:`FSDP2Sync.padded` adds zero-weight micro-batches
  until every rank has the largest count, and turns FSDP2's reduce-scatter off for all but the last micro-batch of
  a minibatch, so each optimizer step has exactly one synchronising backward per rank (the strategy's own reducer:
  FSDP2's reduce-scatter, averaged over ranks).

Parameters outside the sharded policy (PPO's value head) are plain, replicated tensors: the module averages their
gradients itself. :meth:`FSDP2Sync.clip_grad_norm_` clips sharded and replicated gradients together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The ``fully_shard`` units of ``model`` (the decoder layers and the root)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def max_over_ranks(count: int, device: torch.device) -> int:
    """The largest ``count`` over the ranks of the default process group (a collective)."""
    value = torch.tensor([count], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return int(value.item())


def load_sharded_policy(spec, device_mesh, frozen: bool = False, **fsdp_kwargs: Any) -> nn.Module:
    """``spec``'s model sharded with :func:`~prism_lit.distributed.apply_fsdp2`, read on rank 0 only
    (:func:`~prism_lit.distributed.load_sharded_fsdp2`). ``frozen``: no parameter requires a gradient and every unit
    reshards after its forward (the KL reference has no backward that would reshard the root)."""
    from prism_lit.distributed import load_sharded_fsdp2
    from prism_lit.policy import build_model_skeleton, ensure_policy_files, load_model

    def prepare(model: nn.Module) -> nn.Module:
        return model.requires_grad_(False) if frozen else model

    ensure_policy_files(spec)
    model = load_sharded_fsdp2(lambda: prepare(load_model(spec)), lambda: prepare(build_model_skeleton(spec)),
                               device_mesh, **fsdp_kwargs)
    if frozen:
        model.set_reshard_after_forward(True)
    return model


class FSDP2Sync:
    """The FSDP2 side of :class:`~prism_lit.rl.base.RLModuleBase` for a policy sharded with
    :func:`~prism_lit.distributed.apply_fsdp2` (decoder layers reshard after forward, the root does not)."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy
        self.units = fsdp_units(policy)

    @contextmanager
    def gathered(self):
        """Keep the policy's weights gathered inside the block: its forwards then communicate nothing, so ranks may
        run different numbers of them. Costs the full weights (in FSDP2's ``param_dtype``) on every rank."""
        for unit in self.units:
            unit.unshard()
        self.policy.set_reshard_after_forward(False)
        try:
            yield
        finally:
            for unit in self.units:
                unit.set_reshard_after_forward(unit is not self.policy, recurse=False)  # as apply_fsdp2 set them
                unit.reshard()

    def padded(self, plan: list[tuple[Any, bool]], filler: Any, device: torch.device):
        """Yield ``plan``'s ``(micro_batch, real)`` pairs, then ``(filler, False)`` until every rank has as many as the
        rank with the most; FSDP2 reduce-scatters in the last backward only (the others accumulate unsharded)."""
        total = max_over_ranks(len(plan), device)
        for k in range(total):
            self.policy.set_requires_gradient_sync(k == total - 1)
            yield plan[k] if k < len(plan) else (filler, False)

    @staticmethod
    def replicated(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        """The parameters FSDP2 does not shard (and so does not reduce): those outside the sharded policy."""
        return [p for p in params if not is_dtensor(p)]

    @staticmethod
    def clip_grad_norm_(params: Sequence[nn.Parameter], max_norm: float | None) -> float:
        """The total gradient 2-norm of sharded and replicated parameters (the shards' squared norms summed over ranks
        in one all-reduce), then ``torch.nn.utils.clip_grad_norm_``'s scaling when ``max_norm`` is set."""
        grads = [p.grad for p in params if p.grad is not None]
        sharded = [g for g in grads if is_dtensor(g)]
        square = 0.0
        if sharded:  # every rank has gradients or none has (the update's plan is the same on every rank)
            local = torch.stack([torch.linalg.vector_norm(g.to_local(), dtype=torch.float32) for g in sharded])
            local = local.pow(2).sum()
            torch.distributed.all_reduce(local, group=sharded[0].device_mesh.get_group())
            square += float(local)
        square += sum(float(torch.linalg.vector_norm(g, dtype=torch.float32)) ** 2 for g in grads if not is_dtensor(g))
        norm = square ** 0.5
        if max_norm is not None and max_norm / (norm + 1e-6) < 1.0:
            for g in grads:
                g.mul_(max_norm / (norm + 1e-6))
        return norm
