"""SFT under 2 CPU processes (gloo) equals 1 process with the same global batch; checkpoints move between world sizes.

Every multi-process run is a subprocess running ``sft_dist_script.py`` (``strategy: ddp`` re-launches
``sys.argv``). The oracle is the single-process run: 1 process × batch 8 versus 2 ranks × batch 4 over the same
sample order. The loss is a per-rank token mean and DDP/FSDP average the ranks' gradients, so the data gives
every sample the same number of trained tokens (asserted), which makes the two global losses identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TINY_TRAJECTORIES = Path(__file__).parents[1] / "fixtures" / "tiny_trajectories.jsonl"

SCRIPT = Path(__file__).with_name("sft_dist_script.py")
ATOL = 2e-6  # float32 reduction order; one step moves weights by ~1e-3

pytestmark = pytest.mark.slow  # each run starts 1-2 Python processes with torch + transformers (10-25 s)


def write_equal_token_trajectories(path: Path, n: int = 16) -> Path:
    """``n`` fixture trajectories whose assistant turns are ``Action: click[d]`` (digits are single tokens, so every
    sample trains on the same number of tokens) and whose prompts differ in length (so batches are padded)."""
    rows = [json.loads(line) for line in TINY_TRAJECTORIES.read_text().splitlines()][:n]
    assert len(rows) == n
    out = []
    for i, row in enumerate(rows):
        messages, turn = [], 0
        for m in row["messages"]:
            m = dict(m)
            if m["role"] == "assistant":
                m["content"] = f"Action: click[{(i + turn) % 10}]"
                turn += 1
            messages.append(m)
        messages[1]["content"] += " [SEP] plain" * (i % 3)
        out.append({**row, "messages": messages})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


class Runs:
    """Runs the script once per name (cached for the module) and checks it exited cleanly."""

    def __init__(self, root: Path, policy: Path, data: Path) -> None:
        self.root, self.policy, self.data = root, policy, data
        self.done: dict[str, Path] = {}

    def __call__(self, name: str, *args: str) -> Path:
        if name in self.done:
            return self.done[name]
        out = self.root / name
        cmd = [sys.executable, str(SCRIPT), "--policy", str(self.policy), "--data", str(self.data),
               "--root", str(out), *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=self.root, env=env)
        assert result.returncode == 0, f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
        self.done[name] = out
        return out


@pytest.fixture(scope="module")
def runs(tiny_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_dist")
    data = write_equal_token_trajectories(root / "equal_tokens.jsonl")
    return Runs(root, tiny_policy_dir, data)


def result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def assert_same_weights(a: Path, b: Path, file: str = "model.safetensors") -> None:
    wa, wb = load_file(a / "export" / file), load_file(b / "export" / file)
    assert sorted(wa) == sorted(wb)
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < ATOL, f"{a.name} vs {b.name}: max |Δw| = {worst}"


def assert_trained(run: Path, base: Path, file: str = "model.safetensors") -> None:
    trained, fresh = load_file(run / "export" / file), load_file(base / "model.safetensors")
    assert max((trained[k] - fresh[k]).abs().max().item() for k in trained if k in fresh) > 100 * ATOL


def test_data_gives_every_sample_the_same_trained_tokens(runs):
    from transformers import AutoTokenizer

    from prism_lit.data.datamodule import TrajectoryDataModule

    data = TrajectoryDataModule(train_files=[str(runs.data)], bucket=False)
    data.tokenizer = AutoTokenizer.from_pretrained(runs.policy)
    data.setup("fit")
    trained = {sum(t != -100 for t in labels) for labels in data.train_rows["labels"]}
    assert len(trained) == 1 and len(set(data.train_rows["length"])) > 1


def test_ddp_two_processes_match_one_process(runs, tiny_policy_dir):
    single = runs("single", "--batch-size", "8")
    ddp = runs("ddp", "--strategy", "ddp", "--devices", "2", "--batch-size", "4")
    assert result(single)["global_step"] == result(ddp)["global_step"] == 2
    assert result(ddp)["world_size"] == 2
    assert_trained(single, tiny_policy_dir)
    assert_same_weights(single, ddp)


def test_fsdp2_two_processes_match_one_process_and_export_full_model(runs):
    from transformers import AutoModelForCausalLM

    single = runs("single", "--batch-size", "8")
    fsdp = runs("fsdp2", "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4")
    assert result(fsdp)["world_size"] == 2
    assert_same_weights(single, fsdp)  # the export gathered every shard: same keys (tied head once), same values
    model = AutoModelForCausalLM.from_pretrained(fsdp / "export")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_fsdp2_with_gradient_checkpointing_matches_one_process(runs):
    single = runs("single", "--batch-size", "8")
    fsdp = runs("fsdp2_ckpt_act", "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4",
                "--gradient-checkpointing")
    assert_same_weights(single, fsdp)  # recomputation is exact in float32


def test_fsdp2_bf16_mixed_stays_close_to_float32(runs):
    single = runs("single", "--batch-size", "8")
    fsdp = runs("fsdp2_bf16", "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4",
                "--precision", "bf16-mixed")
    wa, wb = load_file(single / "export" / "model.safetensors"), load_file(fsdp / "export" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in wb.values())  # master weights stay float32
    fresh = load_file(Path(runs.policy) / "model.safetensors")
    for k in wa:  # bf16 autocast changes the step a little, not its direction
        step_a, step_b = wa[k] - fresh[k], wb[k] - fresh[k]
        cos = torch.nn.functional.cosine_similarity(step_a.flatten(), step_b.flatten(), dim=0)
        assert cos > 0.9, (k, float(cos))


def test_fsdp2_mixed_precision_bf16_params_fp32_reduce_on_gloo(runs):
    """FSDP2's MixedPrecisionPolicy (bf16 all-gather and compute, fp32 reduce-scatter) on CPU with gloo: sharded
    master weights stay fp32, the step stays close to the fp32 one, and the weights were loaded on rank 0 only."""
    single = runs("single", "--batch-size", "8")
    fsdp = runs("fsdp2_mp", "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4",
                "--fsdp-param-dtype", "bfloat16", "--fsdp-reduce-dtype", "float32")
    assert result(fsdp)["param_dtypes"] == ["torch.float32"]
    wa, wb = load_file(single / "export" / "model.safetensors"), load_file(fsdp / "export" / "model.safetensors")
    fresh = load_file(Path(runs.policy) / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in wb.values())
    moved = 0
    for k in wa:
        step_a, step_b = wa[k] - fresh[k], wb[k] - fresh[k]
        assert step_b.abs().max() > 0, k  # every weight trained (rank 1's meta copy received its shard)
        cos = torch.nn.functional.cosine_similarity(step_a.flatten(), step_b.flatten(), dim=0)
        assert cos > 0.9, (k, float(cos))
        moved += int(not torch.equal(wa[k], wb[k]))
    assert moved  # bf16 compute did change the step: mixed precision was applied


def test_fsdp2_lora_matches_one_process_with_adapter_only_checkpoint(runs):
    single = runs("lora_single", "--lora", "--lr", "1e-2", "--batch-size", "8")
    fsdp = runs("lora_fsdp2", "--lora", "--lr", "1e-2", "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4")
    assert_same_weights(single, fsdp, "adapter_model.safetensors")
    adapter = load_file(fsdp / "export" / "adapter_model.safetensors")
    assert max(v.abs().max().item() for k, v in adapter.items() if "lora_B" in k) > 1e-3  # B moved off zero
    import prism_lit.sft  # noqa: F401  (allows the hyper-parameter dataclasses in a weights-only load)

    checkpoint = torch.load(fsdp / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])


@pytest.mark.parametrize(
    "first, then",
    [
        (("ddp", "--strategy", "ddp", "--devices", "2", "--batch-size", "4"), ("--batch-size", "8")),
        (("single", "--batch-size", "8"), ("--strategy", "ddp", "--devices", "2", "--batch-size", "4")),
        (("fsdp2", "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4"), ("--batch-size", "8")),
        (("single", "--batch-size", "8"), ("--strategy", "fsdp2", "--devices", "2", "--batch-size", "4")),
        (("fsdp2_dcp", "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4", "--distributed-checkpoint"),
         ("--strategy", "fsdp2", "--devices", "1", "--batch-size", "8")),
    ],
    ids=["ddp2-to-1", "1-to-ddp2", "fsdp2-to-1", "1-to-fsdp2", "fsdp2-sharded-dir-to-1"],
)
def test_checkpoint_resumes_under_another_world_size(runs, first, then):
    """Epoch 1 under one world size, epoch 2 resumed under another == 2 epochs in one process."""
    reference = runs("single_2_epochs", "--batch-size", "8", "--max-epochs", "2")
    name, *args = first
    written = runs(name, *args)
    resumed = runs(f"resume_{name}_{'_'.join(then)}", *then, "--max-epochs", "2",
                   "--resume", str(written / "ckpt" / "last.ckpt"))
    assert result(resumed)["global_step"] == result(reference)["global_step"] == 4
    assert_same_weights(reference, resumed)


@pytest.mark.parametrize("then_devices", ["2", "1"])
def test_lora_sharded_checkpoint_resumes_like_an_uninterrupted_run(runs, then_devices):
    """LoRA under FSDP2 with a sharded (DCP) checkpoint: epoch 1 on 2 ranks, epoch 2 resumed from the checkpoint
    directory on 2 ranks or 1 == 2 epochs in one process (the adapter and its optimizer state come back)."""
    lora = ("--lora", "--lr", "1e-2")
    reference = runs("lora_single_2_epochs", *lora, "--batch-size", "8", "--max-epochs", "2")
    written = runs("lora_fsdp2_dcp", *lora, "--strategy", "fsdp2", "--devices", "2", "--batch-size", "4",
                   "--distributed-checkpoint")
    assert (written / "ckpt" / "last.ckpt").is_dir()  # one shard per rank, not a gathered file
    batch = "4" if then_devices == "2" else "8"
    resumed = runs(f"resume_lora_fsdp2_dcp_on_{then_devices}", *lora, "--strategy", "fsdp2", "--devices",
                   then_devices, "--batch-size", batch, "--max-epochs", "2",
                   "--resume", str(written / "ckpt" / "last.ckpt"))
    assert result(resumed)["global_step"] == result(reference)["global_step"] == 4
    assert_same_weights(reference, resumed, "adapter_model.safetensors")


@pytest.mark.parametrize("config, export_file", [("sft_ddp_cpu.yaml", "model.safetensors"),
                                                 ("sft_fsdp2_cpu.yaml", "adapter_model.safetensors")])
def test_shipped_cpu_config_runs_through_the_cli(runs, tmp_path, config, export_file):
    """The shipped 2-process configs, with the tiny model and data swapped in by a second --config."""
    import yaml

    override = {
        "trainer": {"max_epochs": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "cli"}}},
        "model": {"init_args": {"policy": {"path": str(runs.policy), "embedded": None, "embedded_corpus": []}}},
        "data": {"init_args": {"train_files": [str(runs.data)], "expert_data": None, "val_fraction": 0.25}},
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    shipped = Path(__file__).parents[2] / "configs" / "scale" / config
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "prism_lit.cli", "fit", "--config", str(shipped),
                             "--config", str(tmp_path / "override.yaml")],
                            check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-6000:]
    run = tmp_path / "runs" / "cli" / "version_0"  # one version dir: both ranks agreed on it
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "export" / export_file).is_file()
    assert not (tmp_path / "runs" / "cli" / "version_1").exists()


def test_fsdp1_lora_step_matches_one_process_and_exports_the_adapter(runs, tmp_path):
    """FSDP1 as Lightning's FSDPStrategy applies it (root = the SFTModule, LoraAwareWrapPolicy, use_orig_params),
    run by hand on CPU since Lightning refuses FSDP1 there: same adapter as one process, an adapter that
    PeftModel loads, and adapter-only checkpoint entries under their clean names."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    script = Path(__file__).with_name("fsdp1_lora_script.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    outs = {}
    for world in (1, 2):
        out = tmp_path / f"world{world}"
        out.mkdir()
        result = subprocess.run([sys.executable, str(script), "--policy", str(runs.policy), "--data", str(runs.data),
                                 "--root", str(out), "--world-size", str(world)],
                                check=False, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-6000:]
        outs[world] = out
    assert_same_weights(outs[1], outs[2], "adapter_model.safetensors")
    keys = [json.loads((outs[w] / "checkpoint_keys.json").read_text()) for w in (1, 2)]
    assert keys[0] == keys[1] and len(keys[0]) == 2 * 7 * 2 and all(".lora_" in k for k in keys[0])
    base = AutoModelForCausalLM.from_pretrained(runs.policy)
    adapter = PeftModel.from_pretrained(base, outs[2] / "export")
    trained = load_file(outs[2] / "export" / "adapter_model.safetensors")
    loaded = {k.replace(".default.", "."): v for k, v in adapter.state_dict().items() if "lora_" in k}
    assert set(loaded) == set(trained) and all(torch.equal(loaded[k], trained[k]) for k in trained)
