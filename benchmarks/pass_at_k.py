"""How often a policy wins when it samples as RL does: per task type, the sampled success rate, pass@k, and the
share of GRPO groups that would carry a gradient (docs/results.md §1, ALFWorld gate 1).

    python benchmarks/pass_at_k.py runs/alf_g4/base/seed0 --policy base --split train --games 60 --k 8 \\
        --temperature 0.7 --group_size 4 --out runs/alf_passk/base_t07.json

GRPO learns from a group of ``group_size`` episodes of one task only when their returns differ. A task type whose
pass@k is 0 at the rollout temperature gives GRPO nothing to reinforce, however long it trains; a type the policy
always wins gives it nothing either. For each game of the panel (the pipeline's fixed panel of ``--split``, position
i played with env seed i, as the eval stage plays it) the policy samples ``k`` episodes; with ``c`` of them won:

- sampled success: c / k (pass@1 at this temperature);
- pass@k: whether any of the k won;
- mixed groups: the chance that ``group_size`` of the k, drawn without replacement, are not all equal,
  1 − (C(c, g) + C(k − c, g)) / C(k, g): the share of that game's GRPO groups with a nonzero advantage.

Intervals: 95 % percentile bootstrap over the games of each row (seeded).
"""

from __future__ import annotations

import argparse
from math import comb
from pathlib import Path

import numpy as np


def mixed_group_chance(wins: int, k: int, group_size: int) -> float:
    """The chance that ``group_size`` of ``k`` episodes with ``wins`` won, drawn without replacement, differ."""
    if not 1 <= group_size <= k:
        raise ValueError(f"group size {group_size} must be between 1 and k={k}")
    same = comb(wins, group_size) + comb(k - wins, group_size)
    return 1.0 - same / comb(k, group_size)


def summarize(wins_by_game: dict[str, tuple[str, int]], k: int, group_size: int, n_boot: int = 10_000,
              seed: int = 0) -> dict[str, dict[str, object]]:
    """Per task type and ``all``: games, then sampled success, pass@k and mixed groups, each with its interval."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for task_type, wins in wins_by_game.values():
        cell = (wins / k, float(wins > 0), mixed_group_chance(wins, k, group_size))
        rows.setdefault(task_type, []).append(cell)
        rows.setdefault("all", []).append(cell)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, object]] = {}
    for name in sorted(rows, key=lambda n: (n == "all", n)):
        values = np.array(rows[name])
        idx = rng.integers(0, len(values), size=(n_boot, len(values)))
        boot = values[idx].mean(axis=1)
        out[name] = {"games": len(values)}
        for j, metric in enumerate(("sampled_success", "pass_at_k", "mixed_groups")):
            lo, hi = np.percentile(boot[:, j], [2.5, 97.5])
            out[name][metric] = {"mean": float(values[:, j].mean()), "ci": [float(lo), float(hi)]}
    return out


def markdown(table: dict[str, dict[str, object]], k: int, group_size: int) -> str:
    def cell(stat) -> str:
        return f"{stat['mean'] * 100:.1f} [{stat['ci'][0] * 100:.1f}, {stat['ci'][1] * 100:.1f}]"

    lines = [f"| task type | games | sampled success (%) | pass@{k} (%) | groups of {group_size} with a gradient (%) |",
             "|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['games']} | {cell(row['sampled_success'])} | {cell(row['pass_at_k'])} | "
                     f"{cell(row['mixed_groups'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a pipeline run directory (reads its pipeline_config.json)")
    parser.add_argument("--policy", default="base", choices=["base", "sft", "final"])
    parser.add_argument("--split", default="train", help="whose fixed panel to play (default: train, what RL plays)")
    parser.add_argument("--games", type=int, default=60)
    parser.add_argument("--k", type=int, default=8, help="sampled episodes per game")
    parser.add_argument("--group_size", type=int, help="GRPO's group size (default: the run's rl module's)")
    parser.add_argument("--temperature", type=float, help="default: the run's RL rollout temperature")
    parser.add_argument("--max_steps", type=int, help="default: the run's RL rollout max_steps")
    parser.add_argument("--batch_size", type=int, default=32, help="episodes played at once")
    parser.add_argument("--seed", type=int, default=0, help="the sampling generator's seed")
    parser.add_argument("--out", type=Path, help="also write the table and every game's wins as JSON here")
    args = parser.parse_args()

    from prism_lit.pipeline.context import Artifacts

    art = Artifacts(args.run_dir)
    try:
        config = art.read_config()
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    module_args = ((config.get("rl") or {}).get("module") or {}).get("init_args") or {}
    rollout = module_args.get("rollout") or {}
    group_size = args.group_size or int(module_args.get("group_size", 4))
    temperature = args.temperature if args.temperature is not None else float(rollout.get("temperature", 1.0))
    max_steps = args.max_steps or rollout.get("max_steps") or config["eval"]["max_steps"]
    for option in ("games", "k", "batch_size"):
        if getattr(args, option) < 1:
            raise SystemExit(f"--{option} {getattr(args, option)}: must be at least 1")
    if group_size < 1 or args.k < group_size:
        raise SystemExit(f"--k {args.k}: needs at least --group_size ({group_size}, at least 1) samples per game")

    import torch

    from prism_lit.commands import resolve_env_id
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.io import atomic_write_json
    from prism_lit.pipeline.stages import fixed_panel
    from prism_lit.policy import PolicySpec, load_policy
    from prism_lit.rl.rollout import RolloutConfig, RolloutEngine, env_task_ids, make_env

    path = art.policy_dir(args.policy)
    if not path.is_dir():
        raise SystemExit(f"--policy {args.policy}: {path} does not exist (stage not run, or trained as an adapter)")
    env_id, env_kwargs = resolve_env_id(config["env"]["id"]), {**config["env"]["kwargs"], "split": args.split}
    env = make_env(env_id, env_kwargs)
    try:
        panel = fixed_panel(env_task_ids(env), args.split, args.games)
    finally:
        env.close()
    if len(panel) < args.games:
        raise SystemExit(f"--games {args.games}: split {args.split!r} of {config['env']['id']} has {len(panel)} games")
    torch.manual_seed(args.seed)
    model, tokenizer = load_policy(PolicySpec(path=str(path)))
    model.eval()
    engine = RolloutEngine(env_id, AgentProtocol(**config["env"]["protocol"]), tokenizer,
                           RolloutConfig(temperature=temperature, max_steps=int(max_steps),
                                         max_new_tokens=int(config["eval"]["max_new_tokens"])), env_kwargs)
    rows = [(task, position, position) for position, task in enumerate(panel) for _ in range(args.k)]
    generator = torch.Generator().manual_seed(args.seed)
    wins: dict[str, tuple[str, int]] = {}
    try:
        for lo in range(0, len(rows), args.batch_size):
            for ep in engine.run(model, rows[lo:lo + args.batch_size], greedy=False, generator=generator):
                task_type, won = wins.get(ep.task_id, (ep.task_type, 0))
                wins[ep.task_id] = (task_type, won + int(ep.won))
            print(f"{min(lo + args.batch_size, len(rows))} / {len(rows)} episodes", flush=True)
    finally:
        engine.close()
    table = summarize(wins, args.k, group_size)
    print(f"\n{args.run_dir} {args.policy}, {args.games} {args.split} games × {args.k} episodes at temperature "
          f"{temperature}, {max_steps} steps\n")
    print(markdown(table, args.k, group_size))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, {"run_dir": str(args.run_dir), "policy": args.policy, "split": args.split,
                                     "k": args.k, "group_size": group_size, "temperature": temperature,
                                     "max_steps": max_steps, "seed": args.seed, "table": table,
                                     "wins": {t: {"task_type": ty, "wins": w} for t, (ty, w) in wins.items()}})


if __name__ == "__main__":
    main()
