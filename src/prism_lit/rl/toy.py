"""A word-level policy for tiny test environments (guess-word): tests and smoke runs of the RL stage.

The embedded default's byte-level BPE keeps all 256 byte tokens in the output vocabulary, so a random policy
hits a given word with probability under 1/300. For RL tests that must start near chance and learn in CPU
minutes, this builds a tokenizer whose vocabulary is exactly the words of the env's text (plus the ChatML
special tokens), and a tiny Llama on top, saved in HF format so :func:`prism_lit.policy.load_policy` loads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prism_lit.policy.embedded import CHATML_TEMPLATE, SPECIAL_TOKENS, EmbeddedModelSpec, build_model


def train_word_level_tokenizer(texts: Iterable[str]):
    """A whitespace-split word-level ``PreTrainedTokenizerFast`` over the words of ``texts`` (ChatML template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.split()} - set(SPECIAL_TOKENS))
    if not words:
        raise ValueError("train_word_level_tokenizer: the corpus has no words")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ["<unk>"] + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<unk>",
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_word_level_policy(
    out_dir: str | os.PathLike, texts: Iterable[str], spec: EmbeddedModelSpec | None = None
) -> Path:
    """Tokenizer from ``texts`` + a randomly initialised tiny Llama (seeded by ``spec.seed``), saved to ``out_dir``."""
    spec = spec or EmbeddedModelSpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512)
    tokenizer = train_word_level_tokenizer(texts)
    model = build_model(tokenizer, spec)
    out_dir = Path(out_dir)
    from prism_lit.policy import export_policy

    return export_policy(model, tokenizer, out_dir)


def guess_word_corpus(protocol=None, **env_kwargs) -> list[str]:
    """Every text a guess-word episode can show: system prompt, role names, observations, candidates, feedback."""
    from prism_lit.envs.guess_word import GuessWordEnv
    from prism_lit.envs.protocol import AgentProtocol

    protocol = protocol or AgentProtocol(env="guess_word", reply_format="bare")
    env = GuessWordEnv(**env_kwargs)
    texts = [protocol.system, "system user assistant"]
    for task_id in env.task_ids:
        obs, info = env.reset(seed=0, options={"task_id": task_id})
        texts.append(protocol.render_observation(obs, info["admissible_actions"]))
        for word, _, _ in env.words:
            texts.append(word)
            probe = GuessWordEnv(**env_kwargs)
            probe.reset(seed=0, options={"task_id": task_id})
            texts.append(probe.step(word)[0])
        texts.append(env.step("?")[0])
    return texts


def main(argv: list[str] | None = None) -> None:
    """``python -m prism_lit.rl.toy OUT_DIR``: build the guess-word word-level policy used by the smoke config."""
    import argparse

    from prism_lit.envs.protocol import AgentProtocol

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = []
    for show in (False, True):
        texts += guess_word_corpus(AgentProtocol(env="guess_word", reply_format="bare",
                                                 system_prompt="Guess the word .", show_admissible=show))
    spec = EmbeddedModelSpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                             intermediate_size=128, max_position_embeddings=512, seed=args.seed)
    print(build_word_level_policy(args.out_dir, texts, spec))


if __name__ == "__main__":
    main()
