"""Extension points, each defined here in the test file as a user would in their own package: a new environment
(its EnvSpec, expert and registration) and a new router, run through the whole pipeline."""

import json
import string

import gymnasium as gym
import pytest
from gymnasium.spaces import Text
from gymnasium.utils.env_checker import check_env

from prism_lit.envs import EnvSpec, register_env
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.pipeline.config import (
    BaseModelSettings,
    EnvSettings,
    EvalSettings,
    ProbeSettings,
    RLSettings,
    SFTSettings,
)
from prism_lit.pipeline.run import pipeline
from prism_lit.policy import EmbeddedModelSpec
from prism_lit.probe.partition import Partition
from prism_lit.probe.routers import Router

CHARSET = string.printable


class NextNumberEnv(gym.Env):
    """Say the number that follows the one shown. One step; task ids ``next/<split>/<i>``."""

    metadata: dict = {"render_modes": []}

    def __init__(self, split: str = "train", n_tasks: int = 30) -> None:
        self.observation_space = Text(max_length=200, charset=CHARSET)
        self.action_space = Text(max_length=200, charset=CHARSET)
        offset = {"train": 0, "test": 1000}[split]
        self.task_ids = [f"next/{split}/{i}" for i in range(offset, offset + n_tasks)]
        self.number = 0
        self.task_id = self.task_ids[0]

    def _info(self, won: bool) -> dict:
        return {"admissible_actions": [str(i) for i in range(11)], "won": won, "task_id": self.task_id,
                "task_type": "small" if self.number < 5 else "large", "score": float(won), "valid_action": True}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task_id = (options or {}).get("task_id") or self.task_ids[(seed or 0) % len(self.task_ids)]
        self.number = int(self.task_id.rsplit("/", 1)[1]) % 10
        return f"The number is {self.number}. Say the next one.", self._info(False)

    def step(self, action):
        won = str(action).strip() == str(self.number + 1)
        return "Done.", float(won), True, False, self._info(won)


class NextNumberExpert:
    def __init__(self, env) -> None:
        self.env = env.unwrapped

    def reset(self, observation, info) -> None:
        pass

    def act(self, observation, info):
        return str(self.env.number + 1), None


class LongestToRL(Router):
    """Routes the trajectories with the most tokens to RL (a router that reads the probe's records)."""

    name = "longest"

    def __init__(self, rl_fraction: float = 0.5) -> None:
        self.rl_fraction = rl_fraction

    def route(self, records):
        ranked = sorted(records, key=lambda r: (-r.n_tokens, r.id))
        rl = {r.id for r in ranked[: round(self.rl_fraction * len(ranked))]}
        return Partition(router=self.name, score=None, threshold=None, rl_fraction=self.rl_fraction,
                         sft_ids=sorted(r.id for r in records if r.id not in rl), rl_ids=sorted(rl),
                         task_of={r.id: r.task_id for r in records},
                         task_type_of={r.id: r.task_type for r in records})


register_env(EnvSpec(name="next_number", gym_id="tests/NextNumber-v0", entry_point=NextNumberEnv,
                     max_episode_steps=1, expert=f"{__name__}:NextNumberExpert", task_types=("small", "large")))


def test_a_new_env_and_a_new_router_run_through_the_pipeline(tmp_path):
    check_env(NextNumberEnv(), skip_render_check=True)
    tiny = EmbeddedModelSpec(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=64)
    pipeline(
        run_dir=str(tmp_path / "run"),
        env=EnvSettings(id="next_number", protocol=AgentProtocol(reply_format="bare", show_admissible=False),
                        eval_splits={"test": 4}),
        base=BaseModelSettings(embedded=tiny, pretrain_tasks=6, pretrain_epochs=1),
        probe=ProbeSettings(corpus_tasks=8, batch_size=4, router=LongestToRL(rl_fraction=0.25)),
        sft=SFTSettings(epochs=1, batch_size=4),
        rl=RLSettings(module={"class_path": "prism_lit.rl.GRPOModule",
                              "init_args": {"group_size": 2, "rollout": {"max_new_tokens": 4, "max_steps": 1}}},
                      data={"tasks_per_batch": 2}, max_steps=1),
        eval=EvalSettings(policies=["final"], batch_size=4, max_new_tokens=4),
        trainer={"enable_progress_bar": False},
    )
    run = tmp_path / "run"
    partition = json.loads((run / "probe" / "partition.json").read_text())
    assert partition["router"] == "longest" and len(partition["rl_ids"]) == 2
    records = [json.loads(line) for line in (run / "probe" / "probe.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["gini"] > 0 for r in records)  # the probe really measured the new env
    report = json.loads((run / "report.json").read_text())
    assert report["env"] == "next_number"
    test = report["eval"]["next_number"]["test"]
    assert test["episodes"] == 4 and set(test["per_task_type"]) <= {"small", "large", "other"}
    config = json.loads((run / "pipeline_config.json").read_text())
    assert config["probe"]["router"] == {"class_path": f"{__name__}.LongestToRL", "init_args": {"rl_fraction": 0.25}}


def test_an_unknown_env_name_lists_the_registered_ones():
    from prism_lit.envs import env_spec

    with pytest.raises(ValueError, match=r"unknown env 'nope'; registered environments: .*'webshop'"):
        env_spec("nope")
