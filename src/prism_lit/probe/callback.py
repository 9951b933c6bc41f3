"""GradientConcentrationProbe: the PRISM probe as a Lightning callback.

During the first `probe_epochs` epochs the callback sets `pl_module.probing = True` (the module's
training_step then returns None: no backward, no optimizer step) and switches the module to manual
optimization for those epochs: Lightning refuses a None step under DDP in automatic optimization, and in
manual mode no optimizer or scheduler steps and global_step stays 0. It measures, in on_train_batch_start,
each sample's per-unit gradient norms on the untouched base model (its own forward + backward, no
parameter gradient; see unit_norms.py). At the end of the last probe epoch the records of all ranks are
gathered on rank 0, deduplicated by id, routed, and written to the run directory (probe.jsonl,
probe_meta.json, probe_histogram.png, partition.json); then a barrier, so a DataModule reading
partition.json on reload (reload_dataloaders_every_n_epochs=1) serves D_SFT from the next epoch on.

If a valid partition.json is already in the run directory when fit starts (a resumed or repeated run),
nothing is probed and `probing` stays False from the first epoch on.

Memory and precision: the probe runs under the trainer's precision context (``bf16-mixed`` autocasts it as it
autocasts a training step); with ``activation_checkpointing`` (default: when the policy was loaded with
``gradient_checkpointing``) each decoder layer is recomputed in the probe's backward; the loss is computed from
the final hidden states in chunks of ``logits_chunk_tokens`` positions; and the DataModule's ``max_tokens`` bounds
the padded tokens of a batch. Per-GPU peaks: ``prism-lit memory`` (docs/scaling.md).

Sharding: under DDP and FSDP2 the HF model is called directly (FSDP2's root is the HF model, whose own forward
gathers the embeddings and LM head). Under FSDP1 (Lightning's ``FSDPStrategy``) the root FSDP unit is the
LightningModule, so the probe's forward is routed through it (Lightning's forward redirection, as for
``training_step``): the root gathers its flat parameter (embeddings, final norm, LM head) and registers the hooks
that clean up after the backward.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger

from prism_lit.probe.partition import Partition, PartitionFormatError, load_partition
from prism_lit.probe.plots import score_histogram_figure
from prism_lit.probe.records import ProbeRecord, records_from_norms
from prism_lit.probe.routers import PrismRouter, Router
from prism_lit.probe.runner import (
    PARTITION_FILE,
    dedupe_records,
    finalize_probe,
    histogram_score,
)
from prism_lit.probe.unit_norms import ForwardRunner, measure_unit_grad_norms

__all__ = ["GradientConcentrationProbe"]

log = logging.getLogger(__name__)


class GradientConcentrationProbe(L.Callback):
    """Probe epoch(s) → probe records → router → partition.json in the run directory.

    Args:
        router: how records become D_SFT / D_RL (default: PrismRouter(score="gini", rl_fraction=0.5)).
        probe_epochs: epochs spent probing at the start of fit (each measures the same frozen model; the
            partition comes from the last). `max_epochs == probe_epochs` is a probe-only run.
        output_dir: run directory for the probe files; default the trainer's log_dir (or default_root_dir).
        units: name patterns of the probed linear layers (default: q,k,v,o,gate,up,down projections).
        model_attr: attribute of the LightningModule holding the HF model.
        activation_checkpointing: recompute each decoder layer in the probe's backward (memory: the layers'
            inputs instead of all their activations; same norms). ``None``: when the model was set up with
            gradient checkpointing.
        logits_chunk_tokens: positions projected onto the vocabulary at a time (no full logits).
    """

    def __init__(
        self,
        router: Router | None = None,
        probe_epochs: int = 1,
        output_dir: str | None = None,
        units: list[str] | None = None,
        model_attr: str = "model",
        activation_checkpointing: bool | None = None,
        logits_chunk_tokens: int = 1024,
    ) -> None:
        if probe_epochs < 1:
            raise ValueError(f"probe_epochs must be >= 1, got {probe_epochs}")
        self.router = router if router is not None else PrismRouter()
        self.probe_epochs = probe_epochs
        self.output_dir = output_dir
        self.units = list(units) if units is not None else None
        self.model_attr = model_attr
        if logits_chunk_tokens < 1:
            raise ValueError(f"logits_chunk_tokens must be >= 1, got {logits_chunk_tokens}")
        self.activation_checkpointing = activation_checkpointing
        self.logits_chunk_tokens = logits_chunk_tokens
        self.partition: Partition | None = None
        self._run_dir: Path | None = None
        self._skip = False
        self._active = False
        self._records: list[ProbeRecord] = []
        self._unit_names: list[str] = []
        self._seconds = 0.0
        self._automatic: bool | None = None

    # ------------------------------------------------------------------ set-up
    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            raise RuntimeError("GradientConcentrationProbe: the run directory is known from fit start on")
        return self._run_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "probing"):
            raise AttributeError(
                f"GradientConcentrationProbe: {type(pl_module).__name__} has no `probing` attribute; the "
                "module must skip its training step (return None) while `probing` is True"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        root = self.output_dir or trainer.log_dir or trainer.default_root_dir
        self._run_dir = Path(trainer.strategy.broadcast(str(root), src=0))
        existing = self._run_dir / PARTITION_FILE
        skip = False
        if trainer.is_global_zero and existing.exists():
            try:
                self.partition = load_partition(existing)
                skip = True
            except PartitionFormatError as err:
                log.warning("probe: %s is not a valid partition (%s); probing again", existing, err)
        self._skip = bool(trainer.strategy.broadcast(skip, src=0))
        if self._skip:
            self.partition = trainer.strategy.broadcast(self.partition, src=0)
            log.info("probe: %s exists; using it, no probe epoch", existing)
        elif trainer.current_epoch >= self.probe_epochs:
            log.warning(
                "probe: resuming at epoch %d, past the probe epoch(s), but %s is missing: nothing will be "
                "probed and the DataModule serves every trajectory",
                trainer.current_epoch,
                existing,
            )
        if not isinstance(getattr(pl_module, self.model_attr, None), torch.nn.Module):
            raise AttributeError(
                f"GradientConcentrationProbe: {type(pl_module).__name__}.{self.model_attr} "
                "is not a torch module"
            )

    # ------------------------------------------------------------------ probe epoch
    def _is_probe_epoch(self, trainer: L.Trainer) -> bool:
        return not self._skip and trainer.current_epoch < self.probe_epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = self._is_probe_epoch(trainer)
        pl_module.probing = self._active
        if self._active:
            self._records, self._seconds = [], 0.0
            self._automatic = pl_module.automatic_optimization
            pl_module.automatic_optimization = False

    def _end_probe_epoch(self, pl_module: L.LightningModule) -> None:
        self._active = False
        pl_module.probing = False
        if self._automatic is not None:
            pl_module.automatic_optimization = self._automatic
            self._automatic = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        start = time.perf_counter()
        with trainer.precision_plugin.train_step_context():  # autocast as in training
            result = measure_unit_grad_norms(
                getattr(pl_module, self.model_attr), batch, self.units,
                logits_chunk_tokens=self.logits_chunk_tokens,
                activation_checkpointing=self.activation_checkpointing,
                run_forward=fsdp1_root_runner(trainer, pl_module),
            )
        self._unit_names = result.unit_names
        self._records.extend(records_from_norms(batch, result))
        self._seconds += time.perf_counter() - start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        self._end_probe_epoch(pl_module)
        if trainer.current_epoch != self.probe_epochs - 1:
            return
        gathered = self._gather(trainer, self._records)
        partition = None
        if trainer.is_global_zero:
            if not gathered:
                raise RuntimeError("GradientConcentrationProbe: the probe epoch saw no sample")
            partition = finalize_probe(
                gathered,
                self._unit_names,
                self.router,
                self.run_dir,
                {"probe_seconds_rank0": round(self._seconds, 3), "world_size": trainer.world_size},
            )
            self._log_to_tensorboard(trainer, gathered, partition)
            log.info(
                "probe: %d trajectories → %d SFT / %d RL (%s), written to %s",
                len(gathered),
                len(partition.sft_ids),
                len(partition.rl_ids),
                self.router,
                self.run_dir,
            )
        trainer.strategy.barrier("prism_probe_partition")
        self.partition = trainer.strategy.broadcast(partition, src=0)
        self._records = []

    @staticmethod
    def _gather(trainer: L.Trainer, records: list[ProbeRecord]) -> list[ProbeRecord]:
        """All ranks' records on rank 0, one per id (other ranks get an empty list)."""
        if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return dedupe_records(records)
        parts: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
        dist.gather_object(records, parts, dst=0)
        if not trainer.is_global_zero:
            return []
        return dedupe_records(r for part in parts or [] for r in part)

    def _log_to_tensorboard(
        self, trainer: L.Trainer, records: Sequence[ProbeRecord], partition: Partition
    ) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        import matplotlib.pyplot as plt

        score = histogram_score(self.router)
        values = [r.score(score) for r in records]
        finite = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
        for lg in loggers:
            exp = lg.experiment
            if finite.numel():
                exp.add_histogram(f"probe/{score}", finite, global_step=trainer.global_step)
            if partition.threshold is not None and math.isfinite(partition.threshold):
                exp.add_scalar(
                    f"probe/{score}_threshold", partition.threshold, global_step=trainer.global_step
                )
            exp.add_scalar("probe/n_rl", len(partition.rl_ids), global_step=trainer.global_step)
            exp.add_scalar("probe/n_sft", len(partition.sft_ids), global_step=trainer.global_step)
            fig = score_histogram_figure(values, partition.threshold, score)
            try:
                exp.add_figure(f"probe/{score}_histogram", fig, global_step=trainer.global_step)
            finally:
                plt.close(fig)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._active:  # fit ended inside a probe epoch (exception, interrupt): leave the module as it was
            self._end_probe_epoch(pl_module)


_PROBE_FORWARD = "_prism_probe_forward"


def fsdp1_root_runner(trainer: L.Trainer, pl_module: L.LightningModule) -> ForwardRunner | None:
    """Under FSDP1, a runner that calls the probe's forward inside the root FSDP unit's forward; else ``None``.

    The root (the LightningModule, wrapped by ``FSDPStrategy``) holds the embeddings, final norm and LM head in its
    flat parameter, gathered only during its forward; and only the root's pre-backward hook queues FSDP1's
    end-of-backward callback, which resets the decoder units' state and reshards them. So the forward (and the
    chunked loss, which uses the LM head) run as a method of the LightningModule through the root, as Lightning
    runs ``training_step``, and the probe's backward starts from the root's outputs.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    root = trainer.strategy.model
    if not isinstance(root, FullyShardedDataParallel):
        return None
    redirect = trainer.strategy._forward_redirection

    def run(fn):
        pl_module.__dict__[_PROBE_FORWARD] = fn  # a plain attribute: the redirection looks the method up by name
        try:
            return redirect(root, pl_module, _PROBE_FORWARD)
        finally:
            pl_module.__dict__.pop(_PROBE_FORWARD, None)

    return run
