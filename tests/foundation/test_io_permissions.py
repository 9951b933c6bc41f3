"""Atomic writes give files and folders the permissions a plain write would under the umask: a run dir on a shared
filesystem is readable by the group when the owner's umask says so (tempfile alone makes them 0600 / 0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prism_lit.io import atomic_directory, atomic_write_json, atomic_write_text, save_figure, umask  # noqa: E402


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_and_folders_follow_the_umask(tmp_path, mask):
    assert umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what the umask gives a file written without care for atomicity
    atomic_write_text(tmp_path / "a.txt", "text")
    atomic_write_json(tmp_path / "a.json", {"k": 1})
    fig = plt.figure()
    save_figure(fig, tmp_path / "a.png")
    for name in ("a.txt", "a.json", "a.png"):
        assert mode(tmp_path / name) == mode(plain) == 0o666 & ~mask, name

    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        weights = tmp / "sub" / "model.safetensors"
        weights.write_bytes(b"w")
        weights.chmod(0o600)  # what save_pretrained does with its weights
    export = tmp_path / "export"
    assert mode(export) == mode(export / "sub") == 0o777 & ~mask
    assert mode(export / "sub" / "model.safetensors") == 0o666 & ~mask


def test_a_saved_hugging_face_model_is_readable_as_the_umask_says(tmp_path, mask):
    import transformers

    config = transformers.LlamaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, intermediate_size=8)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with atomic_directory(tmp_path / "model") as tmp:
        model.save_pretrained(tmp)
    files = list((tmp_path / "model").iterdir())
    assert any(f.name == "model.safetensors" for f in files)
    assert {f.name: mode(f) for f in files} == {f.name: 0o666 & ~mask for f in files}
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model") is not None
