"""Expert episodes as SFT data: full conversations in the protocol's text that replay to the same win."""

import gymnasium as gym
import pytest

import prism_lit.envs  # noqa: F401
from prism_lit.data.schema import read_trajectories
from prism_lit.envs import WEBSHOP_ID
from prism_lit.envs.experts import (
    ExpertEpisodeError,
    record_expert_episode,
    resolve_env,
    write_expert_dataset,
)
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.envs.webshop.env import WebShopEnv
from prism_lit.envs.webshop.expert import WebShopExpert

KWARGS = {"num_products": 150, "catalogue_seed": 1}


def replay(trajectory, protocol):
    """Feed the recorded replies, parsed by the protocol, to a fresh env; return the final info."""
    env = gym.make(WEBSHOP_ID, **KWARGS)
    obs, info = env.reset(options={"task_id": trajectory.task_id})
    messages = trajectory.messages
    assert messages[1].content == protocol.render_observation(obs, info["admissible_actions"])
    total = 0.0
    for user, assistant in zip(messages[1::2], messages[2::2]):
        assert user.content == protocol.render_observation(obs, info["admissible_actions"])
        action = protocol.parse_action(assistant.content, info["admissible_actions"])
        obs, reward, terminated, _truncated, info = env.step(action)
        total += reward
    assert terminated
    return total, info


@pytest.mark.parametrize(
    "protocol",
    [AgentProtocol(env="webshop"), AgentProtocol(env="webshop", reply_format="thought_action", numbered_actions=True),
     AgentProtocol(env="webshop", reply_format="think_tags", history_turns=1)],
    ids=["action", "thought_numbered", "think_tags"],
)
def test_recorded_episode_is_the_full_conversation_and_replays(protocol):
    env = gym.make(WEBSHOP_ID, **KWARGS)
    task_id = env.unwrapped.task_ids[3]
    traj = record_expert_episode(env, WebShopExpert(env), protocol, traj_id="t0", seed=0,
                                 options={"task_id": task_id}, env_name="webshop")
    roles = [m.role for m in traj.messages]
    steps = traj.meta["steps"]
    assert roles == ["system"] + ["user", "assistant"] * steps  # no history truncation
    assert traj.messages[0].content == protocol.system
    assert (traj.id, traj.env, traj.task_id) == ("t0", "webshop", task_id)
    assert traj.task_type == env.unwrapped.goal["category"]
    assert traj.won is True and traj.reward == 1.0 and traj.meta["terminated"]
    if protocol.reply_format != "action":
        assert all(m.content.startswith(("Thought:", "<think>")) for m in traj.messages[2::2])
    total, info = replay(traj, protocol)
    assert total == 1.0 and info["won"]


def test_write_expert_dataset_writes_readable_distinct_wins(tmp_path):
    protocol = AgentProtocol(env="webshop", reply_format="thought_action")
    out = tmp_path / "sft" / "webshop.jsonl"
    stats = write_expert_dataset("webshop", 25, out, protocol, split="train", seed=4, env_kwargs=KWARGS)
    assert stats["count"] == 25 and stats["won"] == 25 and stats["win_rate"] == 1.0
    assert stats["mean_reward"] == 1.0 and 3 <= stats["mean_steps"] <= 15 and stats["seconds"] > 0
    trajectories = read_trajectories(out)
    assert [t.id for t in trajectories] == [f"webshop-train-{i:05d}" for i in range(25)]
    assert len({t.task_id for t in trajectories}) == 25
    assert all(t.task_id.startswith("webshop/train/") for t in trajectories)
    assert stats["mean_steps"] == sum(t.meta["steps"] for t in trajectories) / 25
    # deterministic by seed; another seed picks other tasks
    again = tmp_path / "again.jsonl"
    write_expert_dataset("prism_lit/WebShop-v0", 25, again, protocol, seed=4, env_kwargs=KWARGS)
    assert again.read_text() == out.read_text()
    other = tmp_path / "other.jsonl"
    write_expert_dataset("webshop", 25, other, protocol, seed=5, env_kwargs=KWARGS)
    assert {t.task_id for t in read_trajectories(other)} != {t.task_id for t in trajectories}


def test_more_tasks_than_the_split_cycles(tmp_path):
    kwargs = {**KWARGS, "split_sizes": (5, 5)}
    n_train = len(WebShopEnv(**kwargs).task_ids)
    stats = write_expert_dataset("webshop", 5, tmp_path / "a.jsonl", AgentProtocol(env="webshop"), split="test",
                                 env_kwargs=kwargs)
    assert stats["won"] == 5
    stats = write_expert_dataset("webshop", 7, tmp_path / "b.jsonl", AgentProtocol(env="webshop"), split="test",
                                 env_kwargs=kwargs)
    assert stats["count"] == 7 and len({t.task_id for t in read_trajectories(tmp_path / "b.jsonl")}) == 5
    assert n_train == 290


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown env id 'shop'"):
        resolve_env("shop")
    with pytest.raises(ValueError, match="n_tasks"):
        write_expert_dataset("webshop", 0, tmp_path / "x.jsonl", AgentProtocol())
    with pytest.raises(ValueError, match="split='train' but env_kwargs has split='test'"):
        write_expert_dataset("webshop", 1, tmp_path / "x.jsonl", AgentProtocol(), env_kwargs={"split": "test"})

    class Stuck:
        def reset(self, observation, info):
            pass

        def act(self, observation, info):
            return "click[nowhere]", None

    env = WebShopEnv(**KWARGS)  # no time limit wrapper: the step guard must stop it
    with pytest.raises(ExpertEpisodeError, match="within 5 steps"):
        record_expert_episode(env, Stuck(), AgentProtocol(), traj_id="stuck", seed=0, max_steps=5)
