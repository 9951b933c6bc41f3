"""The pipeline passes its memory settings through: token budgets per batch to the probe's and SFT's DataModules,
dtype / attention / activation checkpointing to the probe's policy; bad budgets are refused when parsed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.pipeline import stages
from prism_lit.pipeline.config import BaseModelSettings, ProbeSettings, SFTSettings


class Stop(Exception):
    pass


def ctx(tmp_path: Path):
    art = SimpleNamespace(corpus=tmp_path / "corpus.jsonl", partition=tmp_path / "partition.json",
                          probe_dir=tmp_path / "probe", sft_export=tmp_path / "sft", base_model=tmp_path / "base")
    return SimpleNamespace(
        base=BaseModelSettings(path=str(tmp_path), dtype="bfloat16", gradient_checkpointing=True,
                               attn_implementation="eager"),
        probe=ProbeSettings(batch_size=4, max_length=512, max_tokens=1024),
        sft=SFTSettings(data="all", batch_size=2, max_length=256, max_tokens=300),
        env=SimpleNamespace(protocol=AgentProtocol(env="webshop")), artifacts=art, seed=3, trainer={})


def spy_datamodule(monkeypatch, seen: dict):
    import prism_lit.data.datamodule as dm

    def fake(**kwargs):
        seen["data"] = kwargs
        raise Stop

    monkeypatch.setattr(dm, "TrajectoryDataModule", fake)


def test_probe_gets_its_token_budget_and_the_model_settings(tmp_path, monkeypatch):
    import prism_lit.policy as policy

    seen: dict = {}
    import torch

    monkeypatch.setattr(policy, "load_policy", lambda spec: (seen.setdefault("spec", spec) and torch.nn.Linear(1, 1),
                                                             None))
    spy_datamodule(monkeypatch, seen)
    with pytest.raises(Stop):
        stages.probe_and_route(ctx(tmp_path))
    assert seen["data"]["max_tokens"] == 1024 and seen["data"]["batch_size"] == 4
    assert seen["data"]["protocol"].env == "webshop"  # rendered as the rollouts render it
    spec = seen["spec"]
    assert (spec.dtype, spec.gradient_checkpointing, spec.attn_implementation) == ("bfloat16", True, "eager")


def test_sft_gets_its_token_budget(tmp_path, monkeypatch):
    seen: dict = {}
    spy_datamodule(monkeypatch, seen)
    with pytest.raises(Stop):
        stages.train_sft(ctx(tmp_path))
    assert seen["data"]["max_tokens"] == 300 and seen["data"]["max_length"] == 256
    assert seen["data"]["protocol"].env == "webshop"


@pytest.mark.parametrize("section, option", [(ProbeSettings, "probe.max_tokens"), (SFTSettings, "sft.max_tokens")])
def test_a_bad_token_budget_is_refused_with_its_name(section, option):
    with pytest.raises(ValueError, match=option.replace(".", r"\.")):
        section(max_tokens=1)
    assert section(max_tokens=None).max_tokens is None
