"""The embedded default policy: a small Llama built from a config, with a tokenizer trained locally.

Nothing is downloaded. The tokenizer is byte-level BPE (digits split one by one, so numbers and short IDs
are copyable) trained with HF ``tokenizers`` on the project's own text, with a ChatML chat template whose
end-of-turn token ``<|im_end|>`` is also the EOS token (generation stops there; SFT trains on it).
Both are written with ``save_pretrained`` so ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained(dir)`` load them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from prism_lit.io import atomic_directory

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
MARKER_FILE = "prism_lit_embedded.json"


@dataclass
class EmbeddedModelSpec:
    """Shape of the embedded default model and its tokenizer.

    The defaults are the 1M-parameter Llama measured in DESIGN.md §5 (about 15k tokens/s training on 2 CPU cores).
    """

    vocab_size: int = 3000
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 2048
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int = 3000):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast`` with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    # A space after "[" (idempotent): the first word of an action argument ("click[white]") then encodes as the
    # same token as that word in the observation ("color: white"), so copying it is the identity map a small
    # model learns quickly. Decoded replies read "click[ white]"; AgentProtocol.parse_action strips the space.
    core.normalizer = normalizers.Replace(Regex(r"\[ ?"), "[ ")
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_model(tokenizer, spec: EmbeddedModelSpec):
    """A randomly initialised ``LlamaForCausalLM`` sized by ``spec`` for ``tokenizer`` (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def corpus_from_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Tokenizer training text from trajectory JSONL files: every message's content."""
    from prism_lit.data.schema import read_trajectories

    texts: list[str] = []
    for path in paths:
        for trajectory in read_trajectories(path):
            texts.extend(m.content for m in trajectory.messages)
    return texts


def build_embedded_default(
    out_dir: str | os.PathLike, texts: Iterable[str], spec: EmbeddedModelSpec | None = None
) -> Path:
    """Train the tokenizer on ``texts``, build the model and save both to ``out_dir`` (atomically, by rename)."""
    spec = spec or EmbeddedModelSpec()
    out_dir = Path(out_dir)
    texts = list(texts)
    if not texts:
        raise ValueError("build_embedded_default: the tokenizer corpus is empty; give it some text")
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    model = build_model(tokenizer, spec)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out_dir
