"""GPU path benchmark: SFT tokens/s and MFU, probe throughput vs the naive loop, rollout tokens/s.

The model is a Qwen2.5-0.5B-shaped (or Llama-shaped) causal LM built from a config with random weights: nothing
is downloaded, and the throughput of a random model equals that of a trained one of the same shape.

    python benchmarks/bench_gpu.py                      # ~0.5B model on the first GPU (bf16 autocast)
    python benchmarks/bench_gpu.py --tiny               # a few-second CPU check (what CI runs)
    python benchmarks/bench_gpu.py --peak-tflops 989 --out runs/bench_gpu.json

MFU = 6 · N · tokens/s / peak, with N the parameters used in matrix multiplies (embedding lookup excluded,
LM head included) and attention-score FLOPs left out, as in the PaLM/Chinchilla convention; the peak is the
dense bf16 figure of the device (table below, or ``--peak-tflops``). On CPU there is no table entry: MFU is null
unless ``--peak-tflops`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name(); first match wins
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]


@dataclass
class ModelShape:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = True


SHAPES = {
    # Qwen2.5-0.5B: 494M parameters (tied embeddings)
    "0.5b": ModelShape("qwen2", 151936, 896, 4864, 24, 14, 2),
    # a Llama of similar size with a 32k vocabulary: 506M parameters (tied embeddings)
    "0.5b-llama": ModelShape("llama", 32000, 1280, 4480, 22, 20, 4),
    "tiny": ModelShape("llama", 512, 64, 128, 2, 4, 2),
}

# per-section defaults: (GPU, tiny)
DEFAULTS = {
    "sft_batch": (8, 2), "sft_seq": (1024, 64), "steps": (10, 2), "warmup": (3, 0),
    "probe_batch": (8, 2), "probe_seq": (512, 32), "probe_repeats": (3, 1),
    "rollout_batch": (32, 2), "prompt_len": (256, 16), "new_tokens": (128, 8),
}


def build_model(shape: ModelShape, attn: str, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if shape.arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, tie_word_embeddings=shape.tie_word_embeddings,
        max_position_embeddings=8192, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config._attn_implementation = attn
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    return model


def matmul_params(model) -> int:
    """Parameters in matrix multiplies per token: all but the input embedding, plus the LM head when tied."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total - embed + (embed if tied else 0)


def peak_tflops(device, override: float | None) -> tuple[float | None, str]:
    import torch

    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no table entry for CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"table: {key}"
    return None, f"no table entry for {name!r}; pass --peak-tflops"


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, Any]:
    """Mean seconds per call after ``warmup`` untimed calls, and the last call's result."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats, result


def random_batch(batch: int, seq: int, vocab: int, device, seed: int, ragged: bool = False) -> dict:
    """Token ids in [3, vocab); ``ragged`` right-pads rows to lengths between seq/2 and seq (labels -100 there)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if ragged:
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
        lengths[0] = seq
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def bench_sft(model, args, device, autocast_dtype) -> dict:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    batch = random_batch(args.sft_batch, args.sft_seq, model.config.vocab_size, device, seed=1)
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, _ = timed(device, step, args.steps, args.warmup)
    tokens = args.sft_batch * args.sft_seq
    out = {"batch": args.sft_batch, "seq_len": args.sft_seq, "steps": args.steps,
           "seconds_per_step": seconds, "tokens_per_s": tokens / seconds}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    model.zero_grad(set_to_none=True)  # the optimizer state goes with this frame
    return out


def bench_probe(model, args, device) -> dict:
    from prism_lit.probe import per_sample_unit_grad_norms_naive, unit_grad_norms

    batch = random_batch(args.probe_batch, args.probe_seq, model.config.vocab_size, device, seed=2, ragged=True)
    batched_s, (fast, names) = timed(device, lambda: unit_grad_norms(model, batch), args.probe_repeats, args.warmup)
    naive_s, (slow, _) = timed(device, lambda: per_sample_unit_grad_norms_naive(model, batch), 1, 0)
    rel = ((fast - slow).abs() / slow.abs().clamp_min(1e-12)).max().item()
    return {"batch": args.probe_batch, "seq_len": args.probe_seq, "units": len(names),
            "batched_samples_per_s": args.probe_batch / batched_s, "naive_samples_per_s": args.probe_batch / naive_s,
            "speedup": naive_s / batched_s, "max_relative_difference": rel}


def bench_rollout(model, args, device, dtype) -> dict:
    import torch

    model.eval()
    prompts = random_batch(args.rollout_batch, args.prompt_len, model.config.vocab_size, "cpu", seed=3)["input_ids"]
    rows = [row.tolist() for row in prompts]
    generator = torch.Generator(device=device).manual_seed(0)
    import importlib.util

    if importlib.util.find_spec("prism_lit.rl.generation") is not None:
        # the RL stage's sampler (KV cache, fp32 log-probs of every sampled token); an import error is a real error
        from prism_lit.rl.generation import generate

        backend = "prism_lit.rl.generation.generate"

        def run() -> None:
            generate(model, rows, pad_token_id=0, stop_token_ids=[], max_new_tokens=args.new_tokens,
                     temperature=1.0, generator=generator)
    else:
        backend = "transformers generate"
        ids = prompts.to(device)

        def run() -> None:
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=True, use_cache=True, pad_token_id=0)

    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        seconds, _ = timed(device, run, 1, args.warmup)
    return {"backend": backend, "batch": args.rollout_batch, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "seconds": seconds,
            "tokens_per_s": args.rollout_batch * args.new_tokens / seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SHAPES), default=None, help="model shape (default 0.5b; tiny with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny model and sizes: a seconds-long CPU check")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:1, cpu")
    parser.add_argument("--precision", choices=["bf16-mixed", "32"], default=None,
                        help="default bf16-mixed on GPU, 32 on CPU")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (r=16) instead of all weights")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (overrides the table)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 with --tiny, which is faster on a busy CPU)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sft", "probe", "rollout"])
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    for key, (gpu, _) in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {gpu} (tiny: smaller)")
    args = parser.parse_args(argv)
    for key, (gpu, tiny) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else gpu)
    args.size = args.size or ("tiny" if args.tiny else "0.5b")
    if args.threads is None and args.tiny:
        args.threads = 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32")
    autocast_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shape = SHAPES[args.size]
    model = build_model(shape, args.attn).to(device)
    n_total = sum(p.numel() for p in model.parameters())
    n_matmul = matmul_params(model)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "precision": precision, "attn": args.attn, "size": args.size,
        "shape": asdict(shape), "parameters": n_total, "matmul_parameters": n_matmul,
        "peak_tflops": peak, "peak_source": peak_source,
        "gradient_checkpointing": args.gradient_checkpointing, "lora": args.lora,
    }
    if "probe" not in args.skip:  # on the untouched base model, before any training step
        report["probe"] = bench_probe(model, args, device)
    if "sft" not in args.skip:
        sft_model = model
        if args.gradient_checkpointing:
            sft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if args.lora:
            from peft import LoraConfig, get_peft_model

            sft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM", target_modules=[
                "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        sft = bench_sft(sft_model, args, device, autocast_dtype)
        # a LoRA step still runs the base forward and the activation backward: ~4N rather than 6N FLOPs per token
        flops_per_token = (4 if args.lora else 6) * n_matmul
        sft["model_tflops"] = flops_per_token * sft["tokens_per_s"] / 1e12
        sft["mfu"] = sft["model_tflops"] / peak if peak else None
        report["sft"] = sft
        if args.lora:
            model = sft_model.unload()
        if args.gradient_checkpointing:
            model.gradient_checkpointing_disable()
    if "rollout" not in args.skip:
        report["rollout"] = bench_rollout(model, args, device, autocast_dtype)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from prism_lit.io import atomic_write_json

        atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
