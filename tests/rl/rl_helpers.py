"""Helpers shared by the RL tests (a uniquely named module: `conftest` is ambiguous across test folders)."""

import json
from pathlib import Path

from prism_lit.envs.protocol import AgentProtocol

GUESS_WORD_PROTOCOL = {"env": "guess_word", "reply_format": "bare", "system_prompt": "Guess the word .",
                       "show_admissible": False}


def guess_word_protocol(**overrides) -> AgentProtocol:
    return AgentProtocol(**{**GUESS_WORD_PROTOCOL, **overrides})


def guess_word_run_dir(tmp_path: Path, policy_dir: Path, **config) -> Path:
    """A pipeline run directory on guess_word whose base model is ``policy_dir``: what the benchmark scripts read
    (``pipeline_config.json``'s env and ``config``'s other sections)."""
    run = tmp_path / "run"
    (run / "base").mkdir(parents=True)
    (run / "base" / "model").symlink_to(policy_dir)
    env = {"id": "guess_word", "kwargs": {}, "protocol": GUESS_WORD_PROTOCOL, **config.pop("env", {})}
    (run / "pipeline_config.json").write_text(json.dumps({"env": env, **config}))
    return run
