"""Benchmark the RL rollout engine: 16 parallel WebShop and ALFWorld episodes with the embedded default model.

For each env: plays ``--episodes`` episodes at once with :class:`prism_lit.rl.RolloutEngine` (sampling, KV cache,
per-token log-probs), then one GRPO-style policy update (forward + backward over every recorded step, micro-batches
of 8), and reports

- env steps/s and generated tokens/s of the rollout,
- the share of wall-clock in env stepping, prompt building (chat template + tokenisation), generation and training,
- the engine's generator against plain ``model.generate`` (sampling, same max new tokens, same eos) on the *same*
  prompt batches, interleaved batch by batch (the machine is shared: interleaving exposes both to the same load).

The model is the embedded default (``EmbeddedModelSpec()``: 1M-parameter Llama, 3k BPE vocabulary) with its
tokenizer trained on the env's own observations; it is randomly initialised, so replies run to ``max_new_tokens``
and are mostly malformed: the numbers measure the machinery, not a policy.

    python benchmarks/bench_rollout.py --envs webshop alfworld --episodes 16 --max-new-tokens 24
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from prism_lit.envs import ALFWORLD_ID, WEBSHOP_ID
from prism_lit.envs.protocol import AgentProtocol
from prism_lit.policy import EmbeddedModelSpec, PolicySpec, build_embedded_default, load_policy
from prism_lit.rl.generation import generate, left_pad
from prism_lit.rl.rollout import RolloutConfig, RolloutEngine, env_task_ids, group_tasks, make_env
from prism_lit.rl.scoring import StepSample, collate_steps, policy_forward

ENVS = {
    "webshop": (WEBSHOP_ID, {"num_products": 300, "results_per_page": 5}, 15),
    "alfworld": (ALFWORLD_ID, {"n_per_type": 3}, 50),
}


def corpus(env_id: str, kwargs: dict, protocol: AgentProtocol, n_tasks: int) -> list[str]:
    """Observation text of the env for the tokenizer (resets plus a few admissible steps per task)."""
    env = make_env(env_id, kwargs)
    texts = [protocol.system, "Action: search[ ] click[ ] Thought:"]
    for task in env_task_ids(env)[:n_tasks]:
        obs, info = env.reset(seed=0, options={"task_id": task})
        for _ in range(3):
            admissible = info.get("admissible_actions") or []
            texts.append(protocol.render_observation(obs, admissible))
            texts.extend(protocol.format_reply(a, admissible=admissible) for a in admissible[:5])
            if not admissible:
                break
            obs, _, term, trunc, info = env.step(admissible[-1])
            if term or trunc:
                break
    env.close()
    return texts


def bench_env(name: str, args, workdir: Path) -> dict:
    env_id, kwargs, max_steps = ENVS[name]
    protocol = AgentProtocol(env=name, numbered_actions=True, history_turns=args.history_turns)
    t0 = time.perf_counter()
    policy_dir = build_embedded_default(workdir / f"{name}_policy", corpus(env_id, kwargs, protocol, 60),
                                        EmbeddedModelSpec())
    setup_s = time.perf_counter() - t0
    model, tokenizer = load_policy(PolicySpec(path=str(policy_dir)))
    probe = make_env(env_id, kwargs)
    tasks = env_task_ids(probe)[: args.episodes]
    probe.close()
    rows = group_tasks(tasks, list(range(len(tasks))), 1)
    config = RolloutConfig(max_new_tokens=args.max_new_tokens, max_steps=min(max_steps, args.max_steps))
    engine = RolloutEngine(env_id, protocol, tokenizer, config, kwargs)
    engine.run(model, rows[:2], generator=torch.Generator().manual_seed(1))  # warm-up: env creation, first resets
    t0 = time.perf_counter()
    episodes = engine.run(model, rows, generator=torch.Generator().manual_seed(0))
    rollout_s = time.perf_counter() - t0
    stats = engine.stats

    # one policy update over every recorded step (what a GRPO iteration does after its rollout)
    model.train()
    samples = [StepSample(s.prompt_ids, s.action_ids, s.logprobs, advantage=1.0) for e in episodes for s in e.steps]
    t0 = time.perf_counter()
    n_tokens = sum(len(s.action_ids) for s in samples)
    for lo in range(0, len(samples), 8):
        batch = collate_steps(samples[lo:lo + 8], tokenizer.pad_token_id)
        out = policy_forward(model, batch)
        loss = -(out.logprobs * batch.action_mask).sum() / n_tokens
        loss.backward()
    train_s = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    model.eval()

    # the engine's generator vs plain model.generate on the same prompt batches (step t of every episode still
    # running at step t), interleaved batch by batch so that load from other processes hits both alike
    by_step: dict[int, list[list[int]]] = {}
    for e in episodes:
        for t, s in enumerate(e.steps):
            by_step.setdefault(t, []).append(s.prompt_ids)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    eng_tokens = hf_tokens = 0
    eng_s = hf_s = 0.0
    with torch.no_grad():
        for prompts in by_step.values():
            t0 = time.perf_counter()
            outs = generate(model, prompts, pad_token_id=tokenizer.pad_token_id, stop_token_ids=engine.stop_token_ids,
                            max_new_tokens=args.max_new_tokens, generator=gen, tokenizer=tokenizer,
                            stop_strings=protocol.stop_strings)
            eng_s += time.perf_counter() - t0
            eng_tokens += sum(len(o.token_ids) for o in outs)
            ids, mask = left_pad(prompts, tokenizer.pad_token_id)
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            hf_s += time.perf_counter() - t0
            for row in out[:, ids.shape[1]:].tolist():
                hf_tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    engine.close()

    total = rollout_s + train_s
    return {
        "env": name,
        "episodes": len(episodes),
        "env_steps": stats.env_steps,
        "generated_tokens": stats.generated_tokens,
        "mean_prompt_tokens": round(stats.prompt_tokens / max(stats.env_steps, 1), 1),
        "rollout_s": round(rollout_s, 2),
        "env_steps_per_s": round(stats.env_steps / rollout_s, 1),
        "generated_tokens_per_s": round(stats.generated_tokens / rollout_s, 1),
        "generation_tokens_per_s": round(stats.generated_tokens / stats.generation_s, 1),
        "same_prompts": {
            "engine_generate_tokens_per_s": round(eng_tokens / eng_s, 1),
            "hf_generate_tokens_per_s": round(hf_tokens / hf_s, 1),
            "engine_generate_s": round(eng_s, 2),
            "hf_generate_s": round(hf_s, 2),
        },
        "train_s": round(train_s, 2),
        "train_tokens_per_s": round(sum(len(s.prompt_ids) + len(s.action_ids) for s in samples) / train_s, 1),
        "share": {
            "env": round(stats.env_s / total, 3),
            "prompt": round(stats.prompt_s / total, 3),
            "generation": round(stats.generation_s / total, 3),
            "training": round(train_s / total, 3),
        },
        "setup_s (tokenizer + model build)": round(setup_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["webshop", "alfworld"], choices=sorted(ENVS))
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-steps", type=int, default=15, help="cap on env steps per episode")
    parser.add_argument("--history-turns", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=str, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"torch {torch.__version__}, {args.threads} threads", "args": vars(args), "envs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.envs:
            results["envs"].append(bench_env(name, args, Path(tmp)))
            print(json.dumps(results["envs"][-1], indent=2), flush=True)
    if args.out:
        from prism_lit.io import atomic_write_json

        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
