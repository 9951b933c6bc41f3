"""Benchmark prism_lit/WebShop-v0: catalogue build, reset time and env steps/s (single process).

The agent takes random *valid* actions: on the search page it searches the words of a random goal
instruction, elsewhere it clicks a random admissible action; finished episodes are reset (reset time is
measured separately and not counted in steps/s).

    python benchmarks/bench_webshop_env.py --num-products 1000 --steps 20000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

import gymnasium as gym

import prism_lit.envs  # noqa: F401  (registers the ids)
from prism_lit.envs import WEBSHOP_ID
from prism_lit.envs.webshop.env import load_catalogue
from prism_lit.envs.webshop.search import instruction_keywords


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-products", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    load_catalogue(None, args.num_products, None, 0, True)
    build_s = time.perf_counter() - start
    env = gym.make(WEBSHOP_ID, num_products=args.num_products)
    goals = env.unwrapped.data.goals
    rng = random.Random(args.seed)

    reset_times = []
    t0 = time.perf_counter()
    obs, info = env.reset(seed=args.seed)
    reset_times.append(time.perf_counter() - t0)
    step_time, steps, episodes, searches = 0.0, 0, 0, 0
    while steps < args.steps:
        if info["has_search_bar"] or not info["admissible_actions"]:
            action = f"search[{instruction_keywords(rng.choice(goals)['instruction_text'])}]"
            searches += 1
        else:
            action = rng.choice(info["admissible_actions"])
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = env.step(action)
        step_time += time.perf_counter() - t0
        steps += 1
        if terminated or truncated:
            episodes += 1
            t0 = time.perf_counter()
            obs, info = env.reset()
            reset_times.append(time.perf_counter() - t0)

    result = {
        "num_products": args.num_products,
        "num_goals": len(goals),
        "catalogue_build_s": round(build_s, 3),
        "steps": steps,
        "episodes": episodes,
        "search_share": round(searches / steps, 3),
        "steps_per_s": round(steps / step_time, 1),
        "mean_step_ms": round(1000 * step_time / steps, 4),
        "mean_reset_ms": round(1000 * sum(reset_times) / len(reset_times), 4),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
