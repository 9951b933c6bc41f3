"""RLModuleBase: the RL iteration every algorithm shares, with hooks for what differs.

One training step is one RL iteration:

1. rollout (:meth:`RLModuleBase.rollout`): each task of the batch ``group_size`` times with its env seed,
   sampled from the current policy (:class:`RolloutEngine`);
2. ``build_samples(episodes)`` (the algorithm): one :class:`StepSample` per env step, with its advantage (and
   whatever else its loss needs: returns, old values);
3. ``update(samples)`` (shared): ``update.epochs`` passes over the buffer in shuffled minibatches (one optimizer
   step each, gradients averaged over DDP ranks and clipped to ``optim.max_grad_norm``), each run in
   micro-batches whose gradients accumulate. Samples are scored by unit: in ``sequence`` mode
   (``rollout.episode_mode``) the steps of a full-history episode form one sequence, scored in one forward, with
   exactly the per-step log-probs. Per micro-batch the loss is

       loss(...)  -  entropy_coef * agg(H(pi))  +  kl.coef * agg(KL(pi || pi_ref))

   where ``loss`` is the algorithm's hook and ``agg`` reduces per-token values with the *minibatch's* totals, so
   the micro-batch terms sum exactly to the minibatch loss;
4. one line of logs (the mean over optimizer steps of each logged value, rollout and throughput numbers).

A new algorithm subclasses :class:`RLModuleBase` and writes ``build_samples`` and ``loss`` (see docs/rl.md).

What else the base owns:

- the policy (loaded in ``configure_model``), the reference policy for the KL term (LoRA: the same model with
  the adapter disabled; full fine-tuning: a frozen copy, only when ``kl.coef > 0``),
- greedy validation/test on the data module's fixed panels (:class:`EpisodeMetrics`, a text table of sample
  episodes to TensorBoard),
- checkpoints: only trainable weights are stored (adapter-only with LoRA), plus Python/NumPy/torch RNG states
  and the sampling generator; the task-stream position is stored by Lightning (the stream is stateful),
- gradient averaging under DDP for several backward passes per step, and the export at the end of ``fit``;
- FSDP2 (``ModelParallelStrategy``): the policy (and the KL reference of full fine-tuning) is sharded in
  ``configure_model``; :class:`~prism_lit.rl.fsdp.FSDP2Sync` keeps its weights gathered through the rollout and
  evaluation and gives every rank the same number of micro-batches and one synchronising backward per optimizer step.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import random
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch

from prism_lit.distributed import export_sharded_policy, fsdp2_options, is_sharded
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.envs.spec import EnvMetrics, env_metrics
from prism_lit.policy import PolicySpec, export_policy, load_policy, load_tokenizer
from prism_lit.rl.config import EvalConfig, KLConfig, OptimConfig, UpdateConfig
from prism_lit.rl.evaluation import EpisodeMetrics, default_task_types
from prism_lit.rl.fsdp import FSDP2Sync, is_dtensor, load_sharded_policy, max_over_ranks
from prism_lit.rl.losses import Minibatch, kl_penalty
from prism_lit.rl.rollout import Episode, RolloutConfig, RolloutEngine, episode_table, group_tasks
from prism_lit.rl.scoring import (
    PolicyOutput,
    StepSample,
    TokenBatch,
    chain_units,
    collate_units,
    policy_forward,
)

CHECKPOINT_KEY = "prism_lit_rl"
# signature defaults (read by jsonargparse; the module works on copies, so sharing them is safe)
DEFAULT_OPTIM, DEFAULT_UPDATE, DEFAULT_KL, DEFAULT_EVAL = OptimConfig(), UpdateConfig(), KLConfig(), EvalConfig()

def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    """NumPy's RNG state as builtins, so checkpoints load with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    return (state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
            state["cached"])


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def _section(owner: type, name: str, value: Any, cls: type) -> Any:
    """A hyperparameter group as ``cls``: a dict (the pipeline passes YAML as is) is merged onto the default the
    most derived ``__init__`` declares, as jsonargparse does."""
    if isinstance(value, cls):
        return dataclasses.replace(value)  # a copy: defaults in signatures are shared instances
    default = cls()
    for klass in owner.__mro__:
        param = inspect.signature(klass.__init__).parameters.get(name) if "__init__" in vars(klass) else None
        if param is not None and isinstance(param.default, cls):
            default = param.default
            break
    if value is None:
        return dataclasses.replace(default)
    if isinstance(value, dict):
        return dataclasses.replace(default, **value)
    raise TypeError(f"{owner.__name__}: {name} must be a {cls.__name__} or a dict, got {type(value).__name__}")


class RLModuleBase(pl.LightningModule):
    """The RL iteration (see the module docstring). Subclasses write :meth:`build_samples` and :meth:`loss`.

    Args:
        policy: the model to train (path, LoRA, dtype, ...); start from the SFT export via ``adapter_path`` or
            ``path``.
        protocol: prompt format and action parsing (must match the SFT data's).
        env_id: gymnasium id; ``env_kwargs``: its kwargs (split, data paths).
        rollout: sampling temperature / top-p, max new tokens, max steps, invalid-action penalty.
        group_size: episodes per task per iteration (G).
        optim: learning rate, weight decay, gradient clipping (:class:`~prism_lit.rl.config.OptimConfig`).
        update: epochs, minibatches, micro-batch size, loss aggregation (:class:`~prism_lit.rl.config.UpdateConfig`).
        kl: KL term to the reference policy (:class:`~prism_lit.rl.config.KLConfig`).
        entropy_coef: weight of the entropy bonus.
        evaluation: greedy panel evaluation (:class:`~prism_lit.rl.config.EvalConfig`).
        export_dir: write the trained policy (HF format) here at the end of ``fit``.
        seed: seeds the rollout sampling generator (with the rank).
    """

    #: the policy forward also returns the hidden state at the last prompt token (``out.state_hidden``)
    needs_state_hidden: ClassVar[bool] = False

    def __init__(
        self,
        policy: PolicySpec,
        protocol: AgentProtocol,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        rollout: RolloutConfig | None = None,
        group_size: int = 8,
        optim: OptimConfig = DEFAULT_OPTIM,
        update: UpdateConfig = DEFAULT_UPDATE,
        kl: KLConfig = DEFAULT_KL,
        entropy_coef: float = 0.0,
        evaluation: EvalConfig = DEFAULT_EVAL,
        export_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.automatic_optimization = False
        self.policy_spec = policy if isinstance(policy, PolicySpec) else PolicySpec(**policy)
        self.protocol = protocol if isinstance(protocol, AgentProtocol) else AgentProtocol(**protocol)
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.rollout_config = rollout if isinstance(rollout, RolloutConfig) else RolloutConfig(**(rollout or {}))
        self.group_size = group_size
        owner = type(self)
        self.optim = _section(owner, "optim", optim, OptimConfig)
        self.update_config = _section(owner, "update", update, UpdateConfig)
        self.kl = _section(owner, "kl", kl, KLConfig)
        self.entropy_coef = entropy_coef
        self.evaluation = _section(owner, "evaluation", evaluation, EvalConfig)
        self.eval_task_types = self.evaluation.task_types  # None: resolved from the env at the first evaluation
        self.export_dir = export_dir
        self.seed = seed
        self.model = None
        self.ref_model = None
        self.tokenizer = None
        self._train_engine: RolloutEngine | None = None
        self._eval_engines: dict[str, RolloutEngine] = {}
        self._generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None
        self._metrics: dict[str, EpisodeMetrics] = {}
        self._samples: dict[str, list[Episode]] = {}
        self._fsdp: FSDP2Sync | None = None  # set in configure_model under ModelParallelStrategy
        self._eval_gather: ExitStack | None = None
        self._filler: StepSample | None = None  # FSDP2: the sample of zero-weight micro-batches
        self._env_metrics: EnvMetrics | None = None
        self.iteration = 0  # RL iterations (rollout + update) done
        self._save_hparams()

    def _save_hparams(self) -> None:
        """Record the init args (the subclass's too) with specs and groups as plain dicts, so checkpoints stay
        ``weights_only``-safe and ``load_from_checkpoint`` can rebuild the module."""
        frame = inspect.currentframe().f_back  # this class's __init__; Lightning walks up to the subclass's
        self.save_hyperparameters(frame=frame)
        resolved = {"policy": self.policy_spec, "rollout": self.rollout_config, "optim": self.optim,
                    "update": self.update_config, "kl": self.kl, "evaluation": self.evaluation}
        for name, value in list(self.hparams.items()):
            value = resolved.get(name, value)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.hparams[name] = dataclasses.asdict(value)
        self.hparams["protocol"] = {f.name: getattr(self.protocol, f.name)
                                    for f in dataclasses.fields(self.protocol) if not f.name.startswith("_")}

    # ------------------------------------------------------------------ algorithm hooks
    def build_samples(self, episodes: list[Episode]) -> list[StepSample]:
        """The training samples of one iteration's episodes: one per env step, with its advantage (and the value
        targets a value loss needs). Runs once per iteration, before the update; the policy is in train mode and
        may be called under ``torch.no_grad()`` (PPO computes its old values here)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_samples(episodes)")

    def loss(self, out: PolicyOutput, batch: TokenBatch, mb: Minibatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The algorithm's loss on one micro-batch: ``(loss, logs)``.

        ``out``: the current policy's log-probs (``[B, A]``), entropy and, with ``needs_state_hidden``, the hidden
        state at the last prompt token; ``batch``: the collated samples (``old_logprobs``, ``advantages``,
        ``returns``, ``old_values``, ``action_mask``). Reduce per-token terms with ``mb.aggregate`` so micro-batches
        sum to the minibatch loss. The base adds the entropy and KL terms. ``logs`` are summed over the
        micro-batches of a minibatch and averaged over optimizer steps: give aggregated terms as they are and
        weight a micro-batch mean by ``mb.share(batch.action_mask)``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement loss(out, batch, mb)")

    def skip_sample(self, sample: StepSample) -> bool:
        """True for a sample whose forward/backward may be skipped because it adds nothing to the gradient; it
        still counts in the loss's totals. Called only when no KL or entropy term needs every sample."""
        return False

    def iteration_logs(self, episodes: list[Episode], samples: list[StepSample]) -> dict[str, float]:
        """Extra numbers for the iteration's log line (``train/...``)."""
        return {}

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self._refuse_fsdp1()
        mesh = self.device_mesh
        if mesh is None:
            model, tokenizer = load_policy(self.policy_spec)
        else:  # FSDP2: one fully_shard unit per decoder layer, then the root; read on rank 0 only
            options = fsdp2_options(self._trainer.strategy) if self._trainer is not None else {}
            model, tokenizer = load_sharded_policy(self.policy_spec, mesh, **options), load_tokenizer(self.policy_spec)
            self._fsdp = FSDP2Sync(model)
        model.train()  # from_pretrained leaves eval mode; rollouts switch to eval themselves
        self.model = model
        self.tokenizer = tokenizer
        if self.kl.coef > 0 and not _is_peft(model):
            self.ref_model = (copy.deepcopy(model) if mesh is None else
                              load_sharded_policy(self.policy_spec, mesh, frozen=True, **options))
            self.ref_model.eval().requires_grad_(False)
        self.configure_extra_modules()
        if _is_peft(model) or self.ref_model is not None:
            self.strict_loading = False  # frozen weights are not in our checkpoints; they come from policy.path

    def _refuse_fsdp1(self) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if self._trainer is not None and isinstance(self._trainer.strategy, FSDPStrategy):
            raise ValueError(
                f"{type(self).__name__}: FSDPStrategy (FSDP1) is not supported by the RL modules. Use "
                "prism_lit.distributed.FSDP2Strategy (FSDP2, also on CPU) or DDP; see docs/rl.md, 'Limits and notes'."
            )

    def configure_extra_modules(self) -> None:
        """Hook for algorithm-specific modules built once the policy exists (PPO's value head)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise ValueError("RL module: the policy has no trainable parameters (check policy.lora / adapter_path)")
        return torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)

    @torch.no_grad()
    def reference_logprobs(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        """Log-probs of the reply tokens under the reference policy (the base model for LoRA)."""
        if _is_peft(self.model):
            with self.model.disable_adapter():
                return policy_forward(self.model, batch, temperature).logprobs
        if self.ref_model is None:
            raise RuntimeError("reference policy requested but kl.coef == 0 built none")
        return policy_forward(self.ref_model, batch, temperature).logprobs

    # ------------------------------------------------------------------ rollouts
    def sampling_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self.seed * 1000 + self.global_rank)
            if self._pending_generator_state is not None:
                self._generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self._generator

    def train_engine(self) -> RolloutEngine:
        if self._train_engine is None:
            self._train_engine = RolloutEngine(self.env_id, self.protocol, self.tokenizer, self.rollout_config,
                                               self.env_kwargs)
        return self._train_engine

    def eval_engine(self, env_kwargs: dict[str, Any]) -> RolloutEngine:
        key = json.dumps(env_kwargs, sort_keys=True, default=str)
        if key not in self._eval_engines:
            cfg = copy.copy(self.rollout_config)
            max_steps = self.evaluation.max_steps
            cfg.max_steps = max_steps if max_steps is not None else cfg.max_steps
            self._eval_engines[key] = RolloutEngine(self.env_id, self.protocol, self.tokenizer, cfg, env_kwargs)
        return self._eval_engines[key]

    def rollout_metrics(self, episodes: Sequence[Episode], engine: RolloutEngine) -> dict[str, float]:
        """Training-rollout numbers for the logger."""
        n = max(len(episodes), 1)
        steps = sum(len(e.steps) for e in episodes)
        stats = engine.stats
        rollout_s = stats.generation_s + stats.env_s + stats.prompt_s
        return {
            "rollout/return": sum(e.ret for e in episodes) / n,
            "rollout/success": sum(e.won for e in episodes) / n,
            "rollout/score": sum(e.score for e in episodes) / n,
            "rollout/steps": steps / n,
            "rollout/invalid_rate": sum(e.num_invalid for e in episodes) / max(steps, 1),
            "perf/generated_tokens_per_s": stats.generated_tokens / max(stats.generation_s, 1e-9),
            "perf/env_steps_per_s": stats.env_steps / max(rollout_s, 1e-9),
            "perf/generation_s": stats.generation_s,
            "perf/env_s": stats.env_s,
        }

    def env_rollout_metrics(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """The env's own training numbers of the iteration's episodes (its :class:`~prism_lit.envs.spec.EnvMetrics`,
        e.g. the instruction-following judge's precision on the policy's responses), as ``env/<name>``; a value
        that is not a finite number (a rate with nothing to count) is left out of that iteration's log."""
        if self._env_metrics is None:
            self._env_metrics = env_metrics(self.env_id)
        values = self._env_metrics.rollout([ep.info for ep in episodes])
        return {f"env/{k}": float(v) for k, v in values.items() if math.isfinite(float(v))}

    # ------------------------------------------------------------------ DDP / FSDP2 gradients
    def gathered_policy(self):
        """FSDP2: keep the policy's weights gathered inside the block (rollouts, evaluation); else nothing."""
        return self._fsdp.gathered() if self._fsdp is not None else nullcontext()

    def _ddp_model(self):
        from torch.nn.parallel import DistributedDataParallel

        wrapped = getattr(self.trainer.strategy, "model", None) if self._trainer is not None else None
        return wrapped if isinstance(wrapped, DistributedDataParallel) else None

    @contextmanager
    def no_grad_sync(self):
        """Accumulate local gradients over several backward passes (DDP would reduce after each one)."""
        ddp = self._ddp_model()
        with ddp.no_sync() if ddp is not None else nullcontext():
            yield

    def average_gradients(self) -> None:
        """Average gradients across DDP ranks once per optimizer step (pairs with :meth:`no_grad_sync`); under FSDP2
        only those of the parameters outside the sharded policy (PPO's value head): FSDP2 reduces the rest."""
        if self._ddp_model() is not None:
            params = self.trainable_parameters()
        elif self._fsdp is not None:
            params = self._fsdp.replicated(self.trainable_parameters())
        else:
            return
        if not params:
            return
        # when no rank ran a backward (every sample skipped everywhere), leave the gradients unset as one process
        # would, so the optimizer step changes nothing (zeros would still move Adam's parameters by momentum)
        if self.agreed_count(int(any(p.grad is not None for p in params))) == 0:
            return
        world = torch.distributed.get_world_size()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)

    def agreed_count(self, count: int) -> int:
        """The largest ``count`` over the ranks (DDP or FSDP2).

        Every optimizer update all-reduces gradients, so all ranks must take the same number of updates even when
        their rollout buffers differ in size; a rank with fewer samples runs empty minibatches.
        """
        if self._ddp_model() is None and self._fsdp is None:
            return count
        return max_over_ranks(count, self.device)

    def optimizer_update(self, optimizer) -> float:
        """Sync, clip (through Lightning, so precision plugins are respected; under FSDP2 sharded and replicated
        gradients together) and apply the gradients.

        Returns the gradient norm before clipping (for logging).
        """
        self.average_gradients()
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        if self._fsdp is not None:  # sharded (DTensor) and replicated gradients, one norm
            norm = self._fsdp.clip_grad_norm_(params, self.optim.max_grad_norm)
        else:
            norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf"))) if params else 0.0
            if self.optim.max_grad_norm:
                self.clip_gradients(optimizer, gradient_clip_val=self.optim.max_grad_norm,
                                    gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ the RL iteration
    def rollout(self, batch: dict[str, Any]) -> list[Episode]:
        """Play each task of the batch ``group_size`` times with its env seed, sampling from the current policy."""
        rows = group_tasks(batch["task_ids"], batch["seeds"], self.group_size)
        return self.train_engine().run(self.model, rows, generator=self.sampling_generator())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self.gathered_policy():  # FSDP2: ranks run different numbers of forwards here
            episodes = self.rollout(batch)
            samples = self.build_samples(episodes)
        summary = self.update(samples)
        self.iteration += 1
        summary.update(self.rollout_metrics(episodes, self.train_engine()))
        summary.update(self.env_rollout_metrics(episodes))
        summary.update(self.iteration_logs(episodes, samples))
        summary["train/samples"] = float(len(samples))
        summary["train/iteration"] = float(self.iteration)
        self.log_dict(summary, on_step=True, on_epoch=False, batch_size=len(episodes))

    def packs_episodes(self) -> bool:
        """Whether the update scores each run of chained steps (a full-history episode) as one sequence
        (``rollout.episode_mode``, resolved by the training engine)."""
        return self.train_engine().sequence_mode

    def units(self, samples: list[StepSample]) -> list[list[int]]:
        """The samples cut into units, each scored in one forward (see :func:`~prism_lit.rl.scoring.chain_units`)."""
        return chain_units(samples, pack=self.packs_episodes())

    def update(self, samples: list[StepSample]) -> dict[str, float]:
        """``update.epochs`` x minibatches (one optimizer step each) x micro-batches (accumulated); returns the mean
        over optimizer steps of every logged value.

        Minibatches are drawn by unit (one sample each in ``per_step`` mode; a chained episode in ``sequence``
        mode): a shuffled list of units is cut where the running step count crosses each multiple of the
        minibatch size."""
        optimizer = self.optimizers()
        size, count = self.update_config.plan(len(samples))
        if self.update_config.minibatch_size is not None:
            # every optimizer step all-reduces: the same number on every rank, empty minibatches where short
            count = self.agreed_count(count)
        units = self.units(samples)
        self._filler = samples[0] if samples else None
        logs: dict[str, list[float]] = {}
        for _ in range(self.update_config.epochs):
            order = torch.randperm(len(units), generator=self.sampling_generator(), device=self.device).tolist()
            minibatches: list[list[StepSample]] = [[] for _ in range(count)]
            seen = 0
            for u in order:
                minibatches[min(seen // size, count - 1)].extend(samples[i] for i in units[u])
                seen += len(units[u])
            for minibatch in minibatches:
                step_logs = self.minibatch_backward(minibatch)
                step_logs["train/grad_norm"] = self.optimizer_update(optimizer)
                for name, value in step_logs.items():
                    logs.setdefault(name, []).append(value)
        return {name: sum(values) / len(values) for name, values in logs.items()}

    def micro_batches(self, samples: list[StepSample]) -> list[list[list[StepSample]]]:
        """``samples`` cut into units and the units grouped into micro-batches of up to
        ``update.micro_batch_size`` steps (at least one unit each)."""
        micro_size = self.update_config.micro_batch_size
        out: list[list[list[StepSample]]] = []
        steps = micro_size
        for unit in self.units(samples):
            if steps + len(unit) > micro_size:
                out.append([])
                steps = 0
            out[-1].append([samples[i] for i in unit])
            steps += len(unit)
        return out

    def score(self, micro: list[list[StepSample]], with_entropy: bool = False,
              with_hidden: bool = False) -> tuple[TokenBatch, PolicyOutput]:
        """The collated micro-batch (on the module's device) and the policy's output on it."""
        batch = collate_units(micro, self.tokenizer.pad_token_id).to(self.device)
        out = policy_forward(self.model, batch, self.rollout_config.temperature, with_entropy=with_entropy,
                             with_hidden=with_hidden)
        return batch, out

    def scored_micro_batches(self, samples: list[StepSample], with_entropy: bool = False,
                             with_hidden: bool = False):
        """Yield ``(replies, batch, out)`` per micro-batch: the samples in the batch's reply order, the collated
        batch (on the module's device) and the policy's output on it."""
        for micro in self.micro_batches(samples):
            batch, out = self.score(micro, with_entropy, with_hidden)
            yield [s for unit in micro for s in unit], batch, out

    def minibatch_backward(self, minibatch: list[StepSample]) -> dict[str, float]:
        """Accumulate the gradient of one minibatch's loss over its micro-batches; returns the minibatch's logs.

        Under FSDP2 every rank runs the same number of micro-batches (zero-weight ones where it has fewer), and only
        the last backward reduce-scatters."""
        temperature = self.rollout_config.temperature
        regularised = self.kl.coef > 0 or self.entropy_coef != 0
        run = minibatch
        if not regularised:  # a unit is skipped when each of its steps may be
            run = [minibatch[i] for unit in self.units(minibatch)
                   if not all(self.skip_sample(minibatch[i]) for i in unit) for i in unit]
        mb = Minibatch(num_tokens=sum(len(s.action_ids) for s in minibatch), num_seqs=len(minibatch),
                       run_tokens=sum(len(s.action_ids) for s in run), run_seqs=len(run),
                       norm_length=self.rollout_config.max_new_tokens, agg=self.update_config.loss_agg)
        plan = [(units, True) for units in self.micro_batches(run)]
        if self._fsdp is not None:  # padded to the ranks' largest count; only the last backward reduce-scatters
            plan = self._fsdp.padded(plan, [[self._filler]], self.device)
        logs: dict[str, float] = {}
        with self.no_grad_sync():
            for units, real in plan:
                micro, out = self.score(units, with_entropy=True, with_hidden=self.needs_state_hidden)
                if not real:  # FSDP2 padding: a micro-batch's collectives (the reference's too), zero gradient
                    if self.kl.coef > 0:
                        self.reference_logprobs(micro, temperature)
                    self.manual_backward(out.logprobs.sum() * 0.0)
                    continue
                mask = micro.action_mask
                loss, terms = self.loss(out, micro, mb)
                entropy = mb.aggregate_run(out.entropy, mask)
                loss = loss - self.entropy_coef * entropy
                terms["train/entropy"] = entropy.item()
                if self.kl.coef > 0:
                    kl = mb.aggregate(kl_penalty(out.logprobs, self.reference_logprobs(micro, temperature),
                                                 self.kl.estimator), mask)
                    loss = loss + self.kl.coef * kl
                    terms["train/kl"] = kl.item()
                self.manual_backward(loss)
                for name, value in terms.items():
                    logs[name] = logs.get(name, 0.0) + float(value)
        return logs

    # ------------------------------------------------------------------ evaluation
    def task_types(self) -> list[str]:
        """Task types reported separately in evaluation (the same list on every rank)."""
        if self.eval_task_types is None:
            self.eval_task_types = default_task_types(self.env_id, self.env_kwargs)
        return list(self.eval_task_types)

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        panel = batch["panel"]
        engine = self.eval_engine(batch["env_kwargs"])
        rows = [(t, int(s), i) for i, (t, s) in enumerate(zip(batch["task_ids"], batch["seeds"]))]
        episodes = engine.run(self.model, rows, greedy=True)
        key = f"{stage}/{panel}"
        if key not in self._metrics:
            self._metrics[key] = EpisodeMetrics(self.task_types()).to(self.device)
            self._samples[key] = []
        self._metrics[key].update(episodes)
        room = self.evaluation.sample_episodes - len(self._samples[key])
        if room > 0:
            self._samples[key].extend(episodes[:room])

    def _eval_epoch_start(self, stage: str) -> None:
        if self._fsdp is not None:  # ranks may play different numbers of panel batches
            self._eval_gather = ExitStack()
            self._eval_gather.enter_context(self.gathered_policy())
        names = getattr(self.trainer.datamodule, "eval_panel_names", None) if self._trainer else None
        for name in names or []:  # same metric objects on every rank, even one without batches of a panel
            key = f"{stage}/{name}"
            self._metrics[key] = EpisodeMetrics(self.task_types()).to(self.device)
            self._samples[key] = []

    def _eval_epoch_end(self, stage: str) -> None:
        if self._eval_gather is not None:
            self._eval_gather.close()
            self._eval_gather = None
        for key in sorted(k for k in self._metrics if k.startswith(f"{stage}/")):
            metric = self._metrics[key]
            values = metric.compute()
            self.log_dict({f"{key}/{name}": value for name, value in values.items()}, sync_dist=False,
                          rank_zero_only=False)
            experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
            if self._samples.get(key) and hasattr(experiment, "add_text"):
                experiment.add_text(f"{key}/episodes", episode_table(self._samples[key]), self.global_step)
            metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start("val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start("test")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        state = checkpoint["state_dict"]
        # a sharded (DCP) checkpoint keeps every entry: Lightning loads it by the module's whole state dict
        if (_is_peft(self.model) or self.ref_model is not None) and not any(map(is_dtensor, state.values())):
            for key in list(state):
                if key.startswith("ref_model.") or (key not in trainable and key.startswith("model.")):
                    del state[key]
        checkpoint[CHECKPOINT_KEY] = {
            "iteration": self.iteration,
            "python_rng": random.getstate(),
            "numpy_rng": _numpy_state_to_plain(np.random.get_state()),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "sampling_generator": self._generator.get_state() if self._generator is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        saved = checkpoint.get("state_dict")  # None under FSDP2Strategy: it loads (and removes) it before this hook
        missing = [] if saved is None else [n for n, p in self.named_parameters() if p.requires_grad and n not in saved]
        if missing:
            raise KeyError(f"resume: the checkpoint lacks trainable weights {missing[:5]} (different LoRA settings?)")
        self.iteration = int(state["iteration"])
        random.setstate(state["python_rng"])
        np.random.set_state(_numpy_state_from_plain(state["numpy_rng"]))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if state.get("sampling_generator") is not None:
            self._generator = None
            self._pending_generator_state = state["sampling_generator"]

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str) -> None:
        """Write the policy (adapter or full model) and tokenizer in HF format to ``out_dir``. Sharded: every rank
        calls it (a gather of the weights), rank 0 writes."""
        if is_sharded(self.model):
            export_sharded_policy(self.trainer.strategy.model, self.model, self.tokenizer, out_dir)
        else:
            export_policy(self.model, self.tokenizer, out_dir)

    def on_fit_end(self) -> None:
        if self.export_dir and is_sharded(self.model):
            self.export(self.export_dir)
            self.trainer.strategy.barrier("rl_export")
        elif self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)

    def teardown(self, stage: str) -> None:
        for engine in [self._train_engine, *self._eval_engines.values()]:
            if engine is not None:
                engine.close()
        self._train_engine = None
        self._eval_engines = {}
