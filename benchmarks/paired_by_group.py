"""Paired success differences between policies of pipeline runs, split by a group of task types, with the
difference between the groups' differences (docs/results.md §4, the conflict variant's SFT vs RL).

    python benchmarks/paired_by_group.py --seeds 0 1 2 --familiar beauty fashion food \
        --policy base=runs/headline/rl-100/seed{seed}:base rl-100=runs/headline/rl-100/seed{seed}:final \
                 sft-r1=runs/headline/sft-then-rl/seed{seed}:sft sft-r2=runs/conflict3/sft-100-r2/seed{seed}:final \
        --pairs sft-r2:sft-r1 sft-r2:rl-100 sft-r1:rl-100

Reads each run's ``eval/episodes.jsonl`` (one split, default ``test``). Every policy must have played the same
panel in every seed. ``--from_position N`` keeps the panel's goals from position N on (a 200-goal panel starts
with the 100-goal one, so ``--from_position 100`` is the half a 100-goal comparison never played: a panel that
can choose a recipe without touching the one that reports it). Intervals: 95 % percentile bootstrap that resamples seeds and, within each group, goals
(seeded: the tables repeat). A last table gives each pair's difference run by run (no interval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load(spec: str, seed: int, split: str, from_position: int = 0) -> dict[str, tuple[float, str]]:
    template, _, policy = spec.rpartition(":")
    path = Path(template.format(seed=seed)) / "eval" / "episodes.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (--policy {spec!r}, seed {seed}): has that run's eval stage finished?")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out = {r["task_id"]: (float(r["won"]), r["task_type"]) for r in rows
           if r["policy"] == policy and r["split"] == split and r["env_seed"] >= from_position}
    if not out:
        where = f" from panel position {from_position} on (--from_position)" if from_position else ""
        raise SystemExit(f"{path}: no {split!r} episodes of policy {policy!r}{where}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", nargs="+", required=True, help="NAME=RUN_DIR_TEMPLATE:POLICY ({seed} is filled in)")
    parser.add_argument("--pairs", nargs="+", required=True, help="A:B names of --policy")
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--familiar", nargs="+", required=True, help="the task types of the first group")
    parser.add_argument("--split", default="test")
    parser.add_argument("--bootstrap", type=int, default=10_000)
    parser.add_argument("--from_position", type=int, default=0, help="only the panel's goals from this position on")
    args = parser.parse_args()

    for p in args.policy:
        if "=" not in p or ":" not in p.split("=", 1)[1]:
            raise SystemExit(f"--policy {p!r}: expected NAME=RUN_DIR_TEMPLATE:POLICY")
    specs = dict(p.split("=", 1) for p in args.policy)
    for pair in args.pairs:
        names = pair.split(":")
        if len(names) != 2 or any(n not in specs for n in names):
            raise SystemExit(f"--pairs {pair!r}: expected A:B, both names of --policy ({', '.join(specs)})")
    data = {name: [load(spec, s, args.split, args.from_position) for s in args.seeds] for name, spec in specs.items()}
    first = next(iter(data.values()))[0]
    for name, per_seed in data.items():
        for s, cells in zip(args.seeds, per_seed):
            if set(cells) != set(first):
                raise SystemExit(f"{name} seed {s}: another panel than {next(iter(data))} seed {args.seeds[0]}")
    goals = sorted(first)
    groups = {"familiar": [g for g in goals if first[g][1] in args.familiar],
              "unfamiliar": [g for g in goals if first[g][1] not in args.familiar]}

    def won(name: str, group: str) -> np.ndarray:  # seeds × goals of the group
        return np.array([[cells[g][0] for g in groups[group]] for cells in data[name]])

    rng = np.random.default_rng(0)
    draws = [(rng.integers(0, len(args.seeds), len(args.seeds)),
              {k: rng.integers(0, len(v), len(v)) for k, v in groups.items()}) for _ in range(args.bootstrap)]

    def interval(stat) -> str:
        low, high = np.percentile([stat(s, g) for s, g in draws], [2.5, 97.5])
        return f"[{100 * low:+.1f}, {100 * high:+.1f}]"

    print(f"| policy | {args.familiar} ({len(groups['familiar'])} goals) | others ({len(groups['unfamiliar'])}) | all |")
    print("|---|---|---|---|")
    for name in data:
        f, u = won(name, "familiar"), won(name, "unfamiliar")
        print(f"| {name} | {100 * f.mean():.1f} | {100 * u.mean():.1f} | {100 * np.concatenate([f, u], 1).mean():.1f} |")
    print("\n| A − B (success, points) | familiar | others | familiar − others | all |\n|---|---|---|---|---|")
    for pair in args.pairs:
        a, b = pair.split(":")
        d = {k: won(a, k) - won(b, k) for k in groups}
        cells = [f"{100 * d[k].mean():+.1f} " + interval(lambda s, g, k=k, d=d: d[k][s][:, g[k]].mean()) for k in groups]
        did = d["familiar"].mean() - d["unfamiliar"].mean()
        cells.append(f"{100 * did:+.1f} " + interval(lambda s, g, d=d: d["familiar"][s][:, g["familiar"]].mean()
                                                     - d["unfamiliar"][s][:, g["unfamiliar"]].mean()))
        both = np.concatenate([d["familiar"], d["unfamiliar"]], 1)
        cells.append(f"{100 * both.mean():+.1f} " + interval(lambda s, g, d=d: np.concatenate(
            [d["familiar"][s][:, g["familiar"]], d["unfamiliar"][s][:, g["unfamiliar"]]], 1).mean()))
        print(f"| {a} − {b} | " + " | ".join(cells) + " |")
    print("\n| A − B by run (success, points) | seed | familiar | others | all |\n|---|---|---|---|---|")
    for pair in args.pairs:
        a, b = pair.split(":")
        d = {k: won(a, k) - won(b, k) for k in groups}
        for i, seed in enumerate(args.seeds):
            per_run = [d["familiar"][i], d["unfamiliar"][i], np.concatenate([d["familiar"][i], d["unfamiliar"][i]])]
            print(f"| {a} − {b} | {seed} | " + " | ".join(f"{100 * x.mean():+.1f}" for x in per_run) + " |")
    print(f"\nseeds {args.seeds}, split {args.split}, {args.bootstrap} bootstrap replicates")


if __name__ == "__main__":
    main()
