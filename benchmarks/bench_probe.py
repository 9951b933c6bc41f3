"""Benchmark: one SFT epoch vs the PRISM probe epoch vs the naive per-sample loop, same data and model.

    python benchmarks/bench_probe.py                       # embedded-default size (hidden 128, 4 layers)
    python benchmarks/bench_probe.py --hidden 256 --intermediate 1024
    python benchmarks/bench_probe.py --lora                # SFT trains a LoRA adapter; the probe is unchanged

Time: the three modes run interleaved, `--repeats` times, on their own copies of one random-init Llama
(fp32); medians and ratios are printed. The machine may be shared and noisy: compare within one run.

- sft:   per batch, forward + backward + AdamW step (model in train mode; HF's labels= loss).
- probe: per batch, prism_lit.probe.runner.probe_batch — the callback's code: one forward + one backward
         with hooks, per-unit norms, Gini/kurtosis/CV records.
- naive: per_sample_unit_grad_norms_naive — one sample at a time, plain autograd on weight.grad.

Peak memory: each mode runs in a fresh subprocess: a warm-up step on a tiny batch (loads lazy imports,
initialises the math libraries), then the process reads its current resident set size (/proc/self/statm),
runs one full batch, and reads its peak RSS (VmHWM in /proc/self/status; not ru_maxrss, which on Linux
inherits the parent's RSS across fork + exec). transient = peak − current-before
(activations, gradients in flight, scratch); state = what persists across steps (parameters; for SFT also
their gradients and AdamW's two moments); a step's memory = transient + state. (tracemalloc does not see
torch's allocator; the RSS high-water mark does.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from prism_lit.probe.runner import probe_batch
from prism_lit.probe.unit_norms import per_sample_unit_grad_norms_naive

MODES = ("sft", "probe", "naive")


def build_model(args: argparse.Namespace, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(2048, args.seq),
        attn_implementation=args.attn,
    )
    model = LlamaForCausalLM(cfg).float()
    if args.lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
        )
    return model


def build_batches(args: argparse.Namespace) -> list[dict]:
    """Right-padded batches of random tokens, lengths uniform in [0.75·seq, seq], first 30 % not trained."""
    g = torch.Generator().manual_seed(1234)
    batches = []
    for b in range(args.samples // args.batch):
        ids = torch.zeros(args.batch, args.seq, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for row in range(args.batch):
            n = int(torch.randint(int(0.75 * args.seq), args.seq + 1, (1,), generator=g))
            tokens = torch.randint(1, args.vocab, (n,), generator=g)
            ids[row, :n], mask[row, :n] = tokens, 1
            labels[row, int(0.3 * n) : n] = tokens[int(0.3 * n) :]
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "labels": labels,
                "id": [f"s{b}-{r}" for r in range(args.batch)],
                "task_id": ["t"] * args.batch,
                "task_type": ["x"] * args.batch,
            }
        )
    return batches


class Runner:
    """One model + state per mode; `epoch()` runs that mode over all batches."""

    def __init__(self, mode: str, args: argparse.Namespace):
        self.mode, self.args = mode, args
        self.model = build_model(args)
        if mode == "sft":
            self.model.train()
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.opt = torch.optim.AdamW(params, lr=1e-4)

    def step(self, batch: dict) -> None:
        if self.mode == "sft":
            out = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            )
            out.loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        elif self.mode == "probe":
            probe_batch(self.model, batch)
        else:
            per_sample_unit_grad_norms_naive(self.model, batch)

    def epoch(self, batches: list[dict]) -> float:
        start = time.perf_counter()
        for batch in batches:
            self.step(batch)
        return time.perf_counter() - start


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set (VmHWM). Not ru_maxrss: on Linux that one carries the
    parent's RSS over fork + exec, so a child started by a big parent would report the parent's size."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def state_bytes(runner: Runner) -> int:
    """Bytes that persist across steps: parameters, and for SFT their gradients + AdamW's two moments."""
    params = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    if runner.mode != "sft":
        return params
    trainable = sum(p.numel() * p.element_size() for p in runner.model.parameters() if p.requires_grad)
    return params + 3 * trainable


def memory_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: peak extra RSS of one step of `args.memory_child`.

    A warm-up step on a 1 × 16-token batch first loads lazily imported code and initialises the math
    libraries (a few hundred MB of RSS that every mode pays once), so the measured step holds only what
    the step itself needs (for SFT, AdamW's state then already exists: it is counted in state_mb).
    """
    runner = Runner(args.memory_child, args)
    batch = build_batches(args)[0]
    tiny = {k: (v[:1, :16] if isinstance(v, torch.Tensor) else v[:1]) for k, v in batch.items()}
    runner.step(tiny)
    before = current_rss_bytes()
    runner.step(batch)
    peak = peak_rss_bytes()
    extra = max(0, peak - before)
    state = state_bytes(runner)
    print(
        json.dumps(
            {
                "mode": args.memory_child,
                "rss_before_mb": before / 2**20,
                "peak_rss_mb": peak / 2**20,
                "step_peak_extra_mb": extra / 2**20,
                "state_mb": state / 2**20,
                "step_total_mb": (extra + state) / 2**20,
            }
        )
    )


def measure_memory(args: argparse.Namespace, argv: list[str]) -> dict[str, dict]:
    out = {}
    for mode in args.modes:
        proc = subprocess.run(
            [sys.executable, __file__, *argv, "--memory-child", mode],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument(
        "--lora", action="store_true", help="SFT trains a LoRA adapter (r=8) on all 7 projections"
    )
    parser.add_argument("--modes", default="sft,probe,naive")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine, OpenMP threads that wait for "
        "a busy core spin and make 2-thread timings erratic)",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--memory-child", choices=MODES, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return

    batches = build_batches(args)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    runners = {mode: Runner(mode, args) for mode in args.modes}
    n_params = sum(p.numel() for p in runners[args.modes[0]].model.parameters())
    for runner in runners.values():  # warm-up: first-call allocations and kernel selection
        runner.step(batches[0])
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    for _ in range(args.repeats):
        for mode, runner in runners.items():
            times[mode].append(runner.epoch(batches))
    med = {m: statistics.median(t) for m, t in times.items()}
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("memory_child", "json")},
        "params": n_params,
        "tokens_per_epoch": tokens,
        "torch_threads": torch.get_num_threads(),
        "epoch_seconds": times,
        "median_seconds": med,
        "tokens_per_second": {m: tokens / s for m, s in med.items()},
    }
    if "sft" in med:
        result["time_ratio_vs_sft"] = {m: med[m] / med["sft"] for m in med}
    if "naive" in med and "probe" in med:
        result["naive_over_probe"] = med["naive"] / med["probe"]
    if not args.no_memory:
        mem = measure_memory(args, argv)
        result["memory"] = mem
        if "sft" in mem:
            base = mem["sft"]["step_total_mb"]
            result["memory_ratio_vs_sft_step"] = {m: mem[m]["step_total_mb"] / base for m in mem}

    print(
        f"model: {n_params / 1e6:.2f}M params (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}"
        f"{', LoRA SFT' if args.lora else ''}); {len(batches)} batches × {args.batch} × ≤{args.seq} tokens "
        f"= {tokens} tokens/epoch; {args.repeats} repeats; {torch.get_num_threads()} threads"
    )
    for m in args.modes:
        line = f"{m:>6}: median {med[m]:7.3f} s/epoch  ({tokens / med[m]:8.0f} tok/s)"
        if "sft" in med:
            line += f"  × SFT {med[m] / med['sft']:.2f}"
        if "memory" in result:
            mm = result["memory"][m]
            line += (
                f"  | step: +{mm['step_peak_extra_mb']:.1f} MB transient + {mm['state_mb']:.1f} MB state"
                f" = {mm['step_total_mb']:.1f} MB"
            )
            if "sft" in result["memory"]:
                line += f" (× SFT step {result['memory_ratio_vs_sft_step'][m]:.2f})"
        print(line)
    if "naive_over_probe" in result:
        print(f"naive loop / batched probe: {result['naive_over_probe']:.2f}×")
    if args.json:
        from prism_lit.io import atomic_write_json

        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
