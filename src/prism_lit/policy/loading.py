"""Load the policy: any local Hugging Face causal LM + tokenizer by path, with optional LoRA (peft).

Nothing here downloads: every ``from_pretrained`` call is ``local_files_only=True`` and a missing path is an
error that says so. ``trust_remote_code`` stays off unless the config asks for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_lit.io import atomic_directory
from prism_lit.policy.chat import set_chat_template_kwargs
from prism_lit.policy.embedded import EmbeddedModelSpec, build_embedded_default, corpus_from_files

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


@dataclass
class LoraSpec:
    """peft ``LoraConfig`` fields exposed to YAML."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    bias: str = "none"
    modules_to_save: list[str] | None = None

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.target_modules),
            bias=self.bias, modules_to_save=self.modules_to_save, task_type="CAUSAL_LM",
        )


@dataclass
class PolicySpec:
    """Which model the stage trains.

    Args:
        path: local directory with a HF causal LM and its tokenizer (``save_pretrained`` layout).
        tokenizer_path: tokenizer directory when it differs from ``path``.
        adapter_path: a trained peft adapter to start from (e.g. the SFT stage's export); trained further.
        lora: train a new LoRA adapter with these settings; ``None`` = full fine-tuning (unless ``adapter_path``).
        dtype: parameter dtype (float32, bfloat16, float16). Mixed precision is the Trainer's ``precision``.
        trust_remote_code: allow model code shipped in ``path`` to run (off by default).
        attn_implementation: "sdpa" (default), "eager", or "flash_attention_2" where installed.
        gradient_checkpointing: trade compute for activation memory.
        embedded: when ``path`` does not exist, build the embedded default model there (tokenizer trained on
            ``embedded_corpus`` trajectory files). ``None``: a missing path is an error.
        embedded_corpus: trajectory JSONL files whose text trains the embedded tokenizer.
        chat_template: replace the tokenizer's chat template: a path to a ``.jinja`` file, or the template text.
            ``None``: the tokenizer's own (the model's shipped template).
        chat_template_kwargs: settings of the chat template, e.g. ``{enable_thinking: false}`` for Qwen3. Written into
            the loaded tokenizer's template, so SFT, the probe, rollouts, evaluation and the exported policy all render
            conversations with them (docs/policy.md). A setting the template never reads is an error.
    """

    path: str
    tokenizer_path: str | None = None
    adapter_path: str | None = None
    lora: LoraSpec | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    embedded: EmbeddedModelSpec | None = None
    embedded_corpus: list[str] = field(default_factory=list)
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"PolicySpec.dtype: unknown dtype {self.dtype!r}; choose one of {sorted(DTYPES)}")
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**self.lora)
        if isinstance(self.embedded, dict):
            self.embedded = EmbeddedModelSpec(**self.embedded)


def ensure_policy_files(spec: PolicySpec) -> None:
    """Build the embedded default at ``spec.path`` if it is missing and ``spec.embedded`` says how."""
    if Path(spec.path).exists():
        return
    if spec.embedded is None:
        raise FileNotFoundError(
            f"policy.path: {spec.path!r} does not exist. Point it at a local Hugging Face model directory "
            "(nothing is downloaded), or set policy.embedded to build the embedded default there."
        )
    build_embedded_default(spec.path, corpus_from_files(spec.embedded_corpus), spec.embedded)


def _check_dir(path: str, what: str) -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"policy.{what}: {path!r} is not a directory (nothing is downloaded at run time)")


_WEIGHTS = {"model": ("model.safetensors", "pytorch_model.bin"),
            "adapter": ("adapter_model.safetensors", "adapter_model.bin")}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def check_model_files(path: str, what: str, kind: str = "model") -> None:
    """Fail naming ``path`` when its config, weights (complete files, every shard) are not there: a half-copied
    or cut-off model directory otherwise gives a library error that names no path, or a misleading one."""
    import json

    from prism_lit.errors import ModelError
    from prism_lit.io import safetensors_problem, zip_problem

    folder = Path(path)
    config = folder / ("adapter_config.json" if kind == "adapter" else "config.json")
    fix = "Copy the whole directory again (save_pretrained's output), or point policy." + what + " elsewhere."
    if not config.is_file():
        raise ModelError(f"policy.{what}: {path!r} has no {config.name}; it is not a saved Hugging Face "
                         f"{kind} directory.", hint=fix)
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"policy.{what}: {config} is not valid JSON ({err}).", hint=fix) from None
    single, legacy = _WEIGHTS[kind]
    files = [folder / name for name in (single, legacy) if (folder / name).is_file()]
    for index in (folder / f"{single}.index.json", folder / f"{legacy}.index.json"):
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise ModelError(f"policy.{what}: {index} is not a valid shard index ({err}).", hint=fix) from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ModelError(f"policy.{what}: {path!r} lacks the weight shards {missing[:5]} that {index.name} "
                                 "lists.", hint=fix)
            files += [folder / s for s in shards]
    if not files:
        raise ModelError(f"policy.{what}: {path!r} has {config.name} but no weights ({single} or {legacy}).",
                         hint=fix)
    for file in files:
        problem = safetensors_problem(file) if file.suffix == ".safetensors" else zip_problem(file)
        if problem is not None:
            raise ModelError(f"policy.{what}: weights file {file} is damaged: {problem}.", hint=fix)


def check_policy_files(spec: PolicySpec) -> None:
    """Every file ``spec`` loads is there and whole (no loading; cheap): model, adapter, tokenizer."""
    _check_dir(spec.path, "path")
    check_model_files(spec.path, "path")
    if spec.adapter_path is not None:
        _check_dir(spec.adapter_path, "adapter_path")
        check_model_files(spec.adapter_path, "adapter_path", kind="adapter")
    tokenizer_path = spec.tokenizer_path or spec.path
    what = "tokenizer_path" if spec.tokenizer_path else "path"
    _check_dir(tokenizer_path, what)
    check_tokenizer_files(tokenizer_path, what)


def check_tokenizer_files(path: str, what: str) -> None:
    from prism_lit.errors import ModelError

    if not any((Path(path) / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(
            f"policy.{what}: {path!r} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}).",
            hint="Save the tokenizer there too (tokenizer.save_pretrained), or set policy.tokenizer_path.")


def load_tokenizer(spec: PolicySpec):
    from transformers import AutoTokenizer

    path = spec.tokenizer_path or spec.path
    _check_dir(path, "tokenizer_path" if spec.tokenizer_path else "path")
    check_tokenizer_files(path, "tokenizer_path" if spec.tokenizer_path else "path")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=spec.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.chat_template is not None:
        tokenizer.chat_template = _read_template(spec.chat_template)
    if tokenizer.chat_template is None:
        raise ValueError(
            f"policy: the tokenizer in {path!r} has no chat template; prism_lit renders agent turns with it. "
            "Set tokenizer.chat_template and save it, set policy.chat_template, or use an instruct model's tokenizer."
        )
    if spec.chat_template_kwargs:
        # replaces settings an exported policy carries (it keeps those it was trained with when none are given)
        set_chat_template_kwargs(tokenizer, spec.chat_template_kwargs)
    return tokenizer


def _read_template(value: str) -> str:
    """``policy.chat_template``: a file's text when ``value`` names an existing file, else ``value`` itself."""
    if "{" not in value and "\n" not in value:
        if not Path(value).is_file():
            raise FileNotFoundError(f"policy.chat_template: {value!r} is neither a template file nor template text")
        return Path(value).read_text(encoding="utf-8")
    return value


def load_model(spec: PolicySpec):
    """The HF model (peft-wrapped when ``lora`` or ``adapter_path`` is set)."""
    import torch
    from transformers import AutoModelForCausalLM

    ensure_policy_files(spec)
    _check_dir(spec.path, "path")
    check_model_files(spec.path, "path")
    model = AutoModelForCausalLM.from_pretrained(
        spec.path,
        local_files_only=True,
        trust_remote_code=spec.trust_remote_code,
        dtype=getattr(torch, DTYPES[spec.dtype]),
        attn_implementation=spec.attn_implementation,
    )
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.adapter_path is not None:
        from peft import PeftModel

        _check_dir(spec.adapter_path, "adapter_path")
        check_model_files(spec.adapter_path, "adapter_path", kind="adapter")
        model = PeftModel.from_pretrained(model, spec.adapter_path, is_trainable=True, local_files_only=True)
    elif spec.lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, spec.lora.to_peft())
    if spec.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return model


def build_model_skeleton(spec: PolicySpec):
    """``spec``'s model as :func:`~prism_lit.policy.load_model` builds it (architecture, dtype, attention, activation
    checkpointing, LoRA or the saved adapter's config), without reading any weight: the ranks that receive their
    shards from rank 0 (:func:`~prism_lit.distributed.load_sharded_fsdp2`) build it under ``torch.device("meta")``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(spec.path, local_files_only=True, trust_remote_code=spec.trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPES[spec.dtype]),
                                             attn_implementation=spec.attn_implementation,
                                             trust_remote_code=spec.trust_remote_code)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    peft_config = spec.lora.to_peft() if spec.lora is not None else None
    if spec.adapter_path is not None:
        from peft import PeftConfig

        peft_config = PeftConfig.from_pretrained(spec.adapter_path, local_files_only=True)
        peft_config.inference_mode = False  # trained further, as load_model's is_trainable=True
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    if spec.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return model


def load_policy(spec: PolicySpec) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``spec``."""
    ensure_policy_files(spec)
    return load_model(spec), load_tokenizer(spec)


def export_policy(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Save the adapter (peft) or the full model, plus the tokenizer, in HF format; atomic by rename."""
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
