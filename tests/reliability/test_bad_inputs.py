"""Bad inputs through the real CLI (``prism-lit fit / generate / pipeline``): each ends with a non-zero exit status,
one paragraph that names the culprit (file, line, field or option) and no traceback, and leaves every file in the
working directory as it was (nothing written, nothing damaged).

Each case builds its inputs in a fresh directory and returns the command line; the table is ``CASES``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from reliability_support import copy_run, run_cli, run_cli_subprocess, snapshot, tiny_pipeline_args

FIXTURE = Path(__file__).parent.parent / "fixtures" / "tiny_trajectories.jsonl"
LINES = FIXTURE.read_text().splitlines()


@dataclass
class Env:
    """What a case may use: its own empty working directory and the shared tiny model (read-only)."""

    root: Path
    model: Path

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def jsonl(self, name: str, records: list) -> Path:
        return self.write(name, "".join(json.dumps(r) + "\n" for r in records))

    def model_copy(self, name: str = "model") -> Path:
        return Path(shutil.copytree(self.model, self.root / name))

    def fit_config(self, train_files: list[Path] | None = None, policy: dict | None = None, **data: object) -> Path:
        """A one-step ``prism-lit fit`` config on the fixture trajectories, logging under ./out."""
        config = {
            "seed_everything": 0,
            "trainer": {"accelerator": "cpu", "max_steps": 1, "enable_progress_bar": False,
                        "default_root_dir": str(self.root / "out"),
                        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                   "init_args": {"save_dir": str(self.root / "out"), "name": "fit"}}},
            "model": {"class_path": "prism_lit.sft.SFTModule",
                      "init_args": {"policy": policy or {"path": str(self.model)}}},
            "data": {"class_path": "prism_lit.data.datamodule.TrajectoryDataModule",
                     "init_args": {"train_files": [str(p) for p in (train_files or [FIXTURE])], "batch_size": 2,
                                   **data}},
        }
        return self.write("fit.yaml", yaml.safe_dump(config))


def record(i: int, **changes) -> dict:
    obj = json.loads(LINES[i % len(LINES)])
    obj.update(changes)
    return obj


def fit(env: Env, *extra: str, **config) -> list[str]:
    return ["fit", "--config", env.fit_config(**config), *extra]


def pipeline(env: Env, *extra: str) -> list[str]:
    return tiny_pipeline_args(env.root / "run", *extra)


@dataclass
class Case:
    id: str
    make: Callable[[Env], list[str]]
    needles: tuple[str, ...]  # each must appear in the error output
    code: int = 1  # 1: bad input; 2: a command line or config file the parser rejects
    forbidden: tuple[str, ...] = ("Traceback",)
    marks: tuple = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------- config
def _unknown_key(env: Env) -> list[str]:
    env.write("bad.yaml", "sft:\n  epochz: 3\n")
    return pipeline(env, "--config", env.root / "bad.yaml")


def _malformed_yaml(env: Env) -> list[str]:
    env.write("broken.yaml", "sft: {epochs: [1, 2\nrl: 3\n")
    return ["pipeline", "--config", env.root / "broken.yaml"]


def _malformed_nested_yaml(env: Env) -> list[str]:
    env.write("parts/sft.yaml", "epochs: 2\n  lr: 1e-3\n")
    env.write("main.yaml", "run_dir: run\nsft: parts/sft.yaml\n")
    return ["pipeline", "--config", env.root / "main.yaml"]


CONFIG_CASES = [
    Case("unknown-command", lambda e: ["pipelines", "--config", "x.yaml"], ("'pipelines'", "pipeline"), 2),
    Case("pipeline-config-missing", lambda e: ["pipeline", "--config", e.root / "nope.yaml"], ("nope.yaml",), 2),
    Case("pipeline-unknown-key", _unknown_key, ("epochz",), 2),
    Case("pipeline-malformed-yaml", _malformed_yaml, ("broken.yaml", "line 2"), 2),
    Case("pipeline-malformed-nested-yaml", _malformed_nested_yaml, ("parts/sft.yaml", "line 2"), 2),
    Case("pipeline-wrong-type", lambda e: pipeline(e, "--sft.epochs", "three"), ("sft.epochs", "three"), 2),
    Case("pipeline-context-weight", lambda e: pipeline(e, "--sft.context_weight", "3"), ("sft.context_weight",)),
    Case("pipeline-copy-warmup", lambda e: pipeline(e, "--base.copy_warmup_steps", "-1"),
         ("base.copy_warmup_steps",)),
    Case("pipeline-nonce-fraction", lambda e: pipeline(e, "--base.copy_warmup_nonce_fraction", "2"),
         ("base.copy_warmup_nonce_fraction",)),
    Case("pipeline-stop-after", lambda e: pipeline(e, "--stop_after", "sfft"), ("stop_after", "sfft")),
    Case("pipeline-rerun-stage", lambda e: pipeline(e, "--rerun", "[sfft]"), ("rerun", "sfft")),
    Case("pipeline-env-id", lambda e: pipeline(e, "--env.id", "minecraft"), ("env.id", "minecraft")),
    Case("fit-unknown-option", lambda e: fit(e, "--data.init_args.batch_sizee", "3"), ("batch_sizee",), 2),
    Case("fit-negative-lr", lambda e: fit(e, "--model.init_args.lr", "-1"), ("model.init_args.lr", "-1")),
    Case("fit-zero-batch", lambda e: fit(e, "--data.init_args.batch_size", "0"), ("data.batch_size",)),
    Case("fit-truncation-policy", lambda e: fit(e, "--data.init_args.truncation", "middle"),
         ("truncation", "middle"), 2),
    Case("fit-val-fraction", lambda e: fit(e, "--data.init_args.val_fraction", "1.5"), ("data.val_fraction",)),
    Case("fit-bad-betas", lambda e: fit(e, "--model.init_args.betas", "[0.9, 1.5]"), ("betas",)),
    Case("generate-unknown-env", lambda e: ["generate", "minecraft", e.root / "x.jsonl"], ("minecraft",)),
    Case("generate-bad-split", lambda e: ["generate", "webshop", e.root / "x.jsonl", "--split", "nosuch"],
         ("split", "nosuch")),
    Case("generate-bad-count", lambda e: ["generate", "webshop", e.root / "x.jsonl", "--n_tasks", "many"],
         ("n_tasks", "many"), 2),
]


# ---------------------------------------------------------------------------------------------- data
def _non_utf8(env: Env) -> list[str]:
    bad = LINES[2].replace("shopping", "caf\udce9").encode("utf-8", "surrogateescape")  # a Latin-1 byte
    path = env.write("latin1.jsonl", (LINES[0] + "\n" + LINES[1] + "\n").encode() + bad + b"\n")
    return fit(env, train_files=[path])


def _duplicate_ids(env: Env) -> list[str]:
    return fit(env, train_files=[env.jsonl("dup.jsonl", [record(0), record(1), record(2), record(3, id="fx-1")])])


def _malformed_json(env: Env) -> list[str]:
    return fit(env, train_files=[env.write("bad.jsonl", LINES[0] + "\n" + LINES[1][:-7] + "\n")])


def _missing_field(env: Env) -> list[str]:
    broken = record(1)
    del broken["messages"]
    return fit(env, train_files=[env.jsonl("nomsg.jsonl", [record(0), broken])])


def _unknown_role(env: Env) -> list[str]:
    broken = record(0)
    broken["messages"][1]["role"] = "robot"
    return fit(env, train_files=[env.jsonl("role.jsonl", [broken])])


def _nothing_trained(env: Env) -> list[str]:
    broken = record(0)
    broken["messages"] = [m for m in broken["messages"] if m["role"] != "assistant"]
    return fit(env, train_files=[env.jsonl("noasst.jsonl", [record(1), broken])])


def _eto_duplicates(env: Env) -> list[str]:
    turns = [{"from": "human", "value": "find a sofa"}, {"from": "gpt", "value": "Action: search[sofa]"}]
    records = [{"id": "e1", "conversations": turns}, {"id": "e2", "conversations": turns},
               {"id": "e1", "conversations": turns}]
    return fit(env, train_files=[env.jsonl("eto.jsonl", records)])


def _json_array_non_utf8(env: Env) -> list[str]:
    turns = '[{"from": "human", "value": "a"}, {"from": "gpt", "value": "Action: b"}]'
    text = f'[\n{{"id": "a", "conversations": {turns}}},\n{{"id": "b", "conversations": {turns}}},\n'.encode()
    text += b'{"id": "c\xff", "conversations": []}\n]\n'
    return fit(env, train_files=[env.write("array.json", text)])


def _partition_of_another_corpus(env: Env) -> list[str]:
    from prism_lit.probe.partition import Partition, save_partition

    ids = ["fx-0", "ghost-1", "ghost-2"]
    save_partition(env.root / "partition.json", Partition(
        router="prism", score="gini", threshold=0.5, rl_fraction=0.5, sft_ids=ids, rl_ids=[],
        task_of={i: "webshop/train/0" for i in ids}, task_type_of={i: "beauty" for i in ids}))
    return fit(env, partition_path=str(env.root / "partition.json"))


def _too_long(env: Env) -> list[str]:
    return fit(env, max_length=8, truncation="fail")


def _duplicate_across_files(env: Env) -> list[str]:
    a = env.jsonl("a.jsonl", [record(0), record(1)])
    b = env.jsonl("b.jsonl", [record(2), record(3), record(4, id="fx-1")])
    return fit(env, train_files=[a, b])


def _bad_val_file(env: Env) -> list[str]:
    return fit(env, val_files=[str(env.write("val.jsonl", LINES[0] + "\n\n" + "{not json}\n"))])


DATA_CASES = [
    Case("data-file-missing", lambda e: fit(e, train_files=[e.root / "missing.jsonl"]), ("missing.jsonl",
                                                                                          "not found")),
    Case("data-non-utf8", _non_utf8, ("latin1.jsonl", "line 3", "UTF-8")),
    Case("data-duplicate-ids", _duplicate_ids, ("dup.jsonl", "line 4", "line 2", "'fx-1'")),
    Case("data-malformed-json", _malformed_json, ("bad.jsonl", "line 2", "malformed JSON")),
    Case("data-missing-field", _missing_field, ("nomsg.jsonl", "line 2", "messages")),
    Case("data-unknown-role", _unknown_role, ("role.jsonl", "line 1", "messages[1].role", "robot")),
    Case("data-nothing-trained", _nothing_trained, ("noasst.jsonl", "line 2", "no turn is trained")),
    Case("data-empty-file", lambda e: fit(e, train_files=[e.write("empty.jsonl", "\n\n")]),
         ("empty.jsonl", "no records")),
    Case("data-eto-duplicates", _eto_duplicates, ("eto.jsonl", "line 3", "line 1", "'e1'")),
    Case("data-json-array-non-utf8", _json_array_non_utf8, ("array.json", "line 4", "UTF-8")),
    Case("data-partition-ids-not-in-corpus", _partition_of_another_corpus,
         ("partition.json", "2 of its 3 sft_ids", "'ghost-1'", "tiny_trajectories.jsonl")),
    Case("data-too-long-with-fail", _too_long, ("tiny_trajectories.jsonl", "line 1", "max_length=8")),
    Case("data-duplicate-across-files", _duplicate_across_files, ("b.jsonl", "line 3", "a.jsonl", "line 2")),
    Case("data-bad-val-file", _bad_val_file, ("val.jsonl", "line 3", "malformed JSON")),
]


# ---------------------------------------------------------------------------------------------- model
def _config_only(env: Env) -> list[str]:
    model = env.root / "cfgonly"
    model.mkdir()
    shutil.copy(env.model / "config.json", model / "config.json")
    return fit(env, policy={"path": str(model)})


def _cut_safetensors(env: Env) -> list[str]:
    model = env.model_copy()
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return fit(env, policy={"path": str(model)})


def _no_chat_template(env: Env) -> list[str]:
    model = env.model_copy()
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    return fit(env, policy={"path": str(model)})


def _bad_adapter(env: Env) -> list[str]:
    (env.root / "adapter").mkdir()
    return fit(env, policy={"path": str(env.model), "adapter_path": str(env.root / "adapter")})


def _cut_config(env: Env) -> list[str]:
    model = env.model_copy()
    (model / "config.json").write_text('{"architectures": ["LlamaFor')
    return fit(env, policy={"path": str(model)})


MODEL_CASES = [
    Case("model-path-missing", lambda e: fit(e, policy={"path": str(e.root / "nomodel")}),
         ("policy.path", "nomodel", "does not exist")),
    Case("model-config-only", _config_only, ("policy.path", "cfgonly", "no weights"),
         forbidden=("Traceback", "sentencepiece")),
    Case("model-cut-safetensors", _cut_safetensors, ("model/model.safetensors", "cut off")),
    Case("model-cut-config", _cut_config, ("model/config.json", "not valid JSON")),
    Case("model-no-chat-template", _no_chat_template, ("chat template", "model")),
    Case("model-adapter-without-config", _bad_adapter, ("policy.adapter_path", "adapter_config.json")),
]


# ---------------------------------------------------------------------------------------------- artifacts
def _cut_checkpoint(env: Env) -> list[str]:
    import torch

    path = env.root / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    path.write_bytes(path.read_bytes()[:1500])
    return fit(env, "--ckpt_path", path)


ARTIFACT_CASES = [
    Case("fit-cut-checkpoint", _cut_checkpoint, ("last.ckpt", "damaged", "mv ")),
    Case("fit-missing-checkpoint", lambda e: fit(e, "--ckpt_path", e.root / "gone.ckpt"),
         ("gone.ckpt", "does not exist")),
    Case("fit-checkpoint-not-zip", lambda e: fit(e, "--ckpt_path", e.write("notes.ckpt", "hello")),
         ("notes.ckpt", "damaged")),
]

CASES = CONFIG_CASES + DATA_CASES + MODEL_CASES + ARTIFACT_CASES


def test_the_table_is_big_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_a_clear_error_and_writes_nothing(case: Case, tmp_path, tiny_policy_dir, monkeypatch):
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    args = case.make(Env(root, Path(tiny_policy_dir)))
    before = snapshot(root)
    model_before = snapshot(Path(tiny_policy_dir))
    result = run_cli(args)
    message = result.err
    assert result.code == case.code, f"exit {result.code}, wanted {case.code}:\n{result.text[-3000:]}"
    for needle in case.needles:
        assert needle in message, f"{needle!r} not in the error:\n{message[-3000:]}"
    for bad in case.forbidden:
        assert bad not in message, f"{bad!r} in the error:\n{message[-3000:]}"
    error_lines = [line for line in message.splitlines() if ": error: " in line]
    assert len(error_lines) == 1, message[-3000:]
    assert snapshot(root) == before, "the failed command wrote or changed files"
    assert snapshot(Path(tiny_policy_dir)) == model_before


def test_debug_flag_and_env_var_print_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["generate", "webshop", tmp_path / "x.jsonl", "--split", "nosuch"]
    plain = run_cli(args)
    assert plain.code == 1 and "Traceback" not in plain.err and "--debug" in plain.err
    log_file = plain.err.split("written to ", 1)[1].split(")", 1)[0]
    assert "Traceback" in Path(log_file).read_text() and "nosuch" in Path(log_file).read_text()
    debug = run_cli([*args, "--debug"])
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.err and ": error: " in debug.err
    monkeypatch.setenv("PRISM_LIT_DEBUG", "1")
    assert "Traceback (most recent call last)" in run_cli(args).err


def test_console_script_reports_one_paragraph_and_exit_status(tmp_path):
    """The same handler through a real process: what a user's shell sees."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(LINES[0].encode() + b"\n" + b'{"id": "\xe9"}\n')
    config = Env(tmp_path, tmp_path).fit_config(train_files=[bad], policy={"path": str(tmp_path / "nomodel")})
    result = run_cli_subprocess(["fit", "--config", config, "--debug"], cwd=tmp_path)
    assert result.code == 1 and "Traceback" in result.err  # --debug is taken out before LightningCLI parses
    result = run_cli_subprocess(["fit", "--config", config], cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err
    assert f"prism-lit fit: error: {bad}, line 2: not valid UTF-8" in result.err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- run directories
def _half_done_sft(finished_run: Path, dest: Path) -> Path:
    """The finished run with its SFT stage (and everything after it) back to "killed after a checkpoint"."""
    run = copy_run(finished_run, dest)
    for stage in ("sft", "rl", "eval", "report"):
        (run / stage / "stage.json").unlink()
    shutil.rmtree(run / "sft" / "export")
    for stage in ("rl", "eval", "report"):
        shutil.rmtree(run / stage)
    return run


@pytest.mark.slow
def test_cut_checkpoint_in_a_run_dir_names_it_and_the_way_out(finished_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _half_done_sft(finished_run, tmp_path / "run")
    ckpt = run / "sft" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size - 4096])
    result = run_cli(tiny_pipeline_args(run))
    assert result.code == 1, result.err[-3000:]  # without a traceback: test_pipeline_faults.py
    assert str(ckpt) in result.err and "damaged" in result.err
    assert f"rm {ckpt}" in result.err or f"mv {ckpt}" in result.err
    assert not (run / "sft" / "export").exists() and not (run / "sft" / "stage.json").exists()
    assert (run / "base" / "model" / "model.safetensors").read_bytes() == \
        (finished_run / "base" / "model" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_changed_setting_of_a_finished_stage_is_refused_and_nothing_changes(finished_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    result = run_cli(tiny_pipeline_args(run, "--sft.lr", "5e-4"))
    assert result.code == 1 and "Traceback" not in result.err, result.err[-3000:]
    assert "sft.lr" in result.err and "--rerun" in result.err
    assert snapshot(run) == before


@pytest.mark.slow
def test_damaged_partition_is_named(finished_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _half_done_sft(finished_run, tmp_path / "run")
    partition = run / "probe" / "partition.json"
    partition.write_text(partition.read_text()[:200])
    before = snapshot(run / "probe")
    result = run_cli(tiny_pipeline_args(run))
    assert result.code == 1 and "Traceback" not in result.err, result.err[-3000:]
    assert str(partition) in result.err or "partition.json" in result.err
    assert snapshot(run / "probe") == before and not (run / "sft" / "export").exists()
