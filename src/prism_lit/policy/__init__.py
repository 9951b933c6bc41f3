"""The policy: a Hugging Face causal LM + tokenizer loaded by local path (optionally LoRA), or the embedded default."""

from prism_lit.policy.chat import stop_token_ids, template_name
from prism_lit.policy.embedded import EmbeddedModelSpec, build_embedded_default, build_model, train_tokenizer
from prism_lit.policy.loading import (
    LoraSpec,
    PolicySpec,
    build_model_skeleton,
    ensure_policy_files,
    export_policy,
    load_model,
    load_policy,
    load_tokenizer,
)

__all__ = [
    "EmbeddedModelSpec", "LoraSpec", "PolicySpec", "build_embedded_default", "build_model", "build_model_skeleton",
    "ensure_policy_files",
    "export_policy", "load_model", "load_policy", "load_tokenizer", "stop_token_ids", "template_name",
    "train_tokenizer",
]
