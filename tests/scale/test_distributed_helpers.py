"""prism_lit.distributed helpers in one process: block discovery, the FSDP1 wrap policy, optimizer re-keying,
tied-weight de-duplication, rank queries and the shipped FSDPStrategy config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from prism_lit.distributed import (
    LoraAwareWrapPolicy,
    decoder_layer_class_names,
    decoder_layers,
    drop_tied_duplicates,
    optimizer_state_by_name,
    world_info,
)
from prism_lit.policy import LoraSpec, PolicySpec, load_model

CONFIGS = Path(__file__).parents[2] / "configs" / "scale"


@pytest.fixture
def lora_model(tiny_policy_dir):
    return load_model(PolicySpec(path=str(tiny_policy_dir), lora=LoraSpec(r=2, alpha=4)))


def test_decoder_layers_found_through_peft_wrapper(tiny_policy_dir, lora_model):
    plain = load_model(PolicySpec(path=str(tiny_policy_dir)))
    assert decoder_layer_class_names(plain) == {"LlamaDecoderLayer"}
    assert decoder_layers(plain) == list(plain.model.layers)
    assert [type(m).__name__ for m in decoder_layers(lora_model)] == ["LlamaDecoderLayer"] * 2


def test_decoder_layers_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="no decoder layers found in Sequential"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_wrap_policy_wraps_blocks_and_optionally_adapter_leaves(lora_model):
    blocks_only, with_adapters = LoraAwareWrapPolicy(), LoraAwareWrapPolicy(wrap_adapters=True)
    named = dict(lora_model.named_modules())
    assert all(blocks_only(m, True, 0) for m in named.values())  # always recurses
    wrapped = {n for n, m in named.items() if blocks_only(m, False, 0)}
    assert wrapped == {n for n, m in named.items() if type(m).__name__ == "LlamaDecoderLayer"}
    extra = {n for n, m in named.items() if with_adapters(m, False, 0)} - wrapped
    assert extra and all(".lora_A." in n or ".lora_B." in n for n in extra)
    assert len(extra) == 2 * 7 * 2  # A and B of 7 projections in 2 layers; frozen base Linear layers are not units
    named_policy = LoraAwareWrapPolicy(layer_class_names=["LlamaMLP"])
    assert {type(m).__name__ for m in named.values() if named_policy(m, False, 0)} == {"LlamaMLP"}


def test_shipped_fsdp_lora_config_builds_the_wrap_policy_with_orig_params():
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    strategy_config = yaml.safe_load((CONFIGS / "sft_fsdp_gpu_lora.yaml").read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": strategy_config})).strategy
    assert isinstance(strategy.kwargs["auto_wrap_policy"], LoraAwareWrapPolicy)
    assert strategy.kwargs["use_orig_params"] is True


def _sft_style_optimizer(model):
    """Matrices then vectors, as SFTModule.configure_optimizers groups them (ids no longer follow module order)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=1e-2)


def test_optimizer_state_by_name_follows_param_groups(tiny_policy_dir):
    model = load_model(PolicySpec(path=str(tiny_policy_dir)))
    optimizer = _sft_style_optimizer(model)
    model(input_ids=torch.tensor([[1, 5, 7, 9]]), labels=torch.tensor([[1, 5, 7, 9]])).loss.backward()
    optimizer.step()
    fresh = _sft_style_optimizer(model)  # what a resumed run rebuilds
    by_name = optimizer_state_by_name(optimizer.state_dict(), fresh, model)
    params = dict(model.named_parameters())
    assert set(by_name["state"]) == set(params)
    for name, state in by_name["state"].items():  # oracle: the optimizer's own per-parameter state
        assert torch.equal(state["exp_avg_sq"], optimizer.state[params[name]]["exp_avg_sq"]), name
    assert by_name["param_groups"][1]["params"] == [n for n, p in params.items() if p.ndim < 2]
    assert by_name["param_groups"][0]["weight_decay"] == 0.1


def test_optimizer_state_by_name_refuses_another_model_shape(tiny_policy_dir, lora_model):
    full = load_model(PolicySpec(path=str(tiny_policy_dir)))
    saved = _sft_style_optimizer(full).state_dict()
    with pytest.raises(ValueError, match="parameter groups of sizes"):
        optimizer_state_by_name(saved, _sft_style_optimizer(lora_model), lora_model)


def test_drop_tied_duplicates_keeps_one_name_per_shared_weight(tiny_policy_dir):
    model = load_model(PolicySpec(path=str(tiny_policy_dir)))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    state = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False)}
    assert "lm_head.weight" in state
    kept = drop_tied_duplicates(model, state)
    assert set(kept) == set(dict(model.named_parameters())) and "lm_head.weight" not in kept


def test_world_info_reads_torchrun_then_slurm(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert world_info() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert world_info() == (5, 16)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert world_info() == (3, 8)



def test_check_checkpoint_accepts_a_sharded_checkpoint_directory(tmp_path):
    """``--ckpt_path`` may name a Distributed Checkpoint directory (FSDP2Strategy's default); other directories fail."""
    from prism_lit.errors import MissingFileError
    from prism_lit.io import check_checkpoint

    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    with pytest.raises(MissingFileError, match="is a directory"):
        check_checkpoint(sharded)
    (sharded / ".metadata").write_bytes(b"")
    assert check_checkpoint(sharded) == sharded
