"""Every shipped YAML in configs/ is parsed (and, where it runs on this CPU, instantiated) — litgpt's habit."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
# configs/parts/ holds pieces that pipeline configs include by path; they are parsed through those configs
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "parts" not in p.relative_to(ROOT).parts)


def _kind(config: dict) -> str:
    if "model" in config or "trainer" in config and "data" in config:
        return "fit"
    if "run_dir" in config or "probe" in config or "env" in config:
        return "pipeline"
    if "configs" in config:
        return "compare"
    raise AssertionError("unknown config kind")


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_parses(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name data and run paths relative to the repository root
    config = yaml.safe_load(path.read_text())
    kind = _kind(config)
    if kind == "fit":
        from prism_lit.cli import load_fit_config

        trainer = config.get("trainer", {})
        gpu_only = trainer.get("accelerator") in ("gpu", "cuda") or "FSDPStrategy" in str(trainer.get("strategy"))
        cli = load_fit_config(str(path), instantiate=not gpu_only)
        assert cli.config.model.class_path
        if not gpu_only:
            assert cli.model is not None and cli.datamodule is not None
    elif kind == "pipeline":
        from prism_lit.pipeline.compare import _parse_pipeline_config

        kwargs = _parse_pipeline_config(str(path), {})
        assert kwargs["method"]
        from prism_lit.pipeline.context import PipelineContext
        from prism_lit.pipeline.stages import build_rl_module
        from prism_lit.policy import PolicySpec
        from prism_lit.probe.routers import Router
        from prism_lit.rl.base import RLModuleBase

        assert isinstance(kwargs["probe"].router, Router)  # built from its class_path and init args
        ctx = PipelineContext(run_dir=Path("unused"), **{k: kwargs[k] for k in ("env", "base", "probe", "sft", "rl",
                                                                               "eval", "seed", "method")},
                              trainer=kwargs["trainer"] or {})
        assert isinstance(build_rl_module(ctx, PolicySpec(path="unused")), RLModuleBase)
    else:
        from prism_lit.pipeline.compare import compare  # noqa: F401
        for sub in config["configs"]:
            assert Path(sub).is_file(), sub


@pytest.mark.parametrize("env", ["webshop", "alfworld"])
def test_baselines_share_one_sft_and_one_rl_recipe(env, monkeypatch):
    """A comparison is fair only if the methods differ in routing alone: every baseline that trains SFT uses the
    same SFT settings, and every one that runs RL the same RL module, batch and budget (only the task set differs)."""
    from prism_lit.pipeline.compare import _parse_pipeline_config
    from prism_lit.pipeline.config import settings_json

    monkeypatch.chdir(ROOT)
    sft, rl = {}, {}
    for path in sorted((ROOT / "configs" / "baselines" / env).glob("*.yaml")):
        kwargs = _parse_pipeline_config(str(path), {})
        if kwargs["sft"].enabled:
            sft[path.name] = settings_json(kwargs["sft"]) | {"data": None}
        if kwargs["rl"].enabled:
            rl[path.name] = settings_json(kwargs["rl"]) | {"tasks": None}
    assert len(sft) >= 2 and len(rl) >= 2
    first_sft, first_rl = next(iter(sft.values())), next(iter(rl.values()))
    assert {name: s for name, s in sft.items() if s != first_sft} == {}
    assert {name: r for name, r in rl.items() if r != first_rl} == {}


@pytest.mark.parametrize("args, key, value", [
    (["--rl.module.init_args.optim.lr", "5e-4"], ("rl", "module", "init_args", "optim", "lr"), 5e-4),
    (["--probe.router.init_args.rl_fraction=0.3"], ("probe", "router", "init_args", "rl_fraction"), 0.3),
    (["--probe.router.class_path=prism_lit.probe.routers.RandomRouter"], ("probe", "router", "class_path"),
     "prism_lit.probe.routers.RandomRouter"),
])
def test_pipeline_takes_command_line_overrides_of_its_plugins(args, key, value, capsys):
    """The router and the RL module are typed plugins: an override merges into the YAML's value."""
    from prism_lit.cli import main

    with pytest.raises(SystemExit) as printed:
        main(["pipeline", "--config", "configs/pipeline_webshop_embedded.yaml", *args, "--print_config"])
    assert printed.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    for part in key:
        config = config[part]
    assert config == value


def test_pipeline_takes_a_whole_rl_section_file(tmp_path, capsys):
    from prism_lit.cli import main

    rl = tmp_path / "rl.yaml"
    rl.write_text(Path("configs/parts/common/rl.yaml").read_text().replace("lr: 5.0e-5", "lr: 5.0e-4"))
    with pytest.raises(SystemExit) as printed:
        main(["pipeline", "--config", "configs/pipeline_webshop_embedded.yaml", "--rl", str(rl), "--print_config"])
    assert printed.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["rl"]["module"]["init_args"]["optim"]["lr"] == 5.0e-4


@pytest.mark.parametrize("env", ["webshop", "alfworld"])
def test_baselines_agree_on_the_settings_of_the_stages_compare_shares(env):
    """``compare`` links one corpus and one base model into every method's run; a method whose tasks or base
    settings differed would be refused by the pipeline's stage-settings check."""
    from prism_lit.pipeline.compare import _parse_pipeline_config
    from prism_lit.pipeline.run import PipelineContext, stage_settings

    shared = set()
    for path in sorted(Path(f"configs/baselines/{env}").glob("*.yaml")):
        cfg = _parse_pipeline_config(str(path), {})
        ctx = PipelineContext(run_dir=Path("unused"), env=cfg["env"], base=cfg["base"], probe=cfg["probe"],
                              sft=cfg["sft"], rl=cfg["rl"], eval=cfg["eval"], seed=0, trainer={}, method="m")
        shared.add(json.dumps([stage_settings(ctx, "tasks"), stage_settings(ctx, "base")], sort_keys=True))
    assert len(shared) == 1
