"""SFTModule: supervised fine-tuning of the policy on expert trajectories (assistant tokens only).

The loss is the mean next-token cross-entropy over the batch's trained tokens (labels != -100), weighted per token
when the batch carries ``loss_weights`` (``TrajectoryDataModule(context_weight=...)``). While the
PRISM probe callback holds ``probing = True`` the step returns ``None``: Lightning then runs no backward and no
optimizer step, so the probe epoch leaves the weights untouched.

Checkpoints hold only the trainable parameters when the policy is a LoRA adapter (litgpt's adapter-only
habit); at the end of ``fit`` the adapter (or the full model) and the tokenizer are exported in Hugging Face
format to ``export_dir``, loadable with ``PeftModel.from_pretrained`` / ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from prism_lit.distributed import (
    apply_fsdp2,
    clean_param_name,
    export_sharded_policy,
    fsdp2_options,
    is_fsdp2_sharded,
    is_sharded,
    load_sharded_fsdp2,
)
from prism_lit.errors import ConfigError
from prism_lit.policy import (
    EmbeddedModelSpec,
    LoraSpec,
    PolicySpec,
    build_model_skeleton,
    ensure_policy_files,
    export_policy,
    load_model,
    load_tokenizer,
)
from prism_lit.policy.loading import check_policy_files
from prism_lit.sft.loss import causal_lm_loss

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "linear", "cosine")


@rank_zero_only
def _warn(message: str) -> None:
    log.warning(message)


def check_optimizer_settings(lr: float, weight_decay: float, betas, warmup_steps: int, schedule: str,
                             min_lr_ratio: float, prefix: str | None = None) -> None:
    """Refuse settings that cannot train and warn about the one that trains nothing (``lr: 0``).

    ``prefix`` is how the caller's user names these settings (``sft.`` in a pipeline); by default the message names
    the SFTModule argument and its ``prism-lit fit`` option, ``model.init_args.<name>``.
    """
    def name_of(name: str) -> str:
        return f"{prefix}{name}" if prefix is not None else f"SFTModule {name} (model.init_args.{name})"

    def bad(name: str, need: str, value: Any) -> ConfigError:
        return ConfigError(f"{name_of(name)} must be {need}, got {value!r}")

    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise bad("lr", "a finite number >= 0", lr)
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise bad("weight_decay", "a finite number >= 0", weight_decay)
    if len(tuple(betas)) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise bad("betas", "two numbers in [0, 1)", betas)
    if warmup_steps < 0:
        raise bad("warmup_steps", ">= 0", warmup_steps)
    if schedule not in SCHEDULES:
        raise bad("schedule", f"one of {', '.join(SCHEDULES)}", schedule)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise bad("min_lr_ratio", "in [0, 1]", min_lr_ratio)
    if lr == 0:
        _warn(f"{name_of('lr')} is 0: every optimizer step leaves the weights unchanged, so training exports the "
              "starting weights. Set lr > 0 to train.")


# the saved hyper-parameters hold these dataclasses; resuming loads checkpoints with torch.load(weights_only=True)
torch.serialization.add_safe_globals([PolicySpec, LoraSpec, EmbeddedModelSpec])


class SFTModule(L.LightningModule):
    """Supervised fine-tuning.

    Args:
        policy: the model to train (local path, LoRA or full, dtype; see docs/policy.md).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        schedule: ``constant``, ``linear`` or ``cosine`` decay after warm-up (over ``trainer.max_steps`` or the
            estimated stepping batches).
        min_lr_ratio: floor of the decayed learning rate as a share of ``lr``.
        export_dir: where the trained adapter/model is exported at the end of fit; ``None`` = the log dir's
            ``export/``.
        logits_chunk_tokens: trained positions projected onto the vocabulary at a time by the loss
            (:func:`prism_lit.sft.loss.causal_lm_loss`; no ``[B, T, V]`` logits); ``None`` = the model's own full
            logits (Hugging Face's ``labels=`` loss), kept as a reference.
    """

    def __init__(
        self,
        policy: PolicySpec,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        schedule: Literal["constant", "linear", "cosine"] = "constant",
        min_lr_ratio: float = 0.1,
        export_dir: str | None = None,
        logits_chunk_tokens: int | None = 1024,
    ) -> None:
        super().__init__()
        check_optimizer_settings(lr, weight_decay, betas, warmup_steps, schedule, min_lr_ratio)
        self.save_hyperparameters()
        self.policy = policy
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.schedule, self.min_lr_ratio = warmup_steps, schedule, min_lr_ratio
        self.export_dir = export_dir
        if logits_chunk_tokens is not None and logits_chunk_tokens < 1:
            raise ValueError(f"SFTModule.logits_chunk_tokens must be >= 1 or None, got {logits_chunk_tokens!r}")
        self.logits_chunk_tokens = logits_chunk_tokens
        self.model: torch.nn.Module | None = None
        self._tokenizer = None
        self.probing = False
        self.strict_loading = False  # adapter-only checkpoints hold a subset of the state dict
        self._step_started: float | None = None

    # ------------------------------------------------------------------ model
    def prepare_data(self) -> None:
        # the model's files and its tokenizer (chat template included) are checked here, before the Trainer's
        # setup creates log directories: a bad model directory fails before anything is written
        _ = self.tokenizer

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            ensure_policy_files(self.policy)
            check_policy_files(self.policy)  # a damaged model dir is named before a library error hides it
            self._tokenizer = load_tokenizer(self.policy)
        return self._tokenizer

    def configure_model(self) -> None:
        options = fsdp2_options(self._trainer.strategy) if self._trainer is not None else {}
        if self.model is None and self.device_mesh is not None:
            # ModelParallelStrategy: FSDP2, one fully_shard unit per decoder layer, then the root; the full model
            # is read on rank 0 only and broadcast shard by shard (docs/scaling.md)
            ensure_policy_files(self.policy)
            self.model = load_sharded_fsdp2(lambda: load_model(self.policy), lambda: build_model_skeleton(self.policy),
                                            self.device_mesh, **options)
        if self.model is None:
            self.model = load_model(self.policy)
        self.model.train()  # from_pretrained returns eval mode
        if self.device_mesh is not None and not is_fsdp2_sharded(self.model):
            apply_fsdp2(self.model, self.device_mesh, **options)

    @property
    def is_adapter(self) -> bool:
        return hasattr(self.model, "peft_config")

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int):
        if self.probing:
            return None
        now = time.perf_counter()
        loss = self.loss(batch)
        tokens = int(batch["attention_mask"].sum())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        self.log("train/tokens", float(tokens), reduce_fx="sum", batch_size=1)
        if self._step_started is not None:
            elapsed = now - self._step_started
            if elapsed > 0:
                self.log("train/tokens_per_s", tokens / elapsed, prog_bar=True, batch_size=1)
        self._step_started = now
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        return loss

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean next-token cross-entropy over the trained tokens, ``Σ w·CE / Σ w`` when the batch carries
        ``loss_weights``; in chunks of ``logits_chunk_tokens`` positions (module docstring)."""
        if self.logits_chunk_tokens is None:
            if "loss_weights" in batch:
                return self.weighted_loss(batch)
            return self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        return causal_lm_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                              batch.get("loss_weights"), self.logits_chunk_tokens)

    def weighted_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Next-token cross-entropy, sum(weight × CE) / sum(weight) over the trained tokens, from full logits."""
        logits = self(batch["input_ids"], batch["attention_mask"]).logits[:, :-1].float()
        targets, weights = batch["labels"][:, 1:], batch["loss_weights"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        weights = weights * (targets != -100)
        return (ce * weights).sum() / weights.sum().clamp_min(1e-8)

    def validation_step(self, batch: dict[str, Any], batch_idx: int):
        loss = self.loss({k: batch[k] for k in ("input_ids", "attention_mask", "labels")})  # unweighted
        n_trained = int((batch["labels"][:, 1:] != -100).sum())
        self.log("val/loss", loss, prog_bar=True, batch_size=max(n_trained, 1), sync_dist=True)
        return loss

    test_step = validation_step

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"policy {self.policy.path!r}: no parameter requires a gradient, so SFT has nothing "
                              "to train.", hint="Train the full model (policy.lora: null) or a LoRA adapter.")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, betas=self.betas,
        )
        if self.schedule == "constant" and self.warmup_steps == 0:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if self.warmup_steps >= total:
            _warn(f"SFTModule warmup_steps={self.warmup_steps} is not below the {total} optimizer steps of "
                  f"this run: the learning rate never reaches lr={self.lr}. Lower warmup_steps.")
        warmup, floor, kind = self.warmup_steps, self.min_lr_ratio, self.schedule

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if kind == "constant":
                return 1.0
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            shape = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
            return floor + (1.0 - floor) * shape

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.is_adapter:
            # FSDP1 names parameters through its wrappers; checkpoint keys are the clean names
            trainable = {f"model.{clean_param_name(n)}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def _probe_only(self) -> bool:
        return any(type(c).__name__ == "GradientConcentrationProbe" for c in self.trainer.callbacks)

    def resolved_export_dir(self) -> str:
        if self.export_dir is not None:
            return self.export_dir
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return f"{root}/export"

    def on_fit_end(self) -> None:
        if self.trainer.global_step == 0 and not self._probe_only():
            _warn("SFT ran 0 optimizer steps (no training batch, or max_steps/max_epochs 0): nothing was trained and "
                  "nothing is exported.")
        if self.trainer.global_step > 0:  # a probe-only run has nothing to export
            out_dir = self.resolved_export_dir()  # every rank: trainer.log_dir is a broadcast
            if is_sharded(self.model):  # FSDP: every rank joins the gather, rank 0 writes
                export_sharded_policy(self.trainer.strategy.model, self.model, self.tokenizer, out_dir)
            elif self.trainer.is_global_zero:
                export_policy(self.model, self.tokenizer, out_dir)
        self.trainer.strategy.barrier("sft_export")
