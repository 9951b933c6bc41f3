"""What every RL module shares, so each algorithm file holds only its algorithm.

- the policy (loaded in ``configure_model``), the reference policy for the KL term (LoRA: the same model with
  the adapter disabled; full fine-tuning: a frozen copy, only when ``kl_coef > 0``),
- rollouts (:class:`RolloutEngine`) with a seeded sampling generator,
- greedy validation/test on the data module's fixed panels (:class:`EpisodeMetrics`, a text table of sample
  episodes to TensorBoard),
- checkpoints: only trainable weights are stored (adapter-only with LoRA), plus Python/NumPy/torch RNG states
  and the sampling generator; the task-stream position is stored by Lightning (the stream is stateful),
- gradient averaging under DDP for several backward passes per step, and the export at the end of ``fit``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec, export_policy, load_policy
from prism_lit.rl.evaluation import EpisodeMetrics, default_task_types
from prism_lit.rl.rollout import Episode, RolloutConfig, RolloutEngine, episode_table
from prism_lit.rl.scoring import TokenBatch, policy_forward

CHECKPOINT_KEY = "prism_lit_rl"


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    """NumPy's RNG state as builtins, so checkpoints load with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    return (state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
            state["cached"])


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class RLModuleBase(pl.LightningModule):
    """Shared machinery of :class:`ReinforceModule` and :class:`PPOModule` (see the module docstring)."""

    def __init__(
        self,
        policy: PolicySpec,
        protocol: AgentProtocol,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        rollout: RolloutConfig | None = None,
        group_size: int = 8,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        micro_batch_size: int = 8,
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
        entropy_coef: float = 0.0,
        eval_max_steps: int | None = None,
        eval_task_types: list[str] | None = None,
        sample_episodes: int = 4,
        export_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.automatic_optimization = False
        self.policy_spec = policy if isinstance(policy, PolicySpec) else PolicySpec(**policy)
        self.protocol = protocol if isinstance(protocol, AgentProtocol) else AgentProtocol(**protocol)
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.rollout_config = rollout if isinstance(rollout, RolloutConfig) else RolloutConfig(**(rollout or {}))
        self.group_size = group_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.micro_batch_size = micro_batch_size
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.entropy_coef = entropy_coef
        self.eval_max_steps = eval_max_steps
        self.eval_task_types = eval_task_types  # None: resolved from the env at the first evaluation
        self.sample_episodes = sample_episodes
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
        self.iteration = 0  # RL iterations (rollout + update) done

    def save_specs_as_hparams(self) -> None:
        """Record the init args with the dataclass specs as plain dicts (checkpoints stay ``weights_only``-safe)."""
        self.save_hyperparameters(ignore=["policy", "protocol", "rollout"])
        self.hparams["policy"] = dataclasses.asdict(self.policy_spec)
        self.hparams["protocol"] = {f.name: getattr(self.protocol, f.name)
                                    for f in dataclasses.fields(self.protocol) if not f.name.startswith("_")}
        self.hparams["rollout"] = dataclasses.asdict(self.rollout_config)

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        model, tokenizer = load_policy(self.policy_spec)
        model.train()  # from_pretrained leaves eval mode; rollouts switch to eval themselves
        self.model = model
        self.tokenizer = tokenizer
        if self.kl_coef > 0 and not _is_peft(model):
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.configure_extra_modules()
        if _is_peft(model) or self.ref_model is not None:
            self.strict_loading = False  # frozen weights are not in our checkpoints; they come from policy.path

    def configure_extra_modules(self) -> None:
        """Hook for algorithm-specific modules built once the policy exists (PPO's value head)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise ValueError("RL module: the policy has no trainable parameters (check policy.lora / adapter_path)")
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    @torch.no_grad()
    def reference_logprobs(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        """Log-probs of the reply tokens under the reference policy (the base model for LoRA)."""
        if _is_peft(self.model):
            with self.model.disable_adapter():
                return policy_forward(self.model, batch, temperature).logprobs
        if self.ref_model is None:
            raise RuntimeError("reference policy requested but kl_coef == 0 built none")
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
            cfg.max_steps = self.eval_max_steps if self.eval_max_steps is not None else cfg.max_steps
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

    # ------------------------------------------------------------------ DDP gradients
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
        """Average gradients across DDP ranks once per optimizer step (pairs with :meth:`no_grad_sync`)."""
        if self._ddp_model() is None:
            return
        world = torch.distributed.get_world_size()
        for p in self.trainable_parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)

    def agreed_count(self, count: int) -> int:
        """The largest ``count`` over the DDP ranks.

        Every optimizer update all-reduces gradients, so all ranks must take the same number of updates even when
        their rollout buffers differ in size; a rank with fewer samples runs empty minibatches.
        """
        if self._ddp_model() is None:
            return count
        value = torch.tensor([count], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return int(value.item())

    def optimizer_update(self, optimizer) -> float:
        """Sync, clip (through Lightning, so precision plugins and FSDP are respected) and apply the gradients.

        Returns the gradient norm before clipping (for logging).
        """
        self.average_gradients()
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf"))) if params else 0.0
        if self.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

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
        room = self.sample_episodes - len(self._samples[key])
        if room > 0:
            self._samples[key].extend(episodes[:room])

    def _eval_epoch_start(self, stage: str) -> None:
        names = getattr(self.trainer.datamodule, "eval_panel_names", None) if self._trainer else None
        for name in names or []:  # same metric objects on every rank, even one without batches of a panel
            key = f"{stage}/{name}"
            self._metrics[key] = EpisodeMetrics(self.task_types()).to(self.device)
            self._samples[key] = []

    def _eval_epoch_end(self, stage: str) -> None:
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
        if _is_peft(self.model) or self.ref_model is not None:
            state = checkpoint["state_dict"]
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
        missing = [n for n, p in self.named_parameters() if p.requires_grad and n not in checkpoint["state_dict"]]
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
        """Write the policy (adapter or full model) and tokenizer in HF format to ``out_dir``."""
        export_policy(self.model, self.tokenizer, out_dir)

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)

    def teardown(self, stage: str) -> None:
        for engine in [self._train_engine, *self._eval_engines.values()]:
            if engine is not None:
                engine.close()
        self._train_engine = None
        self._eval_engines = {}
