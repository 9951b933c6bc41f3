"""EnvPool: batched stepping equals stepping each env on its own; finished envs are left alone."""

import random

import gymnasium as gym
import numpy as np
import pytest

import prism_lit.envs  # noqa: F401
from prism_lit.envs import WEBSHOP_ID
from prism_lit.envs.vector import EnvPool
from prism_lit.envs.webshop.expert import WebShopExpert

KWARGS = {"num_products": 150, "catalogue_seed": 2}


def policy(rng, info):
    """A random agent that sometimes buys, sometimes writes garbage, sometimes waits (None)."""
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.2:
        return "garbage"
    if roll < 0.35:
        return "search[vegan shampoo large]"
    return rng.choice(info["admissible_actions"]) if info["admissible_actions"] else "search[table]"


@pytest.mark.parametrize("num_threads", [0, 3])
def test_pool_matches_independent_envs(num_threads):
    n = 5
    pool = EnvPool(env_id=WEBSHOP_ID, n=n, env_kwargs=KWARGS, num_threads=num_threads)
    singles = [gym.make(WEBSHOP_ID, **KWARGS) for _ in range(n)]
    seeds = [10, 11, 12, 13, 14]
    obs, infos = pool.reset(seeds=seeds)
    expected = [env.reset(seed=s) for env, s in zip(singles, seeds)]
    assert obs == [o for o, _ in expected] and infos == [i for _, i in expected]
    rng = random.Random(0)
    done = [False] * n
    last = list(expected)
    returns = np.zeros(n)
    for _ in range(25):
        actions = [policy(rng, infos[i]) for i in range(n)]
        obs, rewards, terminated, truncated, infos = pool.step(actions)
        for i, env in enumerate(singles):
            if done[i] or actions[i] is None:
                # not stepped: last observation, no reward, flags unchanged
                assert obs[i] == last[i][0] and rewards[i] == 0.0 and bool(terminated[i] or truncated[i]) == done[i]
                continue
            o, r, te, tr, inf = env.step(actions[i])
            assert (obs[i], rewards[i], terminated[i], truncated[i], infos[i]) == (o, r, te, tr, inf)
            returns[i] += r
            last[i] = (o, inf)
            done[i] = te or tr
    assert list(pool.done) == done and np.allclose(pool.returns, returns)
    pool.close()


def test_finished_envs_stay_finished_until_reset():
    pool = EnvPool([lambda: gym.make(WEBSHOP_ID, **KWARGS) for _ in range(3)])
    obs, infos = pool.reset(seeds=[0, 1, 2])
    experts = [WebShopExpert(env) for env in pool.envs]
    for expert, o, info in zip(experts, obs, infos):
        expert.reset(o, info)
    # env 0 plays to the end; envs 1 and 2 wait (None)
    while not pool.done[0]:
        action, _ = experts[0].act(obs[0], infos[0])
        obs, rewards, terminated, truncated, infos = pool.step([action, None, None])
    assert rewards[0] == 1.0 and terminated[0] and infos[0]["won"]
    assert pool.steps.tolist()[1:] == [0, 0]
    final_obs = obs[0]
    obs, rewards, terminated, _truncated, _ = pool.step(["click[buy now]", "search[shampoo]", None])
    assert obs[0] == final_obs and rewards[0] == 0.0 and terminated[0]  # ignored, still done
    assert pool.steps.tolist() == [pool.steps[0], 1, 0] and not pool.all_done
    pool.reset(seeds=[0, 1, 2])
    assert not pool.done.any() and pool.returns.sum() == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="env_fns, or env_id and n"):
        EnvPool()
    pool = EnvPool(env_id=WEBSHOP_ID, n=2, env_kwargs=KWARGS)
    with pytest.raises(RuntimeError, match="before reset"):
        pool.step([None, None])
    pool.reset()
    with pytest.raises(ValueError, match="actions has 3 entries for 2 envs"):
        pool.step(["a", "b", "c"])
    with pytest.raises(ValueError, match="seeds has 1 entries"):
        pool.reset(seeds=[1])
