"""Greedy episodes of a run's policies on more of a split's fixed panel, without re-running the run: positions
``--from_position`` to ``--to_position`` of the panel, position i played with env seed i, with the run's own eval
settings, exactly as the eval stage would play them in a panel that long (docs/results.md §1, ALFWorld gate 1:
the two-pass runs on games they were never read on).

    python benchmarks/eval_panel.py runs/alf_rare2p/rl-100/seed0 --policies final \\
        --splits valid_seen valid_unseen_rooms --from_position 200 --to_position 600 \\
        --out_dir runs/alf_rare2p_fresh/rl-100/seed0

Writes ``OUT_DIR/eval/episodes.jsonl`` in the eval stage's format (one line per episode), so
``benchmarks/paired_by_group.py --from_position`` and the other readers of a run's episodes read it as they read a
run's. A panel position already in the run's own ``eval/episodes.jsonl`` is refused unless ``--replay`` is given
(replaying it is how one checks that the episodes repeat).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a pipeline run directory (reads its pipeline_config.json)")
    parser.add_argument("--policies", nargs="+", default=["final"], choices=["base", "sft", "final"])
    parser.add_argument("--splits", nargs="+", help="default: the run's env.eval_splits")
    parser.add_argument("--from_position", type=int, required=True)
    parser.add_argument("--to_position", type=int, required=True, help="exclusive")
    parser.add_argument("--out_dir", type=Path, required=True, help="not the run dir: its eval/ stays the run's")
    parser.add_argument("--replay", action="store_true", help="allow positions the run's own panel has played")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()

    from prism_lit.pipeline.context import Artifacts

    art = Artifacts(args.run_dir)
    try:
        config = art.read_config()
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    if args.out_dir.resolve() == args.run_dir.resolve():
        raise SystemExit(f"--out_dir {args.out_dir}: is the run dir; its eval/episodes.jsonl is the run's record")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads {args.threads}: need at least 1 (leave it out for torch's default)")
    if not 0 <= args.from_position < args.to_position:
        raise SystemExit(f"--from_position {args.from_position} --to_position {args.to_position}: "
                         "need 0 <= from < to")
    panels = config["env"]["eval_splits"]
    splits = args.splits or list(panels)
    for split in splits:
        if split in panels and args.from_position < panels[split] and not args.replay:
            raise SystemExit(f"--from_position {args.from_position}: positions below {panels[split]} of {split!r} "
                             f"are the run's own panel (env.eval_splits); start there, or pass --replay")
    for policy in args.policies:
        if not art.policy_dir(policy).is_dir():
            raise SystemExit(f"--policies {policy}: {art.policy_dir(policy)} does not exist (stage not run, or an "
                             "adapter)")
    out = args.out_dir / "eval" / "episodes.jsonl"
    if out.exists():
        raise SystemExit(f"{out} exists; remove it or choose another --out_dir")

    import torch

    from prism_lit.commands import resolve_env_id
    from prism_lit.envs import env_metrics
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.io import atomic_write_text
    from prism_lit.pipeline.stages import episode_record, fixed_panel
    from prism_lit.policy import PolicySpec, load_policy
    from prism_lit.rl.evaluation import evaluate_policy
    from prism_lit.rl.rollout import env_task_ids, make_env

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env_id, evaluation = resolve_env_id(config["env"]["id"]), config["eval"]
    protocol, scorer = AgentProtocol(**config["env"]["protocol"]), env_metrics(env_id)
    positions: dict[str, list[str]] = {}
    for split in splits:
        env = make_env(env_id, {**config["env"]["kwargs"], "split": split})
        try:
            panel = fixed_panel(env_task_ids(env), split, args.to_position)
        finally:
            env.close()
        if len(panel) < args.to_position:
            raise SystemExit(f"--to_position {args.to_position}: split {split!r} has {len(panel)} games")
        positions[split] = panel[args.from_position:args.to_position]
    lines: list[str] = []
    for policy in args.policies:
        model, tokenizer = load_policy(PolicySpec(path=str(art.policy_dir(policy))))
        model.eval()
        for split, tasks in positions.items():
            metrics = evaluate_policy(
                model, tokenizer, protocol, env_id, {**config["env"]["kwargs"], "split": split}, tasks,
                seeds=list(range(args.from_position, args.to_position)), max_steps=evaluation["max_steps"],
                batch_size=evaluation["batch_size"], max_new_tokens=evaluation["max_new_tokens"],
                return_episodes=True)
            lines += [json.dumps(episode_record(policy, split, ep, scorer)) + "\n" for ep in metrics["episodes_list"]]
            print(f"{args.run_dir} {policy} on {split} positions {args.from_position}-{args.to_position - 1}: "
                  f"success {metrics['success_rate']:.3f}", flush=True)
        del model
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(lines))


if __name__ == "__main__":
    main()
