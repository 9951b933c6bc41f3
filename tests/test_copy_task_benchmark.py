"""benchmarks/copy_task.py: it reads a run directory's vocabulary and model size, trains, and reports a curve
that reloads; a directory without the stages it needs is named."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prism_lit.policy.embedded import build_embedded_default

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "copy_task.py"
_spec = importlib.util.spec_from_file_location("copy_task", SCRIPT)
copy_task = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(copy_task)
SPEC = {"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 64}


def _trajectory(instruction: str) -> str:
    return json.dumps({"messages": [
        {"role": "system", "content": "shop"},
        {"role": "user", "content": f"WebShop [SEP] Instruction: [SEP] {instruction} [SEP] Search"},
        {"role": "assistant", "content": "Action: search[x]"}]})


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "tasks").mkdir()
    instructions = ["i need red cotton socks", "find me vegan hair oil, and price lower than 40.00 dollars"]
    (tmp_path / "tasks" / "pretrain.jsonl").write_text("\n".join(_trajectory(i) for i in instructions) + "\n")
    (tmp_path / "pipeline_config.json").write_text(json.dumps({"base": {"embedded": SPEC}}))
    build_embedded_default(tmp_path / "base" / "init", instructions * 20 + ["Action: search[ Type this"],
                           copy_task_spec())
    return tmp_path


def copy_task_spec():
    from prism_lit.policy.embedded import EmbeddedModelSpec

    return EmbeddedModelSpec(**SPEC)


def test_instruction_words_are_the_instructions_own(run_dir):
    words = copy_task.instruction_words(run_dir / "tasks" / "pretrain.jsonl")
    assert words == sorted({"need", "red", "cotton", "socks", "find", "vegan", "hair", "oil", "and", "price",
                            "lower", "than", "dollars"})
    assert "webshop" not in words and "search" not in words  # page furniture is not the instruction


@pytest.mark.parametrize("fmt", ["bare", "chat"])
def test_runs_and_writes_a_curve_that_reloads(run_dir, tmp_path, fmt):
    out = tmp_path / f"curve_{fmt}.json"
    subprocess.run([sys.executable, str(SCRIPT), str(run_dir), "--format", fmt, "--bare_first", "2", "--steps", "2",
                    "--batch_size", "2", "--eval_every", "2", "--eval_samples", "2", "--out", str(out)], check=True,
                   capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["format"] == fmt and result["bare_first"] == 2 and result["words"] == 13
    assert [p["step"] for p in result["curve"]] == [2, 4]
    assert all(0.0 <= p["copied"] <= 1.0 and p["loss"] > 0 for p in result["curve"])


def test_a_run_dir_without_its_stages_is_named(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "pipeline_config.json not found" in done.stderr
