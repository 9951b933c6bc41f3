"""The rollout engine and evaluation on the real WebShop and ALFWorld envs (random tiny policy, few steps)."""

import pytest

from prism_lit.envs import ALFWORLD_ID, WEBSHOP_ID
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import PolicySpec, load_policy
from prism_lit.rl import evaluate_policy
from prism_lit.rl.evaluation import default_task_types
from prism_lit.rl.rollout import env_task_ids, make_env


def _play(policy_dir, env_id, env_kwargs, family):
    model, tok = load_policy(PolicySpec(path=str(policy_dir)))
    model.eval()
    env = make_env(env_id, env_kwargs)
    tasks = env_task_ids(env)[:3]
    env.close()
    protocol = AgentProtocol(env=family, numbered_actions=True, history_turns=2)
    result = evaluate_policy(model, tok, protocol, env_id, env_kwargs, tasks, max_steps=2, max_new_tokens=6,
                             batch_size=2, return_episodes=True)
    assert result["episodes"] == 3 and result["mean_steps"] == 2.0  # a random policy finishes nothing in 2 steps
    assert result["success_rate"] == 0.0
    for ep in result["episodes_list"]:
        assert ep.task_type in default_task_types(env_id, env_kwargs)
        assert [s.done for s in ep.steps] == [False, True] and ep.truncated
        # the history is in the next prompt (the embedded tokenizer decodes "[x" as "[ x")
        assert ep.steps[0].observation.replace("[", "[ ") in tok.decode(ep.steps[1].prompt_ids)
    types = {k.split("/", 1)[1] for k in result if k.startswith("success_rate/")}
    assert types and types <= set(default_task_types(env_id, env_kwargs))
    return result


def test_webshop_episodes(tiny_policy_dir):
    _play(tiny_policy_dir, WEBSHOP_ID, {"num_products": 100, "results_per_page": 5}, "webshop")


@pytest.mark.alfworld
def test_alfworld_episodes(tiny_policy_dir):
    pytest.importorskip("alfworld")
    _play(tiny_policy_dir, ALFWORLD_ID, {"n_per_type": 1}, "alfworld")
