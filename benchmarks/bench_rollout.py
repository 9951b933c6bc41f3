"""Benchmark the RL stage's two episode modes side by side: one RL iteration (rollout + update) and greedy
evaluation, ``per_step`` (every step re-prefilled, every step scored on its own) against ``sequence`` (each row
keeps its KV cache across turns; a chained full-history episode is scored in one forward).

Setup (WebShop as the embedded benchmark plays it, ``configs/parts/webshop/env.yaml``, 8-step episodes as
``configs/parts/common/rl.yaml``): the embedded default model (``EmbeddedModelSpec()``, 1M parameters, 3k BPE
vocabulary trained on the env's text), warmed by a short SFT on expert episodes (``--warm-steps``), so replies are
well-formed and episodes have realistic lengths. Then ``--repeats`` rounds, each running both modes back to back
(the order alternates): a sampled rollout of ``--tasks`` x ``--group-size`` episodes with one seed, and the
update of :class:`prism_lit.rl.GRPOModule` over every step (``minibatch_backward``: forward + backward, micro-batches
of ``--micro-batch-size`` steps, no optimizer step, so every round plays the same policy); then greedy evaluation
(``evaluate_policy``) of ``--eval-tasks`` held-out goals in both modes (greedy prompt-lookup drafts on, the
default), and in ``per_step`` mode without drafts (one token per forward, as before drafts), each twice, interleaved.
The machine is shared: ratios are taken within a round and the medians reported; both modes must give the same
tokens, log-probs and greedy results. Reported per mode: prompt tokens processed, generated tokens/s, update
tokens/s, episodes/s, model forwards and the share of time per part, for the RL iteration and for evaluation.

    python benchmarks/bench_rollout.py --threads 1 --out bench_rollout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from prism_lit.data.schema import read_trajectories
from prism_lit.data.tokenize import tokenize_trajectory
from prism_lit.envs import WEBSHOP_ID
from prism_lit.envs.experts import write_expert_dataset
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import EmbeddedModelSpec, PolicySpec, build_embedded_default, load_policy
from prism_lit.rl import GRPOModule, evaluate_policy
from prism_lit.rl.rollout import env_task_ids, group_tasks, make_env

ENV_KWARGS = {"num_products": 1000, "results_per_page": 5}
PROTOCOL = {"env": "webshop", "reply_format": "action", "numbered_actions": True, "number_pattern": r"^click\[b0",
            "history_turns": 8, "list_only_numbered": True, "repeat_task": False}
MODES = ("per_step", "sequence")
EVALS = {"per_step": ("per_step", 3), "sequence": ("sequence", 3), "per_step, no drafts": ("per_step", 0)}


def warm_policy(workdir: Path, protocol: AgentProtocol, args) -> tuple[Path, dict]:
    """The embedded default, tokenizer trained on expert text, then ``warm_steps`` SFT steps on expert episodes
    (reused from ``--policy-dir`` when it holds one)."""
    if args.policy_dir and (Path(args.policy_dir) / "policy" / "config.json").is_file():
        return Path(args.policy_dir) / "policy", {"reused": args.policy_dir}
    workdir = Path(args.policy_dir) if args.policy_dir else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = workdir / "expert.jsonl"
    write_expert_dataset(WEBSHOP_ID, args.expert_episodes, data, protocol, split="train", env_kwargs=ENV_KWARGS,
                         expert_kwargs={"query": "short"})
    trajectories = read_trajectories(data)
    corpus = [m.content for t in trajectories for m in t.messages]
    policy_dir = build_embedded_default(workdir / "policy", corpus, EmbeddedModelSpec())
    model, tok = load_policy(PolicySpec(path=str(policy_dir)))
    samples = [s for s in (tokenize_trajectory(t, tok) for t in trajectories) if s is not None]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(args.warm_steps):
        batch = [samples[i] for i in torch.randint(len(samples), (4,), generator=gen).tolist()]
        width = max(len(s.input_ids) for s in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for row, s in enumerate(batch):
            ids[row, :len(s.input_ids)] = torch.tensor(s.input_ids)
            labels[row, :len(s.labels)] = torch.tensor(s.labels)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.save_pretrained(policy_dir)
    return policy_dir, {"warm_s": round(time.perf_counter() - t0, 1), "warm_steps": args.warm_steps,
                        "sft_loss_first_last": [round(losses[0], 3), round(losses[-1], 3)]}


def make_module(policy_dir: Path, mode: str, args) -> GRPOModule:
    module = GRPOModule(
        policy=PolicySpec(path=str(policy_dir)), protocol=AgentProtocol(**PROTOCOL), env_id=WEBSHOP_ID,
        env_kwargs=ENV_KWARGS, group_size=args.group_size, skip_zero_advantage=False,
        rollout={"max_new_tokens": 32, "max_steps": args.max_steps, "episode_mode": mode},
        update={"micro_batch_size": args.micro_batch_size},
    )
    module.configure_model()
    module.manual_backward = lambda loss: loss.backward()  # outside a Trainer
    return module


def iteration(module: GRPOModule, rows, seed: int) -> dict:
    """One RL iteration's work (rollout, advantages, update gradients) with its timings and counts."""
    engine = module.train_engine()
    t0 = time.perf_counter()
    episodes = engine.run(module.model, rows, generator=torch.Generator().manual_seed(seed))
    t1 = time.perf_counter()
    samples = module.build_samples(episodes)
    module.model.train()
    micro = module.micro_batches(samples)
    update_tokens = sum(len(u[-1].prompt_ids) + len(u[-1].action_ids) for m in micro for u in m)
    t2 = time.perf_counter()
    module.minibatch_backward(samples)
    t3 = time.perf_counter()
    module.model.zero_grad(set_to_none=True)
    st = engine.stats
    return {
        "episodes": episodes, "rollout_s": t1 - t0, "update_s": t3 - t2, "iteration_s": t3 - t0,
        "env_s": st.env_s, "prompt_s": st.prompt_s, "generation_s": st.generation_s,
        "prefill_tokens": st.prefill_tokens, "prompt_tokens": st.prompt_tokens,
        "generated_tokens": st.generated_tokens, "update_tokens": update_tokens, "forwards": len(micro),
        "units": sum(len(m) for m in micro),
        "steps": len(samples),
    }


def same_rollout(a, b) -> tuple[bool, float]:
    """Same actions in both modes, and the largest log-prob difference."""
    same = [[s.action_ids for s in e.steps] for e in a] == [[s.action_ids for s in e.steps] for e in b]
    diff = max((abs(x - y) for ea, eb in zip(a, b) for sa, sb in zip(ea.steps, eb.steps)
                for x, y in zip(sa.logprobs, sb.logprobs)), default=0.0)
    return same, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4, help="tasks per iteration")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-tasks", type=int, default=48)
    parser.add_argument("--expert-episodes", type=int, default=300)
    parser.add_argument("--warm-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--policy-dir", type=str, default=None,
                        help="keep the warmed policy here and reuse it on later runs (the warm-up is most of the time)")
    parser.add_argument("--out", type=str, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    protocol = AgentProtocol(**PROTOCOL)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"torch {torch.__version__}, {args.threads} threads", "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir, results["warm"] = warm_policy(Path(tmp), protocol, args)
        modules = {mode: make_module(policy_dir, mode, args) for mode in MODES}
        env = make_env(WEBSHOP_ID, {**ENV_KWARGS, "split": "train"})
        train_ids = env_task_ids(env)
        env.close()
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        identical = []
        for r in range(args.repeats):
            tasks = train_ids[r * args.tasks:(r + 1) * args.tasks]
            rows = group_tasks(tasks, list(range(len(tasks))), args.group_size)
            order = MODES if r % 2 == 0 else MODES[::-1]
            out = {mode: iteration(modules[mode], rows, seed=r) for mode in order}
            for mode in MODES:
                runs[mode].append(out[mode])
            identical.append(same_rollout(out["per_step"]["episodes"], out["sequence"]["episodes"]))
        # greedy evaluation on held-out goals, both modes, interleaved (twice, order swapped)
        env = make_env(WEBSHOP_ID, {**ENV_KWARGS, "split": "test"})
        test_ids = env_task_ids(env)[: args.eval_tasks]
        env.close()
        model = modules["sequence"].model.eval()
        tok = modules["sequence"].tokenizer
        # EVALS: both modes with greedy drafts (the default), and per_step without them (the path before drafts)
        evals: dict[str, list[float]] = {m: [] for m in EVALS}
        eval_stats: dict[str, list] = {m: [] for m in EVALS}
        metrics = {}
        for order in (list(EVALS), list(EVALS)[::-1]):
            for name in order:
                mode, drafts = EVALS[name]
                t0 = time.perf_counter()
                metrics[name] = evaluate_policy(model, tok, protocol, WEBSHOP_ID, {**ENV_KWARGS, "split": "test"},
                                                test_ids, max_steps=args.max_steps, max_new_tokens=32,
                                                batch_size=16, return_episodes=True, episode_mode=mode,
                                                return_stats=True, draft_tokens=drafts)
                evals[name].append(time.perf_counter() - t0)
                eval_stats[name].append(metrics[name].pop("rollout_stats"))
    eval_episodes = {name: metrics[name].pop("episodes_list") for name in EVALS}
    same_eval, eval_diff = same_rollout(eval_episodes["per_step"], eval_episodes["sequence"])
    same_undrafted, undrafted_diff = same_rollout(eval_episodes["per_step, no drafts"], eval_episodes["sequence"])

    def eval_part(name: str) -> dict:
        """Greedy evaluation: medians over its two runs."""
        st, wall = eval_stats[name], evals[name]
        med = {k: statistics.median(getattr(x, k) for x in st) for k in ("env_s", "prompt_s", "generation_s",
                                                                         "prefill_tokens", "generated_tokens",
                                                                         "forwards")}
        total = statistics.median(wall)
        return {
            "seconds": round(total, 2), "episodes_per_s": round(len(test_ids) / total, 2),
            "prompt_tokens_processed": int(med["prefill_tokens"]), "generated_tokens": int(med["generated_tokens"]),
            "generated_tokens_per_s": round(med["generated_tokens"] / med["generation_s"], 1),
            "model_forwards": int(med["forwards"]),
            "share": {k: round(med[k] / total, 3) for k in ("env_s", "prompt_s", "generation_s")},
        }

    def per_mode(mode: str) -> dict:
        rs = runs[mode]
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0] if k != "episodes"}
        n_ep = args.tasks * args.group_size
        return {
            "prompt_tokens_processed": int(med["prefill_tokens"]), "prompt_tokens_rendered": int(med["prompt_tokens"]),
            "generated_tokens": int(med["generated_tokens"]),
            "generated_tokens_per_s": round(med["generated_tokens"] / med["generation_s"], 1),
            "update_tokens": int(med["update_tokens"]), "update_forwards": int(med["forwards"]),
            "update_rows (units)": int(med["units"]),
            "update_tokens_per_s": round(med["update_tokens"] / med["update_s"], 1),
            "steps_per_episode": round(med["steps"] / n_ep, 2),
            "rollout_s": round(med["rollout_s"], 2), "update_s": round(med["update_s"], 2),
            "iteration_s": round(med["iteration_s"], 2), "episodes_per_s": round(n_ep / med["iteration_s"], 2),
            "update_s_per_episode": round(med["update_s"] / n_ep, 3),
            "share": {k: round(med[k] / med["iteration_s"], 3) for k in ("env_s", "prompt_s", "generation_s",
                                                                          "update_s")},
            "greedy_eval": eval_part(mode),
        }

    def ratio(key: str) -> float:
        return round(statistics.median(a[key] / b[key] for a, b in zip(runs["per_step"], runs["sequence"])), 2)

    results.update({
        "per_step": per_mode("per_step"), "sequence": per_mode("sequence"),
        "speedup (per_step / sequence, median over rounds)": {
            "update": ratio("update_s"), "rollout": ratio("rollout_s"), "generation": ratio("generation_s"),
            "rl_iteration": ratio("iteration_s"), "prompt_tokens_processed": ratio("prefill_tokens"),
            "greedy_evaluation": round(statistics.median(a / b for a, b in zip(evals["per_step"],
                                                                               evals["sequence"])), 2),
            "greedy_evaluation (per_step without drafts / sequence)": round(statistics.median(
                a / b for a, b in zip(evals["per_step, no drafts"], evals["sequence"])), 2),
        },
        "per_step, no drafts": {"greedy_eval": eval_part("per_step, no drafts")},
        "identical": {
            "sampled_actions_every_round": all(s for s, _ in identical),
            "max_logprob_diff": max(d for _, d in identical),
            "greedy_eval_actions": same_eval, "greedy_eval_max_logprob_diff": eval_diff,
            "greedy_eval_metrics": metrics["per_step"] == metrics["sequence"],
            "greedy_eval_actions_without_drafts": same_undrafted,
            "greedy_eval_max_logprob_diff_without_drafts": undrafted_diff,
            "greedy_eval_metrics_without_drafts": metrics["per_step, no drafts"] == metrics["sequence"],
        },
        "greedy_eval": {k: round(v, 3) for k, v in metrics["sequence"].items() if "/" not in k},
    })
    print(json.dumps(results, indent=2), flush=True)
    if args.out:
        from prism_lit.io import atomic_write_json

        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
