"""SFT memorises a small fixture; exported adapters/models reload with identical logits; CLI end to end."""

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from prism_lit.data.datamodule import TrajectoryDataModule
from prism_lit.data.schema import TrajectoryFormatError
from prism_lit.policy import LoraSpec, PolicySpec
from prism_lit.sft import SFTModule

TINY_TRAJECTORIES = Path(__file__).parents[1] / "fixtures" / "tiny_trajectories.jsonl"


def _fit(policy, tmp_path, epochs, lr=3e-3):
    torch.manual_seed(0)
    module = SFTModule(policy=policy, lr=lr, export_dir=str(tmp_path / "export"))
    data = TrajectoryDataModule(train_files=[str(TINY_TRAJECTORIES)], batch_size=8)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=True,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    return module, data, trainer


def _mean_loss(module, data):
    module.model.eval()
    with torch.no_grad():
        losses = [module(**{k: b[k] for k in ("input_ids", "attention_mask", "labels")}).loss
                  for b in data.train_dataloader()]
    return float(torch.stack(losses).mean())


@pytest.mark.slow
def test_full_finetune_memorises_fixture_and_export_reloads(tiny_policy_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    module, data, trainer = _fit(PolicySpec(path=str(tiny_policy_dir)), tmp_path, epochs=1)
    first = _mean_loss(module, data)
    module, data, _trainer = _fit(PolicySpec(path=str(tiny_policy_dir)), tmp_path / "long", epochs=40)
    last = _mean_loss(module, data)
    assert last < 0.35 * first, (first, last)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "long" / "export").eval()
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        a = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


def test_lora_export_reloads_with_identical_logits_and_checkpoint_is_adapter_only(tiny_policy_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    policy = PolicySpec(path=str(tiny_policy_dir), lora=LoraSpec(r=4, alpha=8))
    module, data, trainer = _fit(policy, tmp_path, epochs=3, lr=1e-2)
    assert trainer.global_step > 0
    export = tmp_path / "export"
    assert (export / "adapter_config.json").is_file() and (export / "tokenizer.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    reloaded = PeftModel.from_pretrained(base, export).eval()
    module.model.eval()
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        a = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fresh = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)(input_ids=batch["input_ids"]).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, fresh)  # the adapter did learn something
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path,
                      weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])


def test_too_long_sample_under_fail_policy_names_file_and_line(tiny_policy_dir, tmp_path):
    module = SFTModule(policy=PolicySpec(path=str(tiny_policy_dir)))
    data = TrajectoryDataModule(train_files=[str(TINY_TRAJECTORIES)], max_length=20, truncation="fail")
    data.tokenizer = module.tokenizer
    with pytest.raises(TrajectoryFormatError) as err:
        data.setup("fit")
    assert err.value.path == str(TINY_TRAJECTORIES) and err.value.line == 1 and err.value.field == "messages"


def test_missing_model_path_is_a_clear_error(tmp_path):
    module = SFTModule(policy=PolicySpec(path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        module.configure_model()


def test_cli_fit_writes_log_checkpoint_and_export(tiny_policy_dir, tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "sft"}}},
        "model": {"class_path": "prism_lit.sft.SFTModule",
                  "init_args": {"policy": {"path": str(tiny_policy_dir), "lora": {"r": 4}}}},
        "data": {"class_path": "prism_lit.data.datamodule.TrajectoryDataModule",
                 "init_args": {"train_files": [str(TINY_TRAJECTORIES)], "batch_size": 8}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "prism_lit.cli", "fit", "--config", str(path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "sft" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "export" / "adapter_model.safetensors").is_file()


def test_cli_help_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "prism_lit.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in ("fit", "validate", "test", "predict", "generate", "pipeline", "compare", "table"):
        assert name in result.stdout
