"""The pipeline end to end at a tiny size: every stage's artifact, the report's schema, resume after a stop."""

import json

import pytest

from prism_lit.envs.protocol import AgentProtocol
from prism_lit.pipeline.config import (
    BaseModelSettings,
    EnvSettings,
    EvalSettings,
    ProbeSettings,
    RLSettings,
    SFTSettings,
)
from prism_lit.pipeline.run import STAGE_ORDER, pipeline, read_stage_marker
from prism_lit.policy import EmbeddedModelSpec

RL_MODULE = {"class_path": "prism_lit.rl.GRPOModule",
             "init_args": {"group_size": 2, "optim": {"lr": 1e-4}, "rollout": {"max_new_tokens": 8, "max_steps": 3}}}


def _settings(tmp_path, router="prism_lit.probe.routers.PrismRouter"):
    return {
        "run_dir": str(tmp_path / "run"),
        "env": EnvSettings(id="webshop", kwargs={"num_products": 60, "results_per_page": 3},
                        protocol=AgentProtocol(env="webshop", numbered_actions=True, number_pattern=r"^click\[b0"),
                        eval_splits={"test": 4}, expert_kwargs={"query": "short"}),
        "base": BaseModelSettings(embedded=EmbeddedModelSpec(vocab_size=400, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, num_key_value_heads=2,
                                                          intermediate_size=64),
                               familiar_task_types=["beauty", "food"], pretrain_tasks=8, pretrain_epochs=1),
        "probe": ProbeSettings(corpus_tasks=12, batch_size=4,
                            router={"class_path": router, "init_args": {}}),
        "sft": SFTSettings(epochs=1, batch_size=4),
        "rl": RLSettings(module=RL_MODULE, data={"tasks_per_batch": 2}, max_steps=1),
        "eval": EvalSettings(policies=["base", "final"], max_steps=3, batch_size=4, max_new_tokens=8),
        "trainer": {"enable_progress_bar": False},
    }


def test_pipeline_runs_every_stage_writes_report_and_resumes(tmp_path):
    settings = _settings(tmp_path)
    pipeline(**settings, stop_after="probe")
    run = tmp_path / "run"
    assert read_stage_marker(run, "probe") is not None and read_stage_marker(run, "sft") is None
    probe_seconds = read_stage_marker(run, "probe")["seconds"]
    partition = json.loads((run / "probe" / "partition.json").read_text())
    assert len(partition["sft_ids"]) == len(partition["rl_ids"]) == 6

    pipeline(**settings)  # resumes: tasks/base/probe are skipped, the rest runs
    assert read_stage_marker(run, "probe")["seconds"] == probe_seconds
    for stage in STAGE_ORDER[:-1]:
        assert read_stage_marker(run, stage) is not None, stage
    assert (run / "sft" / "export" / "config.json").is_file()
    assert (run / "rl" / "export").is_dir()
    report = json.loads((run / "report.json").read_text())
    assert set(report["stages"]) >= {"tasks", "base", "probe", "sft", "rl", "eval"}
    for stage in ("base", "sft"):  # what tokenising did to the stage's data, in its record
        data = report["stages"][stage]["info"]["data"]
        assert data["read"] > 0 and data["truncated"] == 0 and data["max_length"] == 2048, (stage, data)
    for stage in ("probe", "sft", "rl"):
        assert report["stages"][stage]["seconds"] > 0
    test = report["eval"]["webshop"]["test"]
    assert 0.0 <= test["success_rate"] <= 1.0 and 0.0 <= test["score"] <= 1.0 and test["episodes"] == 4
    # per-episode outcomes (for paired statistics): one line per policy and panel goal, agreeing with eval.json
    episodes = [json.loads(line) for line in (run / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert sorted((e["policy"], e["split"]) for e in episodes) == [("base", "test")] * 4 + [("final", "test")] * 4
    final = [e for e in episodes if e["policy"] == "final"]
    assert sum(e["won"] for e in final) / 4 == pytest.approx(test["success_rate"])
    intervals = report["eval_intervals"]["test"]
    assert set(intervals["policies"]) == {"base", "final"} and "final - base" in intervals["differences"]
    assert intervals["policies"]["final"]["success_rate"]["mean"] == pytest.approx(test["success_rate"])
    separation = report["probe"]["separation"]  # familiar: beauty, food
    assert separation["n_familiar"] + separation["n_unfamiliar"] == 12
    assert set(separation["scores"]) == {"gini", "kurtosis", "cv", "loss", "l2"}
    assert "### What the scores separate" in (run / "summary.md").read_text()
    assert set(report["probe"]["by_task_type"]) and (run / "summary.md").read_text().startswith("# prism-gini")
    assert (run / "plots" / "concentration_by_task_type.png").stat().st_size > 1000


def test_summary_warns_when_a_stage_cut_its_trajectories(tmp_path):
    """Pre-training episodes cut at max_length lose their last turns (the take/put actions of an ALFWorld game):
    the summary says so under the stage table, naming the setting."""
    settings = _settings(tmp_path)
    settings["sft"].max_length = 64
    pipeline(**settings, stop_after="base")
    run = tmp_path / "run"
    data = read_stage_marker(run, "base")["info"]["data"]
    assert data["truncated"] == data["read"] == 8 and data["longest_truncated_tokens"] > 64
    from prism_lit.pipeline.report import build_report

    build_report(run)  # what the report stage does at the end of a run
    summary = (run / "summary.md").read_text()
    assert "**base: 8 of 8 trajectories were cut at max_length 64**" in summary and "`sft.max_length`" in summary


def test_unknown_stage_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="stop_after: unknown stage 'sfft'"):
        pipeline(**_settings(tmp_path), stop_after="sfft")


def _compare_configs(tmp_path, methods=(("prism-gini", "PrismRouter"), ("random", "RandomRouter"))):
    """Tiny pipeline YAML files, one per (method, router class name)."""
    import yaml

    configs = []
    for method, router in methods:
        s = _settings(tmp_path)
        config = {
            "method": method,
            "env": {"id": "webshop", "kwargs": s["env"].kwargs, "eval_splits": {"test": 3},
                    "protocol": {"env": "webshop", "numbered_actions": True}},
            "base": {"embedded": vars(s["base"].embedded), "familiar_task_types": ["beauty"], "pretrain_tasks": 6,
                     "pretrain_epochs": 1},
            "probe": {"corpus_tasks": 8, "batch_size": 4,
                      "router": {"class_path": f"prism_lit.probe.routers.{router}", "init_args": {}}},
            "sft": {"epochs": 1, "batch_size": 4},
            "rl": {"module": RL_MODULE, "data": {"tasks_per_batch": 2}, "max_steps": 1},
            "eval": {"policies": ["final"], "max_steps": 2, "batch_size": 3, "max_new_tokens": 6},
            "trainer": {"enable_progress_bar": False},
        }
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(config))
        configs.append(str(path))
    return configs


@pytest.mark.slow
def test_compare_runs_methods_over_seeds_and_writes_table(tmp_path, monkeypatch):
    from prism_lit.pipeline.compare import compare

    configs = _compare_configs(tmp_path)
    out = tmp_path / "cmp"
    compare(configs, seeds=[0, 1], out_dir=str(out), reference="random")
    table = json.loads((out / "comparison.json").read_text())
    assert set(table["methods"]) == {"prism-gini", "random"}
    for row in table["methods"].values():
        assert len(row["runs"]) == 2 and row["metrics"]["test/success_rate"]["n"] == 2
    assert table["methods"]["random"]["speedup_vs_reference"] == pytest.approx(1.0)
    assert "| prism-gini | 2 |" in (out / "comparison.md").read_text()
    # paired by goal and seed from every run's eval/episodes.jsonl; the default pairs name absent methods as missing
    pairs = {(row["a"], row["b"]): row for row in table["paired"]}
    diff = pairs[("prism-gini", "random")]["success_rate"]
    assert (diff["n_seeds"], diff["n_goals"], diff["n_pairs"]) == (2, 3, 6) and diff["ci"][0] <= diff["ci"][1]
    assert "missing" in pairs[("prism-gini", "sft-100")]
    assert {row["name"] for row in table["levels"]} == {"prism-gini", "random"}
    assert "## Paired differences" in (out / "comparison.md").read_text()
    assert (out / "pareto.png").stat().st_size > 1000
    # the corpus and base model were built once and shared by both methods and both seeds
    links = [out / m / f"seed{k}" / stage for m in ("prism-gini", "random") for k in (0, 1) for stage in ("tasks", "base")]
    assert all(p.is_symlink() for p in links)
    assert {p.resolve() for p in links} == {(out / "shared" / "all" / "tasks").resolve(),
                                          (out / "shared" / "all" / "base").resolve()}
    # the random router reads no score: its runs skip the probe pass
    assert not (out / "random" / "seed0" / "probe" / "probe.jsonl").exists()
    assert (out / "prism-gini" / "seed0" / "probe" / "probe.jsonl").is_file()
    # `table` rebuilds a table from run dirs already made, here linked from this comparison, with other pairs
    from prism_lit.pipeline.compare import table as rebuild

    other = tmp_path / "other"
    other.mkdir()
    (other / "random").symlink_to(out / "random")
    rebuild(str(other), reference="random", paired=[["random", "random:base"]])
    again = json.loads((other / "comparison.json").read_text())
    assert set(again["methods"]) == {"random"}
    assert again["methods"]["random"]["metrics"] == table["methods"]["random"]["metrics"]
    assert [(row["a"], row["b"]) for row in again["paired"]] == [("random", "random:base")]


@pytest.mark.slow
def test_compare_workers_run_methods_in_parallel_and_report_a_failed_run(tmp_path):
    import yaml

    from prism_lit.pipeline.compare import compare

    configs = _compare_configs(tmp_path, (("prism-gini", "PrismRouter"), ("random", "RandomRouter"),
                                          ("broken", "RandomRouter")))
    broken = yaml.safe_load(open(configs[2]))
    broken["sft"]["max_length"] = 2  # a valid setting that fails only when SFT tokenises: no trajectory fits
    open(configs[2], "w").write(yaml.safe_dump(broken))
    out = tmp_path / "cmp"
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed") as err:
        compare(configs, seeds=[1], out_dir=str(out), reference="random", workers=2)
    assert "broken/seed1" in str(err.value) and "max_length" in str(err.value)
    assert str(out / "broken" / "seed1" / "pipeline.log") in str(err.value)
    # the shared corpus and base come from the config's own seed, whichever seeds this call was given
    assert json.loads((out / "shared" / "all" / "pipeline_config.json").read_text())["seed"] == 0
    # the other runs finished, each logged to its own file, and the table was written from them
    table = json.loads((out / "comparison.json").read_text())
    assert set(table["methods"]) == {"prism-gini", "random"}
    assert table["unfinished"] == [str(out / "broken" / "seed1")]  # named in the table, not silently left out
    for method in ("prism-gini", "random"):
        assert "stage eval" in (out / method / "seed1" / "pipeline.log").read_text()


@pytest.mark.slow
def test_sigterm_to_compare_stops_its_running_workers_and_the_runs_resume(tmp_path):
    """`kill PID` of a comparison: it stops now with exit 143, not after the runs it started finish, and leaves
    no worker behind (a worker left running would go on writing into the run dirs of a resumed comparison)."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    configs = _compare_configs(tmp_path)
    for path in configs:  # RL long enough that the workers are mid-stage when the signal comes
        config = yaml.safe_load(open(path))
        config["rl"]["max_steps"] = 10_000
        open(path, "w").write(yaml.safe_dump(config))
    out = tmp_path / "cmp"
    # four runs for two workers: the two of seed 1 wait for a free worker and must never start
    proc = subprocess.Popen([sys.executable, "-m", "prism_lit.cli", "compare", "--configs", json.dumps(configs),
                             "--seeds", "[0, 1]", "--workers", "2", "--reference", "random", "--out_dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        logs = [out / m / "seed0" / "pipeline.log" for m in ("prism-gini", "random")]
        deadline = time.monotonic() + 300
        while not all(log.is_file() and "stage rl     running" in log.read_text() for log in logs):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the workers never reached RL"
            time.sleep(0.2)
        time.sleep(2)  # into the stage's work
        workers = [int(pid) for pid in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
        time.sleep(1)
        alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
                 open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
        assert not alive, f"workers still running after compare stopped: {alive}"
        for log in logs:  # each worker stopped inside RL, which is left unfinished for the next compare to resume
            assert not (log.parent / "rl" / "stage.json").exists()
        started = [m for m in ("prism-gini", "random") if (out / m / "seed1" / "pipeline.log").is_file()]
        assert not started, f"runs that were waiting for a worker started after the SIGTERM: {started}"
    finally:  # whatever failed above, no worker may outlive the test (they would run RL for 10,000 steps)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_compare_checks_every_run_dir_before_running_any(tmp_path):
    """A run dir kept from an earlier call with other settings stops the whole call before any run starts, naming
    the config, the run dir and the setting (not an hour later as one failed run among many)."""
    import yaml

    from prism_lit.pipeline.compare import compare

    configs = _compare_configs(tmp_path, (("prism-gini", "PrismRouter"), ("random", "RandomRouter")))
    out = tmp_path / "cmp"
    kept = out / "random" / "seed0" / "sft"
    kept.mkdir(parents=True)
    config = yaml.safe_load(open(configs[1]))
    from prism_lit.pipeline.config import SFTSettings, settings_json

    recorded = settings_json(SFTSettings(**{**config["sft"], "lr": 0.5}))  # one setting differs from the config's
    (kept / "stage.json").write_text(json.dumps({"stage": "sft", "seconds": 1.0, "info": {}, "settings": {"sft": recorded}}))
    with pytest.raises(ValueError, match=r"random\.yaml \(run .*random/seed0\).*stage 'sft'.*sft\.lr") as err:
        compare(configs, seeds=[0], out_dir=str(out), reference="random", workers=2)
    assert "--rerun" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["random"] and not (out / "prism-gini").exists()


def test_table_without_runs_names_the_directory(tmp_path, capsys):
    from prism_lit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["table", "--out_dir", str(tmp_path / "empty")])
    assert exit_.value.code == 1
    assert "table: no run with a report in" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_compare_checks_every_config_before_running_any(tmp_path):
    from prism_lit.pipeline.compare import compare

    configs = _compare_configs(tmp_path, (("prism-gini", "PrismRouter"), ("broken", "NoSuchRouter")))
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match="broken.yaml.*NoSuchRouter"):
        compare(configs, seeds=[0], out_dir=str(out))
    assert not out.exists()


def _alfworld_env(n_per_type: int, eval_splits: dict | None = None, numbered: bool = True) -> EnvSettings:
    """Real ALFWorld games generated small, ``n_per_type`` per task type and split."""
    return EnvSettings(id="alfworld", kwargs={"size": "small", "n_per_type": n_per_type, "generator_seed": 0},
                       protocol=AgentProtocol(env="alfworld", numbered_actions=numbered),
                       **({"eval_splits": eval_splits} if eval_splits else {}))


@pytest.mark.slow
@pytest.mark.alfworld
def test_pipeline_on_alfworld_real_engine(tmp_path):
    pytest.importorskip("alfworld")
    settings = _settings(tmp_path)
    settings["env"] = _alfworld_env(2, {"valid_unseen": 3})
    settings["base"].familiar_task_types = ["pick_and_place_simple", "look_at_obj_in_light"]
    settings["base"].pretrain_tasks = 4
    settings["probe"].corpus_tasks = 8
    pipeline(**settings)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    unseen = report["eval"]["alfworld"]["valid_unseen"]
    assert unseen["episodes"] == 3 and 0.0 <= unseen["success_rate"] <= 1.0
    assert set(report["probe"]["by_task_type"]) <= {
        "pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
        "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place"}


@pytest.mark.alfworld
def test_pretrain_env_kwargs_give_the_base_more_games_than_the_corpus_split(tmp_path):
    """A larger pre-training pool (base.pretrain_env_kwargs) reaches games the corpus's env does not have, and the
    corpus's own games are still left out of pre-training."""
    pytest.importorskip("alfworld")
    from prism_lit.data.schema import read_trajectories

    settings = _settings(tmp_path)
    settings["env"] = _alfworld_env(2, {"valid_unseen": 1})
    settings["base"].familiar_task_types = ["pick_and_place_simple"]
    settings["base"].pretrain_env_kwargs = {"n_per_type": 8}
    settings["base"].pretrain_tasks = 6
    settings["probe"].corpus_tasks = 4
    pipeline(**settings, stop_after="tasks")
    run = tmp_path / "run"
    corpus = {t.task_id for t in read_trajectories(run / "tasks" / "corpus.jsonl")}
    pretrain = [t.task_id for t in read_trajectories(run / "tasks" / "pretrain.jsonl")]
    assert len(pretrain) == 6 == len(set(pretrain))  # distinct games: the env alone holds 2 of this type
    assert not corpus & set(pretrain)
    assert read_stage_marker(run, "tasks")["settings"]["base.pretrain_env_kwargs"] == {"n_per_type": 8}


def test_pretrain_env_kwargs_refuse_a_split_and_a_local_model():
    with pytest.raises(ValueError, match="base.pretrain_env_kwargs.split"):
        BaseModelSettings(pretrain_env_kwargs={"split": "valid_seen"})
    with pytest.raises(ValueError, match="base.pretrain_env_kwargs shapes the embedded default"):
        BaseModelSettings(path="/models/qwen3", pretrain_env_kwargs={"n_per_type": 600})


@pytest.mark.alfworld
def test_evaluation_panel_is_fixed_and_spans_task_types(tmp_path):
    """The panel is the same on every call (every method and seed) and not the split's type-grouped head."""
    pytest.importorskip("alfworld")
    from prism_lit.pipeline.run import PipelineContext
    from prism_lit.pipeline.stages import panel_task_ids

    s = _settings(tmp_path)
    s["env"] = _alfworld_env(4)
    ctx = PipelineContext(run_dir=tmp_path, env=s["env"], base=s["base"], probe=s["probe"], sft=s["sft"],
                          rl=s["rl"], eval=s["eval"], seed=0, trainer={}, method="m")
    panel = panel_task_ids(ctx, "train", 8)
    assert panel == panel_task_ids(ctx, "train", 8) and len(set(panel)) == 8
    types = {task_id.split("/")[2].split("-")[0] for task_id in panel}
    assert len(types) >= 3, panel


def test_summarize_means_over_seeds_and_no_speedup_for_an_untrained_base(tmp_path):
    from prism_lit.pipeline.compare import summarize

    def report(method, seed, success, sft, rl):
        path = tmp_path / method / f"seed{seed}" / "report.json"
        path.parent.mkdir(parents=True)
        stages = {name: {"seconds": max(t, 1e-5), "info": {"trained": t > 0}} for name, t in (("sft", sft), ("rl", rl))}
        path.write_text(json.dumps({
            "method": method, "stages": stages,
            "eval": {"webshop": {"test": {"success_rate": success, "score": success}}},
            "compute_seconds": {"probe": 0.1, "sft": sft, "rl": rl, "total": 0.1 + sft + rl}}))

    report("base", 0, 0.1, 0, 0)
    report("rl-100", 0, 0.2, 0, 100)
    report("rl-100", 1, 0.4, 0, 300)
    report("prism", 0, 0.5, 50, 50)
    table = summarize(tmp_path, "rl-100")
    rl = table["methods"]["rl-100"]["metrics"]
    assert rl["test/success_rate"]["mean"] == pytest.approx(0.3) and rl["test/success_rate"]["n"] == 2
    assert rl["test/success_rate"]["std"] == pytest.approx(0.02 ** 0.5)  # sample std (n − 1)
    assert table["methods"]["prism"]["speedup_vs_reference"] == pytest.approx(200.1 / 100.1)
    assert table["methods"]["base"]["speedup_vs_reference"] is None


def test_sft_stage_follows_its_warmup_and_cosine_schedule(tmp_path):
    import torch

    settings = _settings(tmp_path)
    settings["sft"] = SFTSettings(epochs=2, batch_size=2, lr=1e-3, warmup_steps=2, schedule="cosine")
    pipeline(**settings, stop_after="sft")
    run = tmp_path / "run"
    steps = read_stage_marker(run, "sft")["info"]["steps"]
    assert steps == 6  # 6 trajectories routed to SFT, batch 2, 2 epochs
    ckpt = torch.load(run / "sft" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (scheduler,) = ckpt["lr_schedulers"]
    assert scheduler["last_epoch"] == steps
    # after the last step the cosine has decayed to its floor: a tenth of the peak
    assert scheduler["_last_lr"][0] == pytest.approx(1e-4)


def test_bad_base_pretraining_settings_name_the_field():
    with pytest.raises(ValueError, match=r"base.pretrain_context_weight must be in \[0, 1\], got 1.5"):
        BaseModelSettings(pretrain_context_weight=1.5)
    with pytest.raises(ValueError, match="base.pretrain_batch_size must be >= 1, got 0"):
        BaseModelSettings(pretrain_batch_size=0)
    with pytest.raises(ValueError, match="rl.checkpoint_every_n_steps must be >= 0"):
        RLSettings(checkpoint_every_n_steps=-1)
    with pytest.raises(ValueError, match=r"sft.context_weight must be in \[0, 1\], got -0.1"):
        SFTSettings(context_weight=-0.1)
    with pytest.raises(ValueError, match="sft.warmup_steps must be >= 0, got -5"):
        SFTSettings(warmup_steps=-5)



class _Killed(Exception):
    pass


class _StopAt:
    """Interrupts training (as a kill would) once ``step`` optimizer steps are done; records where fit started."""

    def __init__(self, step=None):
        from lightning.pytorch.callbacks import Callback

        self.step, self.started_at = step, None
        outer = self

        class _Cb(Callback):
            def on_train_start(self, trainer, pl_module):
                outer.started_at = trainer.global_step

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if outer.step is not None and trainer.global_step >= outer.step:
                    raise _Killed

        self.callback = _Cb()

    def install(self, monkeypatch):
        from prism_lit.pipeline import stages

        make = stages._trainer
        monkeypatch.setattr(stages, "_trainer", lambda *a, **kw: make(*a, **{**kw, "callbacks": [self.callback]}))


def _killed_in_rl(tmp_path, monkeypatch):
    """A 3-iteration RL stage killed after its second iteration; returns the settings and the run dir."""
    settings = _settings(tmp_path)
    settings["rl"].max_steps = 3
    pipeline(**settings, stop_after="sft")
    with monkeypatch.context() as patch:
        _StopAt(step=2).install(patch)
        with pytest.raises(_Killed):
            pipeline(**settings)
    return settings, tmp_path / "run"


def test_killed_rl_stage_resumes_from_its_last_iteration(tmp_path, monkeypatch):
    import torch

    settings, run = _killed_in_rl(tmp_path, monkeypatch)
    assert read_stage_marker(run, "rl") is None
    assert torch.load(run / "rl" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2

    watcher = _StopAt()
    watcher.install(monkeypatch)
    pipeline(**settings)
    assert watcher.started_at == 2  # the third iteration ran on top of the first two; nothing was redone
    assert read_stage_marker(run, "rl")["info"]["steps"] == 3


def test_copy_warmup_runs_before_pretraining_and_is_reused_on_resume(tmp_path):
    settings = _settings(tmp_path)
    settings["base"].copy_warmup_steps = 4
    pipeline(**settings, stop_after="base")
    warm = tmp_path / "run" / "base" / "warm"
    record = json.loads((warm / "warmup.json").read_text())
    assert record["steps"] == 4 and record["words"] > 10
    assert (warm / "config.json").is_file() and (tmp_path / "run" / "base" / "model" / "config.json").is_file()
    assert read_stage_marker(tmp_path / "run", "base")["info"]["init"] == str(warm)  # pre-training starts from it
    stamp = (warm / "model.safetensors").stat().st_mtime_ns
    (tmp_path / "run" / "base" / "stage.json").unlink()  # as if killed during pre-training
    pipeline(**settings, stop_after="base")
    assert (warm / "model.safetensors").stat().st_mtime_ns == stamp  # the warm-up is not redone


def test_bad_copy_warmup_steps_name_the_field():
    with pytest.raises(ValueError, match="base.copy_warmup_steps must be >= 0, got -5"):
        BaseModelSettings(copy_warmup_steps=-5)
    with pytest.raises(ValueError, match="copy_warmup_steps warms up the embedded default only; base.path is set"):
        BaseModelSettings(path="models/my-llm", copy_warmup_steps=100)


def test_a_finished_stage_made_with_other_settings_is_refused_until_rerun(tmp_path):
    settings = _settings(tmp_path)
    pipeline(**settings, stop_after="sft")
    run = tmp_path / "run"
    config_before = (run / "pipeline_config.json").read_text()
    sft_marker = read_stage_marker(run, "sft")
    assert sft_marker["settings"]["sft"]["lr"] == settings["sft"].lr

    settings["sft"].lr = 5e-4
    with pytest.raises(ValueError, match=r"stage 'sft' .*sft\.lr: 0\.001 -> 0\.0005.*--rerun '\[sft\]'"):
        pipeline(**settings, stop_after="sft")
    assert (run / "pipeline_config.json").read_text() == config_before  # nothing was changed
    assert read_stage_marker(run, "sft") == sft_marker

    old_weights = (run / "sft" / "export" / "model.safetensors").read_bytes()
    pipeline(**settings, stop_after="sft", rerun=["sft"])
    assert read_stage_marker(run, "sft")["settings"]["sft"]["lr"] == 5e-4
    # --rerun retrained from scratch (not resumed from the old last.ckpt) and kept the old outputs aside
    assert read_stage_marker(run, "sft")["info"]["steps"] == sft_marker["info"]["steps"] > 0
    assert (run / "sft" / "export" / "model.safetensors").read_bytes() != old_weights
    (moved,) = (run / "replaced").iterdir()
    assert moved.name.startswith("sft-") and (moved / "export" / "model.safetensors").read_bytes() == old_weights
    probe_marker = read_stage_marker(run, "probe")
    pipeline(**settings, stop_after="sft")  # the same settings again: every stage is reused
    assert read_stage_marker(run, "probe") == probe_marker


def test_settings_that_change_only_speed_do_not_block_reusing_a_stage(monkeypatch):
    from types import SimpleNamespace

    from prism_lit.pipeline import run as run_module

    def rl(temperature, draft_tokens, micro_batch_size):
        return {"rl": {"module": {"init_args": {"rollout": {"temperature": temperature, "draft_tokens": draft_tokens},
                                                "update": {"micro_batch_size": micro_batch_size}}}}}

    ctx = SimpleNamespace(run_dir="runs/x", artifacts=SimpleNamespace(replaced="runs/x/replaced"))
    recorded = rl(0.7, None, 8)  # a marker from before rollout.draft_tokens existed
    monkeypatch.setattr(run_module, "stage_settings", lambda _ctx, _name: rl(0.7, 3, 2))
    run_module._compare_settings(ctx, "rl", recorded, finished=True)  # greedy drafts and micro-batches: reused
    monkeypatch.setattr(run_module, "stage_settings", lambda _ctx, _name: rl(1.0, 3, 2))
    with pytest.raises(ValueError, match=r"rollout\.temperature: 0\.7 -> 1\.0\)"):
        run_module._compare_settings(ctx, "rl", recorded, finished=True)


def test_a_disabled_stage_is_reused_whatever_its_module_settings_say(monkeypatch):
    """The base method's RL stage is off; re-evaluating that run from its own pipeline_config.json (which spells
    the disabled module's defaults out) must reuse it, while turning the stage on must not."""
    from types import SimpleNamespace

    from prism_lit.pipeline import run as run_module

    def rl(enabled, init_args):
        return {"rl": {"enabled": enabled, "module": {"class_path": "prism_lit.rl.grpo.GRPOModule",
                                                      "init_args": init_args}}}

    ctx = SimpleNamespace(run_dir="runs/x", artifacts=SimpleNamespace(replaced="runs/x/replaced"))
    recorded = rl(False, {})
    monkeypatch.setattr(run_module, "stage_settings", lambda _ctx, _name: rl(False, {"advantage": "grpo"}))
    run_module._compare_settings(ctx, "rl", recorded, finished=True)
    monkeypatch.setattr(run_module, "stage_settings", lambda _ctx, _name: rl(True, {"advantage": "grpo"}))
    with pytest.raises(ValueError, match=r"rl\.enabled: False -> True"):
        run_module._compare_settings(ctx, "rl", recorded, finished=True)


# ---------------------------------------------------------------------------------------------- checks and records
def _main(*args):
    from prism_lit.cli import main

    main(["pipeline", *args])


@pytest.mark.parametrize("override, culprit", [
    ("--sft.batch_size=-4", "sft.batch_size must be >= 1"),
    ("--sft.lr=0", "sft.lr must be > 0"),
    ("--probe.router.init_args.rl_fraction=1.5", "rl_fraction"),
    ("--probe.router.class_path=prism_lit.probe.routers.NoSuchRouter", "NoSuchRouter"),
    ("--rl.module.init_args.lrr=0.1", "lrr"),
    ("--rl.data.tasks_per_batch=0", "rl.data.tasks_per_batch must be >= 1"),
    ("--eval.max_new_tokens=0", "eval.max_new_tokens must be >= 1"),
    ("--eval.policies=[base,best]", "eval.policies: unknown policy 'best'"),
    ("--env.eval_splits={train: 5}", "'train' is also env.train_split"),
    ("--env.id=no_such_env", "env.id: 'no_such_env' is not a registered environment"),
])
def test_bad_pipeline_settings_fail_before_the_first_stage(tmp_path, capsys, override, culprit):
    run = tmp_path / "run"
    with pytest.raises((SystemExit, ValueError)) as err:
        _main("--config", "configs/pipeline_webshop_embedded.yaml", f"--run_dir={run}", override)
    shown = str(err.value) + capsys.readouterr().err
    assert culprit in " ".join(shown.split()), shown
    assert not run.exists()  # nothing was written, no compute spent


def test_plugin_overrides_on_the_command_line_reach_the_run(tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    _main("--config", "configs/pipeline_webshop_embedded.yaml", f"--run_dir={run}", "--stop_after=tasks",
          "--probe.corpus_tasks=6", "--base.pretrain_tasks=4", "--env.kwargs.num_products=60",
          "--probe.router.init_args.rl_fraction=0.3", "--rl.module.init_args.group_size=2")
    config = json.loads((run / "pipeline_config.json").read_text())
    assert config["probe"]["router"] == {"class_path": "prism_lit.probe.routers.PrismRouter",
                                         "init_args": {"score": "gini", "rl_fraction": 0.3}}
    assert config["rl"]["module"]["init_args"]["group_size"] == 2
    assert config["rl"]["module"]["init_args"]["optim"]["lr"] == 5e-5  # the rest of the YAML's module is kept
    # the recorded config names its run: run again from another directory, it goes on with that run
    assert config["run_dir"] == str(run.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    marker = (run / "tasks" / "stage.json").read_text()
    monkeypatch.chdir(elsewhere)
    _main("--config", str(run / "pipeline_config.json"), "--stop_after=tasks")
    assert "stage tasks  done already" in caplog.text
    assert (run / "tasks" / "stage.json").read_text() == marker and not list(elsewhere.iterdir())


def test_trainer_strategy_may_be_a_class_path_built_afresh_per_stage(tmp_path):
    from prism_lit.distributed import FSDP2Strategy
    from prism_lit.pipeline.stages import trainer_strategy

    spec = {"class_path": "prism_lit.distributed.FSDP2Strategy",
            "init_args": {"process_group_backend": "gloo", "save_distributed_checkpoint": False}}
    first, second = trainer_strategy(spec), trainer_strategy(spec)
    assert isinstance(first, FSDP2Strategy) and first is not second  # one Strategy per Trainer
    assert trainer_strategy("ddp") == "ddp"
    run = tmp_path / "run"
    settings = {**_settings(tmp_path), "trainer": {"strategy": {"class_path": "prism_lit.distributed.NoSuchStrategy"}}}
    with pytest.raises(ValueError, match="trainer.strategy.class_path"):
        pipeline(**settings)
    assert not run.exists()  # refused before the first stage


def test_rl_never_trains_on_other_splits_or_evaluation_tasks(tmp_path):
    from prism_lit.pipeline.context import PipelineContext
    from prism_lit.pipeline.stages import StageError, check_rl_tasks, panel_task_ids

    s = _settings(tmp_path)
    ctx = PipelineContext(run_dir=tmp_path, env=s["env"], base=s["base"], probe=s["probe"], sft=s["sft"],
                          rl=s["rl"], eval=s["eval"], seed=0, trainer={}, method="m")
    check_rl_tasks(ctx, ["webshop/train/40", "webshop/train/41"])
    with pytest.raises(StageError, match=r"RL tasks \['webshop/test/0'\].*not tasks of env.train_split 'train'"):
        check_rl_tasks(ctx, ["webshop/train/40", "webshop/test/0"])
    ctx.env.eval_splits = {"eval": 3}  # a panel drawn from another split than test
    panel = panel_task_ids(ctx, "eval", 3)
    ctx.env.train_split = "eval"
    with pytest.raises(StageError, match="in the evaluation panel of split 'eval'"):
        check_rl_tasks(ctx, panel[:1])


def test_sft_on_a_partition_of_another_corpus_stops_without_a_record(tmp_path):
    settings = _settings(tmp_path)
    pipeline(**settings, stop_after="probe")
    run = tmp_path / "run"
    partition = json.loads((run / "probe" / "partition.json").read_text())
    partition["sft_ids"] = [f"elsewhere-{i}" for i in range(len(partition["sft_ids"]))]
    partition["task_of"].update({i: "webshop/train/1" for i in partition["sft_ids"]})
    partition["task_type_of"].update({i: "food" for i in partition["sft_ids"]})
    (run / "probe" / "partition.json").write_text(json.dumps(partition))
    from prism_lit.pipeline.stages import StageError

    with pytest.raises(StageError, match=r"partition.json: 6 SFT trajectory id\(s\) are not in the corpus"):
        pipeline(**settings, stop_after="sft")
    assert read_stage_marker(run, "sft") is None


def test_a_half_done_stage_resumes_only_under_its_own_settings_and_counts_every_attempt(tmp_path, monkeypatch):
    import time

    settings, run = _killed_in_rl(tmp_path, monkeypatch)
    started = json.loads((run / "rl" / "started.json").read_text())
    first = time.time() - started["attempts"][0]["start"]
    (run / "rl" / ".export.abcd1234").mkdir()  # what a kill during an atomic export leaves behind

    changed = _settings(tmp_path)
    changed["rl"].max_steps = 3
    changed["rl"].epochs = 2.0
    with pytest.raises(ValueError, match=r"stage 'rl' .* was started \(and would resume\) with other settings"):
        pipeline(**changed)

    pipeline(**settings)
    marker = read_stage_marker(run, "rl")
    assert marker["info"]["steps"] == 3 and not (run / "rl" / ".export.abcd1234").exists()
    # the killed attempt's time (up to its last write) is counted on top of the resumed one
    assert marker["seconds"] > marker["seconds_this_attempt"] > 0
    assert marker["seconds"] - marker["seconds_this_attempt"] <= first + 1


def test_the_run_seed_reaches_the_random_router_and_the_rl_module(tmp_path):
    from prism_lit.pipeline.context import PipelineContext
    from prism_lit.pipeline.stages import build_rl_module, probe_and_route
    from prism_lit.policy import PolicySpec

    partitions = []
    for seed in (0, 1):
        s = _settings(tmp_path / f"s{seed}", router="prism_lit.probe.routers.RandomRouter")
        pipeline(**s, seed=seed, stop_after="tasks")
        ctx = PipelineContext(run_dir=tmp_path / f"s{seed}" / "run", env=s["env"], base=s["base"], probe=s["probe"],
                              sft=s["sft"], rl=s["rl"], eval=s["eval"], seed=seed, trainer={}, method="m")
        probe_and_route(ctx)
        partitions.append(json.loads((ctx.artifacts.partition).read_text())["rl_ids"])
        assert s["probe"].router.seed is None  # the settings object is not changed (its record stays the same)
        assert build_rl_module(ctx, PolicySpec(path="unused")).seed == seed
    assert partitions[0] != partitions[1]


def test_a_corpus_file_replaces_the_generated_corpus_and_must_come_from_the_train_split(tmp_path):
    from prism_lit.data.schema import read_trajectories
    from prism_lit.envs.experts import write_expert_dataset
    from prism_lit.pipeline.stages import StageError

    settings = _settings(tmp_path)
    env = settings["env"]
    own = tmp_path / "own.jsonl"
    write_expert_dataset("webshop", 6, own, env.protocol, split="train", seed=5, env_kwargs=env.kwargs,
                         expert_kwargs=env.expert_kwargs)
    settings["probe"].corpus_file = str(own)
    pipeline(**settings, stop_after="probe")
    run = tmp_path / "run"
    assert read_trajectories(run / "tasks" / "corpus.jsonl") == read_trajectories(own)
    partition = json.loads((run / "probe" / "partition.json").read_text())
    assert len(partition["sft_ids"]) + len(partition["rl_ids"]) == 6

    foreign = tmp_path / "test_split.jsonl"
    write_expert_dataset("webshop", 2, foreign, env.protocol, split="test", env_kwargs=env.kwargs,
                         expert_kwargs=env.expert_kwargs)
    settings["probe"].corpus_file = str(foreign)
    with pytest.raises(StageError, match=r"test_split.jsonl: 2 of 2 trajectories have task ids that are not tasks"):
        pipeline(**{**settings, "run_dir": str(tmp_path / "other")}, stop_after="tasks")
    with pytest.raises(FileNotFoundError, match="probe.corpus_file: 'nope.jsonl' is not a file"):
        ProbeSettings(corpus_file="nope.jsonl")


def test_a_policy_with_the_same_weights_as_an_earlier_one_is_not_played_again(tmp_path, caplog):
    """RL-100 routes nothing to SFT, so its "sft" policy is its base: evaluating [base, sft, final] plays the base
    once and gives "sft" the same episodes (greedy evaluation repeats exactly), which paired differences need."""
    settings = _settings(tmp_path, router="prism_lit.probe.routers.AllRLRouter")
    settings["eval"] = EvalSettings(policies=["base", "sft", "final"], max_steps=3, batch_size=4, max_new_tokens=8)
    with caplog.at_level("WARNING", logger="prism_lit.pipeline.stages"):
        pipeline(**settings)
    run = tmp_path / "run"
    assert read_stage_marker(run, "sft")["info"]["trained"] is False
    assert "sft is the base policy (the same weights)" in caplog.text
    episodes = [json.loads(line) for line in (run / "eval" / "episodes.jsonl").read_text().splitlines()]
    by_policy = {p: [{k: v for k, v in e.items() if k != "policy"} for e in episodes if e["policy"] == p]
                 for p in ("base", "sft", "final")}
    assert len(by_policy["base"]) == 4 and by_policy["sft"] == by_policy["base"]
    results = json.loads((run / "eval" / "eval.json").read_text())
    assert results["sft"] == results["base"] and set(results) == {"base", "sft", "final"}


def test_copy_warmup_nonce_words_are_recorded_and_old_base_markers_still_match(tmp_path):
    """A base made before ``base.copy_warmup_nonce_fraction`` existed had none; its marker is reused under the
    default and refused under a fraction, naming the setting."""
    settings = _settings(tmp_path)
    settings["base"].copy_warmup_steps = 2
    settings["base"].copy_warmup_nonce_fraction = 0.5
    pipeline(**settings, stop_after="base")
    run = tmp_path / "run"
    assert json.loads((run / "base" / "warm" / "warmup.json").read_text())["nonce_fraction"] == 0.5

    old = _settings(tmp_path)
    old["base"].copy_warmup_steps = 2
    pipeline(**old, stop_after="base", rerun=["base"])
    marker_path = run / "base" / "stage.json"
    marker = json.loads(marker_path.read_text())
    del marker["settings"]["base"]["copy_warmup_nonce_fraction"]  # as written before the setting existed
    marker_path.write_text(json.dumps(marker))
    seconds = read_stage_marker(run, "base")["seconds"]
    pipeline(**old, stop_after="base")
    assert read_stage_marker(run, "base")["seconds"] == seconds  # reused
    with pytest.raises(ValueError, match=r"base.copy_warmup_nonce_fraction: 0.0 -> 0.5"):
        pipeline(**settings, stop_after="base")


def test_copy_warmup_nonce_fraction_is_checked():
    with pytest.raises(ValueError, match=r"base.copy_warmup_nonce_fraction must be in \[0, 1\]"):
        BaseModelSettings(copy_warmup_steps=10, copy_warmup_nonce_fraction=1.5)
    with pytest.raises(ValueError, match="base.copy_warmup_steps is 0"):
        BaseModelSettings(copy_warmup_nonce_fraction=0.5)


def test_a_larger_evaluation_panel_redoes_the_evaluation_only(tmp_path):
    """The panels never change the tasks stage (train split only): a new panel asks for --rerun '[eval]' and
    keeps every training stage; markers from before the eval stage recorded its panels are read from the tasks
    stage's record, where the panels were then kept."""
    settings = _settings(tmp_path)
    pipeline(**settings)
    run = tmp_path / "run"
    seconds = {s: read_stage_marker(run, s)["seconds"] for s in STAGE_ORDER[:-2]}
    larger = _settings(tmp_path)
    larger["env"].eval_splits = {"test": 5}  # all the toy split has
    with pytest.raises(ValueError, match=r"stage 'eval' .*env.eval_splits.test: 4 -> 5.*--rerun '\[eval\]'"):
        pipeline(**larger)
    pipeline(**larger, rerun=["eval"])
    assert {s: read_stage_marker(run, s)["seconds"] for s in STAGE_ORDER[:-2]} == seconds
    episodes = [json.loads(line) for line in (run / "eval" / "episodes.jsonl").open()]
    assert sum(e["policy"] == "base" for e in episodes) == 5

    # as written before: the tasks marker holds the panels, the eval marker does not
    for stage, change in (("tasks", lambda s: s["env"].__setitem__("eval_splits", {"test": 5})),
                          ("eval", lambda s: s.pop("env.eval_splits"))):
        path = run / stage / "stage.json"
        marker = json.loads(path.read_text())
        change(marker["settings"])
        path.write_text(json.dumps(marker))
    pipeline(**larger)  # the same panel: everything reused
    with pytest.raises(ValueError, match=r"stage 'eval' .*env.eval_splits.test: 5 -> 4"):
        pipeline(**settings)


@pytest.mark.alfworld
def test_pretrain_rename_fraction_renames_that_share_of_the_pretraining_episodes_only(tmp_path):
    pytest.importorskip("alfworld")
    from prism_lit.data.schema import read_trajectories

    settings = _settings(tmp_path)
    settings["env"] = _alfworld_env(8, {"valid_unseen": 1}, numbered=False)
    settings["base"].familiar_task_types = ["pick_and_place_simple"]
    settings["base"].pretrain_tasks = 4
    settings["base"].pretrain_rename_fraction = 0.5
    settings["probe"].corpus_tasks = 4
    pipeline(**settings, stop_after="tasks")
    run = tmp_path / "run"
    pretrain = read_trajectories(run / "tasks" / "pretrain.jsonl")
    renamed = [t for t in pretrain if "renamed" in t.meta]
    assert len(renamed) == 2
    for t in renamed:
        (old, new), = t.meta["renamed"].items()
        task = next(m.content for m in t.messages if m.role == "user").split("Your task is to:")[1].split("\n")[0]
        assert new in task.split() and old not in task.split()
    assert not any("renamed" in t.meta for t in read_trajectories(run / "tasks" / "corpus.jsonl"))
    marker = read_stage_marker(run, "tasks")
    assert marker["settings"]["base.pretrain_rename_fraction"] == 0.5 and marker["info"]["pretrain"]["renamed"] == 2


def test_pretrain_rename_fraction_is_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"base.pretrain_rename_fraction must be in \[0, 1\]"):
        BaseModelSettings(pretrain_rename_fraction=-0.1)
    with pytest.raises(ValueError, match="base.pretrain_rename_fraction shapes the embedded default"):
        BaseModelSettings(path="/models/qwen3", pretrain_rename_fraction=0.5)
    settings = _settings(tmp_path)
    settings["base"].pretrain_rename_fraction = 0.5
    with pytest.raises(ValueError, match=r"base.pretrain_rename_fraction: env 'webshop' does not name"):
        pipeline(**settings)
    assert not (tmp_path / "run").exists()


def test_unfamiliar_pretrain_tasks_adds_that_many_distinct_episodes_of_the_other_types(tmp_path):
    """The base sees the other types rarely instead of never: the episodes are of types outside
    familiar_task_types, distinct tasks, none a corpus task, and the marker counts them by type."""
    from prism_lit.data.schema import read_trajectories

    settings = _settings(tmp_path)
    settings["base"].unfamiliar_pretrain_tasks = 3
    pipeline(**settings, stop_after="tasks")
    run = tmp_path / "run"
    pretrain = read_trajectories(run / "tasks" / "pretrain.jsonl")
    extra = [t for t in pretrain if t.id.startswith("unfamiliar-")]
    assert len(extra) == 3 and len(pretrain) == 8 + 3
    assert {t.task_type for t in pretrain if t not in extra} <= {"beauty", "food"}
    assert not {t.task_type for t in extra} & {"beauty", "food"}
    assert len({t.task_id for t in extra}) == 3
    corpus = {t.task_id for t in read_trajectories(run / "tasks" / "corpus.jsonl")}
    assert not {t.task_id for t in extra} & corpus
    assert len({t.id for t in pretrain}) == len(pretrain)
    marker = read_stage_marker(run, "tasks")
    assert marker["settings"]["base.unfamiliar_pretrain_tasks"] == 3
    assert sum(marker["info"]["pretrain"]["unfamiliar"].values()) == 3


def test_unfamiliar_pretrain_tasks_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"base.unfamiliar_pretrain_tasks must be >= 0"):
        BaseModelSettings(familiar_task_types=["food"], unfamiliar_pretrain_tasks=-1)
    with pytest.raises(ValueError, match="needs familiar_task_types set"):
        BaseModelSettings(unfamiliar_pretrain_tasks=5)
    with pytest.raises(ValueError, match="needs familiar_task_types set and base.path null"):
        BaseModelSettings(path="/models/qwen3", familiar_task_types=["food"], unfamiliar_pretrain_tasks=5)
    settings = _settings(tmp_path)
    settings["base"].unfamiliar_pretrain_tasks = 10_000  # more than the toy's train split holds
    with pytest.raises(Exception, match=r"base.unfamiliar_pretrain_tasks: 10000 asked, but .* has only \d+ tasks"):
        pipeline(**settings, stop_after="tasks")
    assert read_stage_marker(tmp_path / "run", "tasks") is None
