import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PRISM_LIT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "prism_lit"))

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_TRAJECTORIES = FIXTURES / "tiny_trajectories.jsonl"


@pytest.fixture
def one_torch_thread():
    """Tiny ops on a shared 2-core box: a second OpenMP thread waiting for a busy core costs 100× here
    (``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` in a module that wants it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A tiny embedded-default model + ChatML tokenizer trained on the fixture trajectories, saved in HF format."""
    from prism_lit.policy import EmbeddedModelSpec, build_embedded_default
    from prism_lit.policy.embedded import corpus_from_files

    spec = EmbeddedModelSpec(vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=128)
    out = tmp_path_factory.mktemp("policy") / "tiny"
    return build_embedded_default(out, corpus_from_files([TINY_TRAJECTORIES]), spec)
