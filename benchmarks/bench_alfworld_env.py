"""Benchmark prism_lit/ALFWorld-v0: game generation, reset time and env steps/s (single process).

Generates ``--n-per-type`` games per task type (6 types) into a fresh temporary directory, then plays random
*admissible* actions under the registered 50-step time limit; finished episodes are reset (reset time is measured
separately and not counted in steps/s). A reset of a game seen for the first time in the process ("cold") parses
the game's logic and translates its PDDL; later resets of it ("warm") hit the engine's caches. With
``--compare-plain`` the same kind of random play also runs on unpatched TextWorld + alfworld wrappers.

    python benchmarks/bench_alfworld_env.py --n-per-type 17 --steps 20000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import gymnasium as gym

import prism_lit.envs  # noqa: F401  (registers the ids)
from prism_lit.envs import ALFWORLD_ID
from prism_lit.envs.alfworld import generate_games
from prism_lit.envs.alfworld.engine import clear_caches


def plain_engine_steps_per_s(game_files: list[Path], steps: int, seed: int) -> float:
    """Steps/s of TextWorld's PddlEnv behind alfworld's demangler, without prism_lit's caches."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs import PddlEnv

    env = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)), shuffle=False)
    rng = random.Random(seed)
    elapsed, done_steps = 0.0, 0
    while done_steps < steps:
        env.load(str(rng.choice(game_files)))
        state = env.reset()
        for _ in range(50):
            t0 = time.perf_counter()
            state, _, done = env.step(rng.choice(state["admissible_commands"]))
            elapsed += time.perf_counter() - t0
            done_steps += 1
            if done or done_steps >= steps:
                break
    return done_steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-type", type=int, default=17, help="games per task type (x6 task types)")
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-plain", type=int, default=0, metavar="STEPS",
                        help="also time this many steps on the unpatched engine")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        files = generate_games(tmp, n_per_type=args.n_per_type, split="train", seed=args.seed, size=args.size)
        gen_s = time.perf_counter() - start
        clear_caches()  # generation parsed these games already: make first resets really cold

        env = gym.make(ALFWORLD_ID, split="train", data_dir=tmp)
        rng = random.Random(args.seed)
        seen: set[str] = set()
        cold, warm = [], []

        def timed_reset(seed=None):
            t0 = time.perf_counter()
            obs, info = env.reset(seed=seed)
            dt = time.perf_counter() - t0
            (warm if info["task_id"] in seen else cold).append(dt)
            seen.add(info["task_id"])
            return obs, info

        obs, info = timed_reset(args.seed)
        step_time, steps, episodes, wins = 0.0, 0, 0, 0
        obs_chars, n_admissible = 0, 0
        while steps < args.steps:
            action = rng.choice(info["admissible_actions"])
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(action)
            step_time += time.perf_counter() - t0
            steps += 1
            obs_chars += len(obs)
            n_admissible += len(info["admissible_actions"])
            if terminated or truncated:
                episodes += 1
                wins += int(info["won"])
                obs, info = timed_reset()
        env.close()
        walkthrough = [len(json.loads(Path(f).read_text())["walkthrough"]) for f in files]

        resets = cold + warm
        result = {
            "size": args.size,
            "games": len(files),
            "generate_s": round(gen_s, 2),
            "generate_s_per_game": round(gen_s / len(files), 3),
            "expert_steps_mean": round(sum(walkthrough) / len(walkthrough), 2),
            "expert_steps_min_max": [min(walkthrough), max(walkthrough)],
            "steps": steps,
            "episodes": episodes,
            "random_win_rate": round(wins / max(episodes, 1), 3),
            "steps_per_s": round(steps / step_time, 1),
            "mean_step_ms": round(1000 * step_time / steps, 3),
            "mean_reset_ms": round(1000 * sum(resets) / len(resets), 2),
            "cold_reset_ms": round(1000 * sum(cold) / max(len(cold), 1), 2),
            "warm_reset_ms": round(1000 * sum(warm) / max(len(warm), 1), 2),
            "mean_obs_chars": round(obs_chars / steps, 1),
            "mean_admissible": round(n_admissible / steps, 1),
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
        if args.compare_plain:
            result["plain_engine_steps_per_s"] = round(plain_engine_steps_per_s(files, args.compare_plain,
                                                                                args.seed), 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
