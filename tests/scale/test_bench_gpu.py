"""benchmarks/bench_gpu.py runs end to end at --tiny size on CPU and its figures are internally consistent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def expected_llama_params(shape) -> int:
    """Hand count of a tied-embedding Llama/Qwen2 (Qwen2 adds q/k/v biases)."""
    h, i, v, heads, kv = (shape.hidden_size, shape.intermediate_size, shape.vocab_size,
                          shape.num_attention_heads, shape.num_key_value_heads)
    kv_dim = h // heads * kv
    attn = 2 * h * h + 2 * h * kv_dim + (h + 2 * kv_dim if shape.arch == "qwen2" else 0)
    layer = attn + 3 * h * i + 2 * h
    return v * h + shape.num_hidden_layers * layer + h


def test_tiny_run_reports_every_section_consistently(bench, tmp_path):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        report = bench.main(["--tiny", "--device", "cpu", "--peak-tflops", "0.5", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # --tiny pins one thread; the rest of the session keeps its own
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["parameters"] == expected_llama_params(bench.SHAPES["tiny"])
    sft, probe, rollout = report["sft"], report["probe"], report["rollout"]
    tokens = sft["batch"] * sft["seq_len"]
    assert sft["tokens_per_s"] == pytest.approx(tokens / sft["seconds_per_step"])
    assert sft["model_tflops"] == pytest.approx(6 * report["matmul_parameters"] * sft["tokens_per_s"] / 1e12)
    assert sft["mfu"] == pytest.approx(sft["model_tflops"] / 0.5)
    assert probe["max_relative_difference"] < 1e-4  # the batched probe agrees with the naive per-sample loop
    assert probe["units"] == 7 * bench.SHAPES["tiny"].num_hidden_layers
    assert probe["speedup"] == pytest.approx(probe["batched_samples_per_s"] / probe["naive_samples_per_s"])
    assert rollout["backend"] == "prism_lit.rl.generation.generate"  # the RL stage's own sampler
    assert rollout["tokens_per_s"] == pytest.approx(rollout["batch"] * rollout["new_tokens"] / rollout["seconds"])


@pytest.mark.parametrize("size, billions", [("0.5b", 0.494), ("0.5b-llama", 0.506)])
def test_half_billion_shapes_have_the_advertised_size(bench, size, billions):
    with torch.device("meta"):  # no memory: shapes only
        model = bench.build_model(bench.SHAPES[size], "sdpa")
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_llama_params(bench.SHAPES[size])
    assert count / 1e9 == pytest.approx(billions, abs=0.001)


def test_peak_table_prefers_the_specific_h100_variant(bench):
    names = [key for key, _ in bench.PEAK_BF16_TFLOPS]
    assert names.index("H100 PCIe") < names.index("H100") and names.index("GH200") < names.index("H200")
    assert bench.peak_tflops(torch.device("cpu"), None)[0] is None
    assert bench.peak_tflops(torch.device("cpu"), 123.0) == (123.0, "--peak-tflops")
