"""The probe's memory bounds change no norm: checkpointed layers, chunked logits, a token budget per batch; the
callback runs under the trainer's autocast; FSDP1 routes the probe through its root unit (2 CPU processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from prism_lit.data.datamodule import TrajectoryDataModule
from prism_lit.policy import LoraSpec, PolicySpec
from prism_lit.probe import GradientConcentrationProbe, measure_unit_grad_norms, read_probe_records

TINY_TRAJECTORIES = Path(__file__).parents[1] / "fixtures" / "tiny_trajectories.jsonl"
VOCAB = 151


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_qwen3(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      attn_implementation="sdpa")
    return Qwen3ForCausalLM(cfg).float()


def batch(lengths=(17, 6, 12, 3, 9), seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    labels, mask = torch.full_like(ids, -100), torch.zeros_like(ids)
    for row, n in enumerate(lengths):  # left padding
        tokens = torch.randint(1, VOCAB, (n,), generator=g)
        lab = tokens.clone()
        lab[: n // 3] = -100
        ids[row, width - n:], labels[row, width - n:], mask[row, width - n:] = tokens, lab, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("adapter", [False, True])
def test_checkpointed_layers_and_chunked_logits_give_the_unbounded_norms(adapter):
    model = tiny_qwen3()
    if adapter:
        from peft import get_peft_model

        model = get_peft_model(model, LoraSpec(r=4, alpha=8).to_peft())
    b = batch()
    unbounded = measure_unit_grad_norms(model, b, logits_chunk_tokens=None, activation_checkpointing=False)
    bounded = measure_unit_grad_norms(model, b, logits_chunk_tokens=4, activation_checkpointing=True)
    assert (unbounded.norms > 0).all()
    torch.testing.assert_close(bounded.norms, unbounded.norms, rtol=1e-5, atol=0)
    torch.testing.assert_close(bounded.loss, unbounded.loss, rtol=1e-5, atol=0)
    # the checkpoint wrapper is gone afterwards: a plain forward runs each unit once again
    assert not any("forward" in layer.__dict__ for layer in model.modules())
    again = measure_unit_grad_norms(model, b, activation_checkpointing=False)
    torch.testing.assert_close(again.norms, unbounded.norms, rtol=1e-5, atol=0)


def test_checkpointing_follows_the_model_setting_and_keeps_its_mode():
    model = tiny_qwen3()
    b = batch()
    reference = measure_unit_grad_norms(model, b).norms
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    calls = []
    import prism_lit.probe.unit_norms as un

    original = un._checkpointed_layers

    def spy(m):
        calls.append(m)
        return original(m)

    un._checkpointed_layers = spy
    try:
        torch.testing.assert_close(measure_unit_grad_norms(model, b).norms, reference, rtol=1e-5, atol=0)
    finally:
        un._checkpointed_layers = original
    assert calls and model.training


def test_bf16_autocast_norms_stay_close_and_reductions_stay_float64():
    model, b = tiny_qwen3(), batch()
    reference = measure_unit_grad_norms(model, b).norms
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = measure_unit_grad_norms(model, b, activation_checkpointing=True)
    assert mixed.norms.dtype == torch.float64
    rel = ((mixed.norms - reference).abs() / reference).max()
    assert 0 < rel < 0.05, float(rel)  # bf16 matmuls: close to fp32, not equal (autocast did apply)


def _probe_run(policy_dir, run_dir, **data_kwargs):
    from prism_lit.sft import SFTModule

    torch.manual_seed(0)
    module = SFTModule(PolicySpec(path=str(policy_dir)))
    data = TrajectoryDataModule(train_files=[str(TINY_TRAJECTORIES)], tokenizer_path=str(policy_dir), seed=0,
                                **data_kwargs)
    probe = GradientConcentrationProbe(output_dir=str(run_dir), activation_checkpointing=True, logits_chunk_tokens=7)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
                        default_root_dir=run_dir)
    trainer.fit(module, data)
    return {r.id: r for r in read_probe_records(Path(run_dir) / "probe.jsonl")}, data


def test_a_token_budget_per_batch_changes_no_record(tiny_policy_dir, tmp_path):
    loose, _ = _probe_run(tiny_policy_dir, tmp_path / "loose", batch_size=8)
    tight, data = _probe_run(tiny_policy_dir, tmp_path / "tight", batch_size=8, max_tokens=250)
    lengths = data.train_rows["length"]
    assert max(lengths) * 8 > 250  # the budget splits the batches of 8
    assert sorted(loose) == sorted(tight) and len(loose) == 24
    for key, record in loose.items():
        assert tight[key].norms == pytest.approx(record.norms, rel=1e-5)
        assert tight[key].loss == pytest.approx(record.loss, rel=1e-5)


def test_callback_probes_under_the_trainer_precision(tiny_policy_dir, tmp_path):
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(torch.is_autocast_enabled("cpu"))

    import prism_lit.probe.callback as cb
    from prism_lit.sft import SFTModule

    original = cb.measure_unit_grad_norms

    def spy(*args, **kwargs):
        seen.append(("probe", torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(*args, **kwargs)

    cb.measure_unit_grad_norms = spy
    try:
        module = SFTModule(PolicySpec(path=str(tiny_policy_dir)))
        data = TrajectoryDataModule(train_files=[str(TINY_TRAJECTORIES)], tokenizer_path=str(tiny_policy_dir),
                                    batch_size=12)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, precision="bf16-mixed",
                            callbacks=[GradientConcentrationProbe(output_dir=str(tmp_path))],
                            default_root_dir=tmp_path)
        trainer.fit(module, data)
    finally:
        cb.measure_unit_grad_norms = original
    assert seen and all(s == ("probe", True, torch.bfloat16) for s in seen)


@pytest.mark.slow
@pytest.mark.parametrize("lora, checkpointing", [(False, False), (True, True)])
def test_fsdp1_probe_through_the_root_equals_the_unsharded_probe(tiny_policy_dir, tmp_path, lora, checkpointing):
    from prism_lit.sft import SFTModule

    script = Path(__file__).parents[1] / "scale" / "fsdp1_probe_script.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), "--policy", str(tiny_policy_dir), "--data", str(TINY_TRAJECTORIES),
           "--root", str(tmp_path)] + (["--lora"] if lora else []) + (["--checkpointing"] if checkpointing else [])
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-6000:]
    torch.manual_seed(0)
    module = SFTModule(policy=PolicySpec(path=str(tiny_policy_dir), lora=LoraSpec(r=4, alpha=8) if lora else None))
    module.configure_model()
    data = TrajectoryDataModule(train_files=[str(TINY_TRAJECTORIES)], batch_size=8, bucket=False, seed=0)
    data.tokenizer = module.tokenizer
    data.setup("fit")
    full = next(iter(data.train_dataloader()))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"norms_rank{rank}.pt")
        mine = {k: full[k][got["rows"]] for k in ("input_ids", "attention_mask", "labels")}
        expected = measure_unit_grad_norms(module.model, mine)
        torch.testing.assert_close(got["first"], expected.norms, rtol=1e-5, atol=0)
        torch.testing.assert_close(got["second"], expected.norms, rtol=1e-5, atol=0)
        torch.testing.assert_close(got["loss"], expected.loss, rtol=1e-5, atol=0)


def _fsdp2_probe(policy_dir, run_dir, devices, *flags):
    script = Path(__file__).parents[1] / "scale" / "fsdp2_probe_script.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(policy_dir), str(TINY_TRAJECTORIES), str(run_dir),
                             str(devices), *flags], check=False, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return {r.id: r for r in read_probe_records(Path(run_dir) / "probe.jsonl")}


@pytest.mark.slow
def test_fsdp2_probe_with_its_bounds_and_with_mixed_precision(tiny_policy_dir, tmp_path):
    """2 processes under FSDP2: checkpointed layers and a 5-position logits chunk give the unbounded single-process
    norms (1e-5); with FSDP2 mixed precision (bf16 parameters, fp32 reduce) the norms stay close."""
    reference = _fsdp2_probe(tiny_policy_dir, tmp_path / "one", 1, "--chunk", "100000")
    bounded = _fsdp2_probe(tiny_policy_dir, tmp_path / "two", 2, "--checkpointing", "--chunk", "5")
    mixed = _fsdp2_probe(tiny_policy_dir, tmp_path / "bf16", 2, "--param-dtype", "bfloat16", "--chunk", "7")
    assert sorted(reference) == sorted(bounded) == sorted(mixed) and len(reference) == 24
    worst = 0.0
    for key, record in reference.items():
        assert bounded[key].norms == pytest.approx(record.norms, rel=1e-5)
        rel = max(abs(a - b) / b for a, b in zip(mixed[key].norms, record.norms))
        worst = max(worst, rel)
    assert 0 < worst < 0.1, worst  # bf16 compute: close, and not the fp32 numbers (the policy applied)
