"""SFT's chunked cross-entropy (no [B, T, V] logits) equals the full-logits loss and its gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from prism_lit.policy import LoraSpec, PolicySpec
from prism_lit.sft import SFTModule
from prism_lit.sft.loss import causal_lm_loss

VOCAB = 211


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny(arch: str, tied: bool = False):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    if arch == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common)).float()
    return LlamaForCausalLM(LlamaConfig(**common)).float()


def batch(seed: int = 1, lengths=(13, 6, 10, 3, 9), weights: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    labels, mask = torch.full_like(ids, -100), torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        tokens = torch.randint(1, VOCAB, (n,), generator=g)
        lab = tokens.clone()
        lab[: n // 3] = -100
        ids[row, :n], labels[row, :n], mask[row, :n] = tokens, lab, 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if weights:
        w = torch.where(labels != -100, 1.0, 0.25) * mask
        w[0, 5:9] = 0.5
        out["loss_weights"] = w
    return out


def reference_loss(model, b: dict) -> torch.Tensor:
    """The previous SFTModule loss: HF's labels= loss, or Σ w·CE / Σ w over full fp32 logits."""
    if "loss_weights" not in b:
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
    targets, w = b["labels"][:, 1:], b["loss_weights"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    w = w * (targets != -100)
    return (ce * w).sum() / w.sum()


def loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("arch, tied", [("qwen3", False), ("llama", True)])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("adapter", [False, True])
def test_chunked_loss_and_gradients_equal_full_logits(arch, tied, weights, chunk, adapter):
    model = tiny(arch, tied)
    if adapter:
        from peft import get_peft_model

        model = get_peft_model(model, LoraSpec(r=4, alpha=8).to_peft())
        for n, p in model.named_parameters():  # a fresh adapter has B = 0: move it so A's gradient is not zero
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    b = batch(weights=weights)
    ref, ref_grads = loss_and_grads(model, lambda: reference_loss(model, b))
    got, grads = loss_and_grads(model, lambda: causal_lm_loss(
        model, b["input_ids"], b["attention_mask"], b["labels"], b.get("loss_weights"), chunk))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    assert set(grads) == set(ref_grads) and grads
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_sft_module_loss_equals_the_full_logits_loss_with_context_weight_and_lora(tiny_policy_dir):
    for lora in (None, LoraSpec(r=4, alpha=8)):
        torch.manual_seed(0)
        module = SFTModule(PolicySpec(path=str(tiny_policy_dir), lora=lora), logits_chunk_tokens=5)
        module.configure_model()
        reference = SFTModule(PolicySpec(path=str(tiny_policy_dir), lora=lora), logits_chunk_tokens=None)
        reference.model = module.model
        b = batch(weights=True)
        b["input_ids"] = b["input_ids"] % 400
        for case in (b, {k: v for k, v in b.items() if k != "loss_weights"}):
            torch.testing.assert_close(module.loss(case), reference.loss(case), rtol=1e-5, atol=1e-7)


def test_chunk_size_is_checked_and_a_batch_without_targets_gives_zero_loss_with_a_graph():
    with pytest.raises(ValueError, match="logits_chunk_tokens must be >= 1"):
        SFTModule(PolicySpec(path="."), logits_chunk_tokens=0)
    model = tiny("qwen3")
    b = batch()
    loss = causal_lm_loss(model, b["input_ids"], b["attention_mask"], torch.full_like(b["labels"], -100))
    assert float(loss) == 0.0 and loss.requires_grad
    loss.backward()


def test_bf16_autocast_chunked_loss_stays_close_to_full():
    model, b = tiny("qwen3"), batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference_loss(model, b)
        got = causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["labels"], chunk_tokens=4)
    torch.testing.assert_close(got, ref.float(), rtol=1e-2, atol=0)
