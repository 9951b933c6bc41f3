"""Batched per-sample unit gradient norms equal the naive one-sample-at-a-time autograd loop."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prism_lit.probe import (
    find_units,
    measure_unit_grad_norms,
    per_sample_unit_grad_norms_naive,
    unit_grad_norms,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


VOCAB = 101
LENGTHS = [13, 6, 10, 3, 9]


def tiny_llama(attn: str = "eager", seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).float()


def padded_batch(side: str, seed: int = 1, lengths=LENGTHS) -> dict:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), 0, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        tokens = torch.randint(1, VOCAB, (n,), generator=g)
        lab = tokens.clone()
        lab[: n // 3] = -100  # a "prompt" that is not trained on
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols], labels[row, cols], mask[row, cols] = tokens, lab, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lora(model):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "up_proj"])
    return get_peft_model(model, cfg)


def assert_matches_oracle(model, batch, **kwargs):
    result = measure_unit_grad_norms(model, batch, **kwargs)
    naive, names = per_sample_unit_grad_norms_naive(model, batch)
    assert result.unit_names == names
    assert result.norms.shape == naive.shape == (batch["input_ids"].shape[0], 14)
    assert (naive > 0).all()
    torch.testing.assert_close(result.norms, naive, rtol=1e-5, atol=0)
    return result


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method", ["direct", "ghost"])
def test_batched_equals_naive_loop(attn, side, method):
    assert_matches_oracle(tiny_llama(attn), padded_batch(side), method=method)


def test_auto_method_equals_naive_and_losses_equal_hf_loss():
    model, batch = tiny_llama(), padded_batch("left")
    result = assert_matches_oracle(model, batch)
    for i, n in enumerate(LENGTHS):
        keep = batch["attention_mask"][i].bool()
        with torch.no_grad():
            hf = model(
                input_ids=batch["input_ids"][i][keep][None], labels=batch["labels"][i][keep][None]
            ).loss
        assert result.loss[i].item() == pytest.approx(hf.item(), rel=1e-5)
        assert result.n_tokens[i].item() == n - 1 - max(
            0, n // 3 - 1
        )  # targets: tokens 1.. n-1 not in the prompt


@pytest.mark.parametrize("side", ["right", "left"])
def test_peft_lora_model_measures_frozen_base_weights(side):
    model = lora(tiny_llama("sdpa"))
    base_q = find_units(model)[0][1]
    assert not base_q.weight.requires_grad  # frozen by peft, still a unit
    result = assert_matches_oracle(model, padded_batch(side))
    plain = measure_unit_grad_norms(tiny_llama("sdpa"), padded_batch(side))
    # lora_B starts at 0: the adapted model computes the same function, so the same norms and unit names.
    assert result.unit_names == plain.unit_names
    torch.testing.assert_close(result.norms, plain.norms, rtol=1e-5, atol=0)


def test_weights_grads_and_modes_untouched():
    model = lora(tiny_llama())
    model.train()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    unit_grad_norms(model, padded_batch("right"))
    per_sample_unit_grad_norms_naive(model, padded_batch("right"))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.requires_grad == flags[n], n
        assert (p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n]), n
    assert all(m.training for m in model.modules())


def test_sample_without_trained_tokens_has_zero_norms_and_nan_loss():
    batch = padded_batch("right")
    batch["labels"][1] = -100
    result = measure_unit_grad_norms(tiny_llama(), batch)
    assert result.n_tokens[1].item() == 0 and torch.isnan(result.loss[1])
    assert (result.norms[1] == 0).all() and (result.norms[[0, 2, 3, 4]] > 0).all()


def test_unit_patterns_select_layers():
    model = tiny_llama()
    names = [n for n, _ in find_units(model, [r"layers\.1\..*_proj"])]
    assert names == [n for n, _ in find_units(model) if ".layers.1." in n] and len(names) == 7
    norms, names2 = unit_grad_norms(model, padded_batch("right"), units=["down_proj"])
    assert names2 == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"] and norms.shape == (
        5,
        2,
    )
    with pytest.raises(ValueError, match="no linear layer"):
        find_units(model, ["nonexistent_proj"])


def test_bad_batches_are_named():
    batch = padded_batch("right")
    with pytest.raises(KeyError, match="labels"):
        unit_grad_norms(tiny_llama(), {k: v for k, v in batch.items() if k != "labels"})
    batch["labels"][1, -1] = 5  # a padded position that is trained on
    with pytest.raises(ValueError, match="attention_mask is 0"):
        unit_grad_norms(tiny_llama(), batch)


def test_non_finite_model_is_an_error_not_a_score():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient norms for samples"):
        unit_grad_norms(model, padded_batch("right"))


def test_chunked_reduction_and_gradient_checkpointing_give_the_same_norms():
    model, batch = tiny_llama(), padded_batch("right")
    reference = measure_unit_grad_norms(model, batch).norms
    for method in ("direct", "ghost"):  # one sample per chunk: the scratch bound is honoured, results equal
        chunked = measure_unit_grad_norms(model, batch, method=method, max_scratch_elements=1).norms
        torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    torch.testing.assert_close(measure_unit_grad_norms(model, batch).norms, reference, rtol=1e-6, atol=0)
    assert model.training


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
@pytest.mark.parametrize("adapter", [False, True])
def test_logits_in_chunks_give_the_full_logits_result(side, chunk, adapter):
    """The memory-bounded loss (a chunk of positions projected onto the vocabulary at a time) changes nothing."""
    model = lora(tiny_llama()) if adapter else tiny_llama()
    batch = padded_batch(side)
    full = measure_unit_grad_norms(model, batch, logits_chunk_tokens=None)
    chunked = measure_unit_grad_norms(model, batch, logits_chunk_tokens=chunk)
    torch.testing.assert_close(chunked.norms, full.norms, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(chunked.loss, full.loss, rtol=1e-5, atol=1e-7)
    assert torch.equal(chunked.n_tokens, full.n_tokens)
    with pytest.raises(ValueError, match="logits_chunk_tokens must be >= 1"):
        measure_unit_grad_norms(model, batch, logits_chunk_tokens=0)


@pytest.mark.parametrize("chunk", [None, 5])
def test_rows_of_one_trajectory_are_measured_as_one_sample(chunk):
    """A trajectory tokenised as several sequences (Qwen3's template) is one sample: its loss is the mean over the
    trained tokens of all its rows and its gradient the sum over them (not one part's)."""
    model = tiny_llama()
    batch = {**padded_batch("right", lengths=[13, 6, 10, 9]), "id": ["a", "b", "a", "c"]}
    result = measure_unit_grad_norms(model, batch, logits_chunk_tokens=chunk)
    assert result.rows == [0, 1, 3] and result.norms.shape == (3, 14)

    units = [m.weight for _, m in find_units(model)]
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    def oracle(rows):
        total, n = 0.0, 0
        for r in rows:
            keep = mask[r].bool()
            logits = model(input_ids=ids[r][keep][None]).logits[0, :-1]
            target = labels[r][keep][1:]
            valid = target != -100
            total = total + torch.nn.functional.cross_entropy(logits[valid], target[valid], reduction="sum")
            n += int(valid.sum())
        grads = torch.autograd.grad(total / n, units)
        return torch.stack([g.double().norm() for g in grads]), float(total / n), n

    for sample, rows in enumerate([[0, 2], [1], [3]]):
        norms, loss, n = oracle(rows)
        torch.testing.assert_close(result.norms[sample], norms, rtol=1e-4, atol=1e-7)
        assert result.loss[sample].item() == pytest.approx(loss, rel=1e-5) and int(result.n_tokens[sample]) == n
