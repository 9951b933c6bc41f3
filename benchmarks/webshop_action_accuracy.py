"""Diagnostic: which WebShop decisions does a policy get right? Teacher-forced accuracy per kind of expert action.

    python benchmarks/webshop_action_accuracy.py runs/pipeline_webshop                     # base, sft, final
    python benchmarks/webshop_action_accuracy.py runs/pipeline_webshop --policies base --episodes 200

The expert (the run's own protocol and expert settings) plays ``--episodes`` goals of the test split; each policy
then reads every episode with the expert's replies in its context (teacher forcing), and a step counts as right
when the policy's greedy next token equals the expert's at every token of the reply. Steps are grouped by the
product's category (familiar = pre-trained on, from the run's ``base.familiar_task_types``) and by what the reply
does: ``search``, ``product`` (a listed product, by number), ``option`` (an option value), ``buy``, ``detour``
(back to search, next/previous page). ``chance`` is what picking uniformly among the page's choices would get:
1 / (products listed) for ``product``, 1 / (values of the clicked option's kind) for ``option``.
Greedy episodes compound these: a goal is won only if the search, the product and every option are right.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

SEP = " [SEP] "
DETOURS = {"click[back to search]", "click[next >]", "click[< prev]"}


def action_kind(reply: str) -> str:
    """``search``, ``product``, ``buy``, ``detour`` or ``option`` for a formatted expert reply."""
    action = reply.split("Action:")[-1].strip()
    if action.startswith("search["):
        return "search"
    if re.fullmatch(r"\d+", action) or re.fullmatch(r"click\[b0\w+\]", action):
        return "product"
    if action == "click[buy now]":
        return "buy"
    if action in DETOURS:
        return "detour"
    return "option"


def option_chance(page: str, value: str, option_kinds: set[str]) -> float | None:
    """1 / the number of values offered for the kind ``value`` belongs to, read off an item page's text
    (``… < Prev [SEP] color [SEP] white [SEP] navy [SEP] size [SEP] small [SEP] <title> [SEP] Price: …``)."""
    groups: list[list[str]] = []
    for part in page.split("\n")[0].split(SEP):
        part = part.strip().lower()
        if part.startswith("price:"):
            if groups and groups[-1]:
                groups[-1].pop()  # the product's title, which comes right before its price
            break
        if part in option_kinds:
            groups.append([])
        elif groups:
            groups[-1].append(part)
    for values in groups:
        if value in values:
            return 1.0 / len(values)
    return None


def product_chance(page: str) -> float | None:
    listed = re.findall(r"^\d+\. click\[b0", page, flags=re.MULTILINE | re.IGNORECASE)
    return 1.0 / len(listed) if listed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a pipeline run directory (reads its pipeline_config.json)")
    parser.add_argument("--policies", nargs="+", default=["base", "sft", "final"], choices=["base", "sft", "final"])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()

    import torch

    from prism_lit.data.schema import read_trajectories
    from prism_lit.data.tokenize import tokenize_trajectory
    from prism_lit.envs.experts import write_expert_dataset
    from prism_lit.envs.protocol import AgentProtocol
    from prism_lit.envs.webshop.generator import CATEGORIES
    from prism_lit.pipeline.context import Artifacts
    from prism_lit.policy import PolicySpec, load_policy

    try:
        config = Artifacts(args.run_dir).read_config()
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    env = config["env"]
    if env["id"] != "webshop":
        raise SystemExit(f"{args.run_dir}: env.id is {env['id']!r}; this diagnostic reads WebShop pages")
    protocol = AgentProtocol(**env["protocol"])
    familiar = set(config["base"].get("familiar_task_types") or [])
    option_kinds = {kind for spec in CATEGORIES.values() for kind in spec["options"]}
    corpus = args.run_dir / "eval" / f"expert_test_{args.episodes}_{args.seed}.jsonl"
    if not corpus.is_file():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        write_expert_dataset("webshop", args.episodes, corpus, protocol, split="test", seed=args.seed,
                             env_kwargs=env["kwargs"], expert_kwargs=env.get("expert_kwargs"))
    trajectories = read_trajectories(corpus)
    paths = {"base": args.run_dir / "base" / "model", "sft": args.run_dir / "sft" / "export",
             "final": args.run_dir / "rl" / "export"}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.policies:
        if not paths[name].is_dir():
            print(f"{name}: {paths[name]} does not exist (stage not run, or trained as an adapter): skipped")
            continue
        model, tokenizer = load_policy(PolicySpec(path=str(paths[name])))
        model.eval()
        right: dict[tuple[str, str], list[float]] = defaultdict(list)
        chance: dict[tuple[str, str], list[float]] = defaultdict(list)
        for traj in trajectories:
            sample = tokenize_trajectory(traj, tokenizer)
            with torch.no_grad():
                predicted = model(torch.tensor([sample.input_ids])).logits[0].argmax(-1).tolist()
            spans, span = [], []
            for i, label in enumerate(sample.labels):
                if label != -100:
                    span.append(i)
                elif span:
                    spans.append(span)
                    span = []
            spans += [span] if span else []
            turns = [m.content for m in traj.messages if m.role in ("user", "assistant")]
            group = "familiar" if traj.task_type in familiar else "unfamiliar"
            for span, (page, reply) in zip(spans, zip(turns[0::2], turns[1::2])):
                kind = action_kind(reply)
                right[(group, kind)].append(float(all(predicted[i - 1] == sample.labels[i] for i in span)))
                if kind == "option":
                    value = reply.split("click[")[-1].rstrip("]").strip().lower()
                    p = option_chance(page, value, option_kinds)
                elif kind == "product":
                    p = product_chance(page)
                else:
                    p = None
                if p is not None:
                    chance[(group, kind)].append(p)
        results[name] = {
            f"{group}/{kind}": {"accuracy": sum(v) / len(v), "steps": len(v),
                                "chance": sum(chance[(group, kind)]) / len(chance[(group, kind)])
                                if chance[(group, kind)] else None}
            for (group, kind), v in sorted(right.items())
        }
        print(f"\n{name} ({paths[name]})")
        print(f"{'categories/action':<22} {'steps':>6} {'right':>6} {'chance':>7}")
        for key, row in results[name].items():
            ch = f"{row['chance']:.2f}" if row["chance"] is not None else "–"
            print(f"{key:<22} {row['steps']:>6} {row['accuracy']:>6.2f} {ch:>7}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
