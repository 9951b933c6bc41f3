"""Fixtures of the RL tests: the guess-word protocol and a word-level tiny policy for it."""

import pytest
from rl_helpers import guess_word_protocol

from prism_lit.envs.protocol import AgentProtocol


@pytest.fixture(scope="session")
def gw_protocol() -> AgentProtocol:
    return guess_word_protocol()


@pytest.fixture(scope="session")
def gw_policy_dir(tmp_path_factory, gw_protocol):
    """A randomly initialised 2-layer Llama with a word-level tokenizer over the guess-word text."""
    from prism_lit.policy import EmbeddedModelSpec
    from prism_lit.rl.toy import build_word_level_policy, guess_word_corpus

    spec = EmbeddedModelSpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                             intermediate_size=128, max_position_embeddings=512, seed=0)
    corpus = guess_word_corpus(gw_protocol) + guess_word_corpus(guess_word_protocol(show_admissible=True))
    return build_word_level_policy(tmp_path_factory.mktemp("gw") / "policy", corpus, spec)


@pytest.fixture(autouse=True)
def _tiny_models_one_thread(one_torch_thread):
    """Tiny models: one intra-op thread is fastest (tests/conftest.py's one_torch_thread)."""
