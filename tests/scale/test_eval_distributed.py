"""The eval stage sharded over 2 CPU processes (gloo) gives exactly the metrics and episodes of 1 process, written
once. Oracle: the same stage in one process on the same run dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("eval_dist_script.py")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_stage_over_two_ranks_equals_one(tmp_path):
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.pipeline.config import (
        BaseModelSettings,
        EnvSettings,
        ProbeSettings,
        RLSettings,
        SFTSettings,
    )
    from prism_lit.pipeline.run import pipeline

    embedded = {"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 2, "intermediate_size": 64}
    settings = {"env_kwargs": {"num_products": 60, "results_per_page": 3},
                "protocol": {"env": "webshop", "numbered_actions": True, "number_pattern": r"^click\[b0"},
                "eval_splits": {"test": 5}, "embedded": embedded,
                "eval": {"policies": ["base"], "max_steps": 3, "batch_size": 3, "max_new_tokens": 8}}
    run = tmp_path / "run"
    pipeline(run_dir=str(run),
             env=EnvSettings(id="webshop", kwargs=settings["env_kwargs"], protocol=AgentProtocol(**settings["protocol"]),
                             eval_splits=settings["eval_splits"], expert_kwargs={"query": "short"}),
             base=BaseModelSettings(embedded=embedded, pretrain_tasks=8, pretrain_epochs=1),
             probe=ProbeSettings(corpus_tasks=8, batch_size=4), sft=SFTSettings(epochs=1, batch_size=4),
             rl=RLSettings(max_steps=1), trainer={"enable_progress_bar": False}, stop_after="base")
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {}
    for world in (1, 2):
        shutil.rmtree(run / "eval", ignore_errors=True)
        result = subprocess.run([sys.executable, str(SCRIPT), "--run-dir", str(run), "--settings",
                                 str(tmp_path / "settings.json"), "--world", str(world), "--port", str(_free_port())],
                                capture_output=True, text=True, timeout=600, env=env, check=False)
        assert result.returncode == 0, result.stderr[-6000:]
        outputs[world] = ((run / "eval" / "eval.json").read_text(), (run / "eval" / "episodes.jsonl").read_text())
    assert outputs[2] == outputs[1]
    episodes = [json.loads(line) for line in outputs[2][1].splitlines()]
    assert [e["env_seed"] for e in episodes] == list(range(5))  # every panel task once, in panel order (3 + 2)
    assert json.loads(outputs[2][0])["base"]["test"]["episodes"] == 5
