"""`prism-lit generate` writes expert trajectories that reload in the project's schema."""

import subprocess
import sys

from prism_lit.data.schema import read_trajectories


def test_generate_writes_winning_expert_trajectories(tmp_path):
    out = tmp_path / "webshop.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "prism_lit.cli", "generate", "webshop", str(out), "--n_tasks", "5",
         "--env_kwargs", "{num_products: 50}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trajectories = read_trajectories(out)
    assert len(trajectories) == 5 and all(t.won for t in trajectories)
    assert all(t.task_id.startswith("webshop/train/") for t in trajectories)


def test_generate_unknown_env_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prism_lit.cli", "generate", "minecraft", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "unknown env id 'minecraft'" in result.stderr
