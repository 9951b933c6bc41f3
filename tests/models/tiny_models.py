"""Tiny models of the real architectures with locally trained tokenizers carrying the real chat templates.

Each model is built from its config (``Qwen3ForCausalLM``, ``Qwen2ForCausalLM``, ``LlamaForCausalLM``,
``MistralForCausalLM``), with a BPE tokenizer trained here (HF ``tokenizers``, nothing downloaded) that has the
model family's special tokens, EOS and pad choices, and the original chat template text from ``templates/`` (see
``templates/README.md`` for where each comes from). ``generation_config.json`` lists the EOS ids the real model
lists (Llama-3.1: ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
LLAMA_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]
MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                   "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]


@dataclass(frozen=True)
class TinyKind:
    """One model family: architecture, template file and the tokenizer's special-token choices."""

    arch: str
    template: str
    special: list[str]
    eos: str
    end_of_turn: str  # what the template writes after a reply
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    added: list[str] = field(default_factory=list)  # added, not special (Qwen3's <think> and </think>)
    generation_eos: list[str] = field(default_factory=list)
    metaspace: bool = False  # sentencepiece-style pieces (Mistral), else byte-level BPE


KINDS: dict[str, TinyKind] = {
    "qwen3": TinyKind("qwen3", "qwen3.jinja", QWEN_SPECIAL, "<|im_end|>", "<|im_end|>", pad="<|endoftext|>",
                      added=QWEN_ADDED, generation_eos=["<|im_end|>", "<|endoftext|>"]),
    "qwen3-instruct-2507": TinyKind("qwen3", "qwen3_instruct_2507.jinja", QWEN_SPECIAL, "<|im_end|>", "<|im_end|>",
                                    pad="<|endoftext|>", added=QWEN_ADDED,
                                    generation_eos=["<|im_end|>", "<|endoftext|>"]),
    "qwen2.5": TinyKind("qwen2", "qwen2_5.jinja", QWEN_SPECIAL, "<|im_end|>", "<|im_end|>", pad="<|endoftext|>",
                        added=QWEN_ADDED[2:], generation_eos=["<|im_end|>", "<|endoftext|>"]),
    "llama-3.1": TinyKind("llama", "llama3_1.jinja", LLAMA_SPECIAL, "<|eot_id|>", "<|eot_id|>",
                          bos="<|begin_of_text|>", generation_eos=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]),
    "llama-3.2": TinyKind("llama", "llama3_2.jinja", LLAMA_SPECIAL, "<|eot_id|>", "<|eot_id|>",
                          bos="<|begin_of_text|>", generation_eos=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]),
    "mistral": TinyKind("mistral", "mistral_v0_3.jinja", MISTRAL_SPECIAL, "</s>", "</s>", bos="<s>", unk="<unk>",
                        generation_eos=["</s>"], metaspace=True),
}

ALL_KINDS = sorted(KINDS)

CORPUS = [
    "You are a shopping agent in the WebShop website. Follow the instruction to buy the right product.",
    "WebShop [SEP] Instruction: [SEP] i want a black sofa under 15 dollars [SEP] Search",
    "Results [SEP] 1. black sofa [SEP] 2. plain sofa [SEP] Next > [SEP] < Prev",
    "Action: search[black sofa]", "Action: click[1]", "Action: click[buy now]", "Thought: I should search.",
    "<think>\nI should search first.\n</think>\n\nAction: search[red soap]",
    "system user assistant tool ipython Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024",
    "Guess the word. Clue: fruit that monkeys peel. Admissible actions: banana apple grape lemon cat dog horse mouse",
    "You are an agent acting in a text environment. Each turn, answer with one action.",
    string.ascii_letters + string.digits + string.punctuation + " \n\t",
]


def _train_tokenizer(kind: TinyKind, vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind.metaspace:
        core = Tokenizer(models.BPE(unk_token=kind.unk))
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        core.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = sorted(set(string.printable) - set(" \t\n\r\x0b\x0c")) + ["\u2581", "\n"]
    else:
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(kind.special),
                                  initial_alphabet=alphabet, show_progress=False)
    core.train_from_iterator(CORPUS * 3, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=kind.bos, eos_token=kind.eos, pad_token=kind.pad, unk_token=kind.unk,
    )
    if kind.added:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in kind.added])
    tokenizer.chat_template = (TEMPLATES / kind.template).read_text(encoding="utf-8")
    return tokenizer


def _model(kind: TinyKind, tokenizer):
    import torch
    import transformers

    ids = {
        "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": 2048, "tie_word_embeddings": True}
    config_cls, model_cls = {
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind.arch]
    extra = {"head_dim": 16} if kind.arch == "qwen3" else {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_cls(config_cls(**ids, **shape, **extra))
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in kind.generation_eos]
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny(name: str, out_dir: str | Path, vocab_size: int = 700) -> Path:
    """Build the tiny ``name`` model (a key of :data:`KINDS`) and its tokenizer in ``out_dir``."""
    kind = KINDS[name]
    tokenizer = _train_tokenizer(kind, vocab_size)
    model = _model(kind, tokenizer)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tiny_kind.json").write_text(json.dumps({"name": name, "arch": kind.arch}) + "\n")
    return out
