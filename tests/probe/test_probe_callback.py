"""The probe epoch through a real Lightning Trainer with the real SFTModule and DataModule."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from prism_lit.data.datamodule import TrajectoryDataModule
from prism_lit.policy import LoraSpec, PolicySpec, load_model
from prism_lit.probe import (
    GradientConcentrationProbe,
    MagnitudeRouter,
    PrismRouter,
    load_partition,
    read_probe_records,
    run_probe,
)
from prism_lit.sft import SFTModule

TINY_TRAJECTORIES = Path(__file__).parents[1] / "fixtures" / "tiny_trajectories.jsonl"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class Spy(L.Callback):
    """Snapshots the weights when training starts; records the ids trained on and `probing` per epoch."""

    def __init__(self):
        self.start_state, self.ids, self.probing = None, {}, {}

    def on_train_start(self, trainer, pl_module):
        self.start_state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.setdefault(trainer.current_epoch, []).extend(batch["id"])
        self.probing.setdefault(trainer.current_epoch, set()).add(pl_module.probing)


def fit(policy, run_dir, epochs, router=None, logger=False):
    torch.manual_seed(0)
    module = SFTModule(policy=policy, lr=1e-2)
    data = TrajectoryDataModule(
        train_files=[str(TINY_TRAJECTORIES)], batch_size=5, partition_path=str(run_dir / "partition.json")
    )
    spy = Spy()
    probe = GradientConcentrationProbe(router=router, output_dir=str(run_dir))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        default_root_dir=run_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[probe, spy],
    )
    trainer.fit(module, data)
    return module, data, trainer, spy, probe


@pytest.mark.parametrize("lora", [False, True])
def test_probe_only_run_leaves_weights_bit_identical_and_writes_run_files(tiny_policy_dir, tmp_path, lora):
    policy = PolicySpec(path=str(tiny_policy_dir), lora=LoraSpec(r=4, alpha=8) if lora else None)
    logger = TensorBoardLogger(tmp_path / "tb", name="", version="")
    module, data, trainer, spy, probe = fit(policy, tmp_path, epochs=1, logger=logger)
    end_state = module.model.state_dict()
    assert end_state.keys() == spy.start_state.keys()
    for k, v in end_state.items():
        assert torch.equal(v, spy.start_state[k]), k
    assert all(p.grad is None for p in module.model.parameters())
    assert spy.probing == {0: {True}} and module.probing is False
    assert trainer.global_step == 0 and module.automatic_optimization  # no optimizer step was taken

    ids = sorted(data.train_rows["id"])
    records = read_probe_records(tmp_path / "probe.jsonl")
    assert [r.id for r in records] == ids and all(len(r.norms) == 14 for r in records)
    partition = load_partition(tmp_path / "partition.json")
    assert partition == probe.partition
    assert sorted(partition.sft_ids + partition.rl_ids) == ids and len(partition.rl_ids) == len(ids) // 2
    by_id = {r.id: r for r in records}
    assert min(by_id[i].gini for i in partition.rl_ids) > partition.threshold
    assert max(by_id[i].gini for i in partition.sft_ids) <= partition.threshold
    assert (tmp_path / "probe_histogram.png").read_bytes()[:4] == b"\x89PNG"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logger.log_dir), size_guidance={"histograms": 0, "images": 0}).Reload()
    assert "probe/gini" in events.Tags()["histograms"] and "probe/gini_histogram" in events.Tags()["images"]
    assert events.Scalars("probe/gini_threshold")[0].value == pytest.approx(partition.threshold, rel=1e-6)

    # run_probe (no Trainer) on a freshly loaded model (a fresh LoRA adapter has lora_B = 0: same function)
    # and the same data gives the same records and partition.
    everything = TrajectoryDataModule(
        train_files=[str(TINY_TRAJECTORIES)], batch_size=3, tokenizer_path=str(tiny_policy_dir)
    )
    everything.setup("fit")
    plain = run_probe(load_model(policy), everything.train_dataloader(), PrismRouter(), tmp_path / "plain")
    assert plain.rl_ids == partition.rl_ids
    again = {r.id: r for r in read_probe_records(tmp_path / "plain" / "probe.jsonl")}
    for r in records:
        assert again[r.id].norms == pytest.approx(r.norms, rel=1e-5)


def test_probe_epoch_then_sft_serves_only_sft_ids_and_resume_skips_probe(tiny_policy_dir, tmp_path):
    policy = PolicySpec(path=str(tiny_policy_dir))
    module, data, trainer, spy, probe = fit(
        policy, tmp_path, epochs=2, router=MagnitudeRouter(rl_fraction=0.25)
    )
    partition = load_partition(tmp_path / "partition.json")
    assert partition.router == "magnitude" and len(partition.rl_ids) == 6
    assert sorted(spy.ids[0]) == sorted(data.train_rows["id"])  # the probe epoch sees everything once
    assert sorted(spy.ids[1]) == partition.sft_ids  # then SFT only on D_SFT
    assert spy.probing == {0: {True}, 1: {False}}
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, spy.start_state[k])]
    assert changed  # the SFT epoch did train

    stamp = (tmp_path / "partition.json").stat().st_mtime_ns
    module, data, _trainer, spy, probe = fit(policy, tmp_path, epochs=1, router=PrismRouter())
    assert spy.probing == {0: {False}}  # valid partition present: no probe epoch
    assert (tmp_path / "partition.json").stat().st_mtime_ns == stamp and probe.partition == partition


def test_module_without_probing_flag_is_refused(tmp_path):
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(2, 2)

        def training_step(self, batch, batch_idx):
            return self.model(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[GradientConcentrationProbe()],
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(AttributeError, match="probing"):
        trainer.fit(Plain(), torch.utils.data.DataLoader([torch.zeros(2)]))
