"""A memory model: peak memory per GPU of each stage, from a Hugging Face model config and the run's settings.

``prism-lit memory --config <pipeline or fit config>`` prints the table and exits with status 1, naming the
setting to change, when a stage does not fit ``--gpu_memory_gb``. docs/scaling.md has the tables for Qwen3-8B and
Llama-3.1-8B, and says which figures are measured and which are estimates.

What is counted, per GPU (bytes; ``b`` = bytes of the compute dtype, ``n`` = the FSDP world size, 1 without FSDP):

- **weights**: parameters × their dtype / n; under FSDP also the gathered units (two decoder layers in flight and
  the root: embeddings, LM head) in the compute dtype. LoRA adapters are fp32 (peft's default).
- **gradients**: trainable parameters × their dtype / n, allocated during the backward while activations are
  freed, so the peak is the larger of the backward's start and end (:func:`step_peak_bytes`) and the table shows
  what is alive at that moment (RL's micro-batches accumulate, so there they are always alive); DDP adds its
  bucket copy (``gradient_as_bucket_view`` off), alive throughout.
- **optimizer**: AdamW's two moments in the trainable parameters' dtype / n.
- **activations**: tokens per batch × bytes per token. A decoder layer saves, per token, for its backward
  (:func:`layer_activation_bytes`, derived op by op from Hugging Face's Llama/Qwen3 code and *measured exact* on
  CPU): the residual input and the normalised input of both RMSNorms (fp32 upcasts included), q, k, v after RoPE
  (plus q, k before and after their norms in Qwen3), the attention output and log-sum-exp, and the MLP's gate,
  up, activation and product. With activation checkpointing a layer keeps only its input (H × b) and one layer is
  recomputed at a time. The backward adds the gradients flowing through one layer (:data:`BACKWARD_WORKING`).
- **logits**: the chunked loss projects ``logits_chunk_tokens`` positions at a time: chunk × V × (b + 8 bytes:
  the fp32 copy and its softmax/gradient).
- **KV cache** (generation): 2 × layers × kv_heads × head_dim × b per token of every sequence in the generation
  batch, up to the context length.

What is not counted: the CUDA context and allocator fragmentation (keep 10-15 % headroom: :data:`HEADROOM`),
NCCL buffers, the data loader, the CPU side.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ModelShape",
    "StageMemory",
    "StageSettings",
    "estimate_stage",
    "layer_activation_bytes",
    "load_config",
    "measured_peak_bytes",
    "memory",
    "stages_from_config",
]

GB = 1e9
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
#: Share of the GPU the estimate may use: the rest is the CUDA context, NCCL and allocator fragmentation.
HEADROOM = 0.9
#: Gradients alive while one layer runs its backward, in units of that layer's saved activations (measured on CPU:
#: see tests/test_memory.py; the gradient of the MLP's intermediate tensors dominates).
BACKWARD_WORKING = 0.25
#: Probe: scratch of the per-sample norm reductions (``max_scratch_elements`` fp32 + the fp64 result).
PROBE_SCRATCH_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only causal LM that memory depends on (read from a HF ``config.json``)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    qk_norm: bool = False  # Qwen3 normalises q and k per head
    name: str = "model"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str | None = None) -> ModelShape:
        cfg = dict(config.get("text_config") or config)
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            shape = cls(
                hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads), intermediate=int(cfg["intermediate_size"]),
                vocab=int(cfg["vocab_size"]), tied=bool(cfg.get("tie_word_embeddings", False)),
                qk_norm=str(cfg.get("model_type", "")).startswith("qwen3"),
                name=name or str(cfg.get("_name_or_path") or cfg.get("model_type") or "model"),
            )
        except KeyError as err:
            raise ValueError(f"model config: missing {err.args[0]!r} (a decoder-only HF config.json is needed)") from None
        return shape

    @classmethod
    def from_file(cls, path: str | Path) -> ModelShape:
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"--model_config: {str(file)!r} is not a file (give a HF config.json)")
        config = json.loads(file.read_text())
        return cls.from_config(config, name=None if config.get("_name_or_path") else (
            file.stem if file == path else path.name))

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return h * q + 2 * h * kv + q * h + 3 * h * i + norms

    def root_params(self) -> int:
        """Embeddings, final norm and (untied) LM head: FSDP's root unit."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()

    def lora_params(self, rank: int) -> int:
        """LoRA on the seven projections of every layer (prism_lit's default targets)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return self.layers * rank * per_layer

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes


def _norm_bytes(n: int, b: int) -> int:
    """An HF RMSNorm over n features saves its input upcast to fp32 and the normalised values (before the weight)
    in the input dtype, plus 4 bytes of rsqrt per row."""
    return 4 * n + b * n + 4


def layer_activation_bytes(shape: ModelShape, b: int) -> int:
    """Bytes per token one decoder layer saves for its backward (no checkpointing), compute dtype ``b`` bytes.

    Derived from the ops of HF's Llama/Qwen3 decoder layer with SDPA attention; on CPU it equals the measured
    saved tensors exactly (fp32 and bf16, tests/test_memory.py).
    """
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    attn_in = _norm_bytes(h, b) + h * b  # input_layernorm, and its output (the input of q/k/v_proj)
    if shape.qk_norm:
        qk = _norm_bytes(q, b) + _norm_bytes(kv, b) - 8 + 4 * (shape.heads + shape.kv_heads)  # rsqrt per head
    else:
        qk = 0
    rope_and_attention = (q + kv) * b + kv * b + q * b + 4 * shape.heads  # q/k after RoPE, v, output, lse
    mlp_in = _norm_bytes(h, b) + h * b
    mlp = 4 * i * b  # gate, up, act(gate), act(gate)*up
    return attn_in + qk + rope_and_attention + mlp_in + mlp


def _head_bytes(shape: ModelShape, b: int) -> int:
    """Per-token bytes outside the layers: the final norm and its output, the RoPE tables, the gathered hidden
    states of the loss and the gradient entering the last layer."""
    return _norm_bytes(shape.hidden, b) + shape.hidden * b + 2 * shape.head_dim * b + 2 * shape.hidden * b


def activation_bytes_per_token(shape: ModelShape, b: int, checkpointing: bool) -> int:
    """Activation bytes per token alive when the backward starts (every layer's saved tensors, or with
    checkpointing only every layer's input plus the first recomputed layer), with the backward's working set."""
    layer = layer_activation_bytes(shape, b)
    working = int(BACKWARD_WORKING * layer)
    if checkpointing:  # layer inputs kept; one layer recomputed and back-propagated at a time
        return shape.layers * shape.hidden * b + layer + working + _head_bytes(shape, b)
    return shape.layers * layer + working + _head_bytes(shape, b)


def late_backward_bytes_per_token(shape: ModelShape, b: int, checkpointing: bool) -> int:
    """Activation bytes per token alive when the backward reaches the first layer: its own saved tensors (or its
    input and the recomputed layer), the working set and the gradient flowing in (fp32 at most)."""
    layer = layer_activation_bytes(shape, b)
    return layer + int(BACKWARD_WORKING * layer) + (shape.hidden * b if checkpointing else 0) + 4 * shape.hidden


def step_peak_bytes(shape: ModelShape, b: int, tokens: int, checkpointing: bool, gradients: float,
                    logits_chunk_tokens: int, accumulating: bool = False) -> dict[str, float]:
    """Activations, logits and weight gradients alive at the peak of one forward + backward.

    The backward allocates the weight gradients (``gradients`` bytes on this GPU) while it frees activations, so the
    peak is the larger of its start (every activation and the logits chunk; no gradient yet, unless
    ``accumulating``: micro-batches add into gradients kept from the previous ones) and its end (every gradient,
    the first layer's activations)."""
    logits = logits_chunk_bytes(shape, min(logits_chunk_tokens, max(tokens, 1)), b)
    start = {"gradients": gradients if accumulating else 0.0, "logits": logits,
             "activations": tokens * activation_bytes_per_token(shape, b, checkpointing)}
    end = {"gradients": gradients, "logits": 0.0,
           "activations": tokens * late_backward_bytes_per_token(shape, b, checkpointing)}
    return start if sum(start.values()) >= sum(end.values()) else end


def logits_chunk_bytes(shape: ModelShape, chunk: int, b: int) -> int:
    return chunk * shape.vocab * (b + 8)


@dataclass
class StageSettings:
    """What one stage runs with, per GPU.

    Args:
        stage: ``probe``, ``sft``, ``rl_rollout``, ``rl_update`` or ``eval``.
        dtype: the parameters' dtype (``policy.dtype`` / ``base.dtype``).
        compute_dtype: the activations' dtype (``bfloat16`` under ``bf16-mixed`` or FSDP2 ``param_dtype``);
            default ``dtype``.
        lora_rank: LoRA rank; ``None`` = full fine-tuning (trainable = every weight).
        shard: FSDP world size the weights, gradients and optimizer states are split over (1: DDP/one device).
        tokens: padded tokens per batch (``max_tokens``, or ``batch_size × max_length``).
        checkpointing: activation checkpointing.
        logits_chunk_tokens: the chunked loss's chunk.
        generation_batch: sequences generated at once (rollout, eval).
        context: tokens per generated sequence (prompt + reply) for the KV cache.
        reference_copy: RL with a KL term and full fine-tuning keeps a frozen copy of the weights.
        ddp: DDP over several GPUs (its gradient buckets are a second copy of the trainable gradients).
        sources: setting name → where it came from, for messages.
    """

    stage: str
    dtype: str = "bfloat16"
    compute_dtype: str | None = None
    lora_rank: int | None = None
    shard: int = 1
    tokens: int = 0
    checkpointing: bool = False
    logits_chunk_tokens: int = 1024
    generation_batch: int = 0
    context: int = 0
    reference_copy: bool = False
    ddp: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def option(self, key: str) -> str:
        return self.sources.get(key, key)


@dataclass
class StageMemory:
    """Per-GPU bytes of one stage by component, and what to change when it does not fit."""

    stage: str
    parts: dict[str, float]
    settings: StageSettings
    advice: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def fits(self, gpu_bytes: float) -> bool:
        return self.total <= HEADROOM * gpu_bytes


def _bytes(dtype: str | None, option: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"{option}: unknown dtype {dtype!r}; choose one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def estimate_stage(shape: ModelShape, s: StageSettings) -> StageMemory:
    """The per-GPU memory of one stage (module docstring for what each part counts)."""
    pb = _bytes(s.dtype, s.option("dtype"))
    b = _bytes(s.compute_dtype or s.dtype, s.option("compute_dtype"))
    n = max(1, s.shard)
    params = shape.params()
    weights = params * pb / n
    # FSDP RL rollouts: the whole policy is gathered (ranks run different numbers of forwards), and the update's
    # optimizer and reference shards stay resident
    fsdp_rollout = s.stage == "rl_rollout" and n > 1
    if n > 1:  # FSDP: two decoder layers in flight and the root stay gathered in the compute dtype
        weights += (params if fsdp_rollout else 2 * shape.layer_params() + shape.root_params()) * b
    parts: dict[str, float] = {"weights": weights}
    advice: list[str] = []
    training = s.stage in ("sft", "rl_update")
    grads = 0.0
    if training or fsdp_rollout:
        if s.lora_rank:
            trainable, tb = shape.lora_params(s.lora_rank), 4
            parts["weights"] += trainable * tb / n
        else:
            trainable, tb = params, pb
        # RL under FSDP accumulates its micro-batches' gradients unsharded, reduce-scattered once per step
        grads = trainable * tb / (1 if s.stage == "rl_update" else n)
        if s.ddp:
            parts["ddp buckets"] = trainable * tb
        parts["optimizer"] = 2 * trainable * tb / n
        if s.reference_copy:
            parts["reference"] = params * pb / n
    if s.stage in ("probe", "sft", "rl_update"):
        peak = step_peak_bytes(shape, b, s.tokens, s.checkpointing, grads, s.logits_chunk_tokens,
                               accumulating=s.stage == "rl_update")
        if not training:
            peak.pop("gradients")
        parts.update(peak)
        if s.stage == "probe":
            parts["probe scratch"] = PROBE_SCRATCH_ELEMENTS * 4 + 0.0
        if not s.checkpointing:
            advice.append(f"turn on activation checkpointing ({s.option('checkpointing')}: true)")
        advice.append(f"lower the tokens per batch ({s.option('tokens')}, now {s.tokens})")
        if training and not s.lora_rank:
            advice.append(f"train a LoRA adapter ({s.option('lora_rank')}) or shard with FSDP over more GPUs")
    if s.stage in ("rl_rollout", "eval"):
        parts["kv cache"] = s.generation_batch * s.context * shape.kv_bytes_per_token(b)
        parts["logits"] = s.generation_batch * shape.vocab * 4.0
        advice.append(f"lower the generation batch ({s.option('generation_batch')}, now {s.generation_batch}) "
                      f"or the context ({s.option('context')}, now {s.context})")
    if pb == 4 and s.stage != "sft":
        advice.append(f"load the weights in bfloat16 ({s.option('dtype')})")
    return StageMemory(s.stage, parts, s, advice)


# ---------------------------------------------------------------------- measurement (CPU)
def measured_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors allocated (and not yet freed) while ``fn`` runs, on the CPU.

    Every CPU allocation and free is read from ``torch.profiler`` (``profile_memory=True``) in time order; the peak
    of the running sum is the peak tensor memory above what existed before ``fn``. Unlike RSS this ignores the
    allocator's caching and Python objects, so it is exact and repeatable.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and str(node.extra_fields.device) == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    events.sort()
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak


# ---------------------------------------------------------------------- configs → stages
def _get(mapping: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping) or key not in mapping or mapping[key] is None:
            return default
        mapping = mapping[key]
    return mapping


def _init_args(section: Any) -> dict[str, Any]:
    if isinstance(section, Mapping):
        return dict(section.get("init_args") or {}) if "class_path" in section else dict(section)
    return {}  # a string (``strategy: ddp``) or nothing


def _world(trainer: Mapping[str, Any]) -> tuple[int, bool]:
    """(GPUs the run spans, whether the strategy shards with FSDP)."""
    devices = trainer.get("devices", 1)
    devices = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
    world = devices * int(trainer.get("num_nodes", 1) or 1)
    strategy = trainer.get("strategy", "auto")
    name = str(strategy.get("class_path", "")) if isinstance(strategy, Mapping) else str(strategy)
    return world, "fsdp" in name.lower() or "modelparallel" in name.lower()


def _compute_dtype(trainer: Mapping[str, Any], strategy_args: Mapping[str, Any], dtype: str) -> str:
    if strategy_args.get("param_dtype"):
        return str(strategy_args["param_dtype"])
    precision = str(trainer.get("precision", ""))
    return "bfloat16" if precision.startswith("bf16") else dtype


def _tokens(data: Mapping[str, Any], prefix: str, default_batch: int = 8, default_length: int = 2048) \
        -> tuple[int, str]:
    batch = int(data.get("batch_size") or default_batch)
    length = int(data.get("max_length") or default_length)
    cap = data.get("max_tokens")
    full = batch * length
    if cap:
        return min(full, max(int(cap), length)), f"{prefix}max_tokens"
    return full, f"{prefix}batch_size × {prefix}max_length (set {prefix}max_tokens)"


def _pipeline_stages(cfg: Mapping[str, Any]) -> list[StageSettings]:
    base, trainer = cfg.get("base") or {}, cfg.get("trainer") or {}
    world, fsdp = _world(trainer)
    shard = world if fsdp else 1
    ddp = world > 1 and not fsdp
    dtype = str(base.get("dtype", "float32"))
    strategy_args = _init_args(trainer.get("strategy"))
    compute = _compute_dtype(trainer, strategy_args, dtype)
    ckpt = bool(base.get("gradient_checkpointing", False))
    common = {"dtype": "base.dtype", "compute_dtype": "trainer.precision", "checkpointing": "base.gradient_checkpointing"}
    probe, sft = cfg.get("probe") or {}, cfg.get("sft") or {}
    p_tokens, p_src = _tokens(probe, "probe.")
    s_tokens, s_src = _tokens(sft, "sft.")
    lora = _get(sft, "lora", "r", default=8) if sft.get("lora") is not None else None
    stages = [
        StageSettings("probe", dtype, compute, None, shard, p_tokens, ckpt,
                      sources={**common, "tokens": p_src}),
        StageSettings("sft", dtype, compute, lora, shard, s_tokens, ckpt, ddp=ddp,
                      sources={**common, "tokens": s_src, "lora_rank": "sft.lora"}),
    ]
    rl = cfg.get("rl") or {}
    if rl.get("enabled", True):
        tasks = int(_get(rl, "data", "tasks_per_batch", default=1))
        sources = {**common, "lora_rank": "sft.lora"}
        stages += _rl_stages(_init_args(rl.get("module")), tasks, StageSettings("rl", dtype, compute, lora, shard,
                             checkpointing=ckpt, ddp=ddp, sources=sources), "rl.module.init_args.",
                             (sft.get("max_length"), "sft.max_length"))
    ev = cfg.get("eval") or {}
    ev_context = int(sft.get("max_length") or 2048) + int(ev.get("max_new_tokens", 32))
    stages.append(StageSettings("eval", dtype, compute, None, 1, generation_batch=int(ev.get("batch_size", 25)),
                                context=ev_context,
                                sources={"dtype": "base.dtype", "generation_batch": "eval.batch_size",
                                         "context": "sft.max_length + eval.max_new_tokens"}))
    return stages


def _rl_stages(module: Mapping[str, Any], tasks: int, base: StageSettings, prefix: str,
               default_prompt: tuple[Any, str]) -> list[StageSettings]:
    """The rollout and update stages of an RL module's init args (``base``: the policy's settings)."""
    rollout = module.get("rollout") or {}
    gen = int(rollout.get("generation_batch_size") or tasks * int(module.get("group_size", 8)))
    prompt = rollout.get("max_prompt_tokens")
    context = int(prompt or default_prompt[0] or 2048) + int(rollout.get("max_new_tokens", 48))
    sources = {**base.sources, "generation_batch": f"{prefix}rollout.generation_batch_size",
               "context": f"{prefix}rollout.max_prompt_tokens" + ("" if prompt else f" (unset: {default_prompt[1]})"),
               "tokens": f"{prefix}update.micro_batch_size × context"}
    micro = int(_get(module, "update", "micro_batch_size", default=8))
    kl = float(_get(module, "kl", "coef", default=0.0) or 0.0)
    reference = kl > 0 and base.lora_rank is None
    return [replace(base, stage="rl_rollout", checkpointing=False, ddp=False, generation_batch=gen, context=context,
                    reference_copy=reference, sources=sources),
            replace(base, stage="rl_update", tokens=micro * context, reference_copy=reference, sources=sources)]


def _fit_stages(cfg: Mapping[str, Any]) -> list[StageSettings]:
    trainer = cfg.get("trainer") or {}
    world, fsdp = _world(trainer)
    strategy_args = _init_args(trainer.get("strategy"))
    model = _init_args(cfg.get("model"))
    policy = model.get("policy") or {}
    dtype = str(policy.get("dtype", "float32"))
    compute = _compute_dtype(trainer, strategy_args, dtype)
    ckpt = bool(policy.get("gradient_checkpointing", False))
    data = _init_args(cfg.get("data"))
    tokens, src = _tokens(data, "data.init_args.")
    lora = _get(policy, "lora", "r", default=8) if policy.get("lora") is not None else None
    sources = {"dtype": "model.init_args.policy.dtype", "compute_dtype": "trainer.precision",
               "checkpointing": "model.init_args.policy.gradient_checkpointing", "tokens": src,
               "lora_rank": "model.init_args.policy.lora"}
    if ".rl." in str(_get(cfg, "model", "class_path", default="")):  # an RL module (prism_lit.rl.GRPOModule ...)
        base = StageSettings("rl", dtype, compute, lora, world if fsdp else 1, checkpointing=ckpt,
                             ddp=world > 1 and not fsdp, sources=sources)
        return _rl_stages(model, int(data.get("tasks_per_batch") or 1), base, "model.init_args.", (None, "2048"))
    chunk = int(model.get("logits_chunk_tokens") or 1024)
    stages = [StageSettings("sft", dtype, compute, lora, world if fsdp else 1, tokens, ckpt, chunk,
                            ddp=world > 1 and not fsdp, sources=sources)]
    callbacks = trainer.get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if "GradientConcentrationProbe" in str(_get(cb, "class_path", default="")):
            args = _init_args(cb)
            probe_ckpt = args.get("activation_checkpointing")
            stages.insert(0, replace(stages[0], stage="probe", lora_rank=None, ddp=False,
                                     checkpointing=ckpt if probe_ckpt is None else bool(probe_ckpt)))
    return stages


def stages_from_config(cfg: Mapping[str, Any]) -> list[StageSettings]:
    """The stages a pipeline config (``base:``, ``probe:``, ``sft:`` ...) or a fit config (``model:``, ``data:``,
    ``trainer:``) runs, with their memory settings."""
    if "model" in cfg and "base" not in cfg:
        return _fit_stages(cfg)
    return _pipeline_stages(cfg)


def _model_shape(cfg: Mapping[str, Any], model_config: str | None) -> ModelShape:
    if model_config:
        return ModelShape.from_file(model_config)
    path = _get(cfg, "base", "path") or _get(_init_args(cfg.get("model")), "policy", "path")
    if path and (Path(path) / "config.json").is_file():
        return ModelShape.from_file(path)
    embedded = _get(cfg, "base", "embedded")
    if "base" in cfg and not path:
        from prism_lit.policy.embedded import EmbeddedModelSpec

        spec = EmbeddedModelSpec(**(embedded or {}))
        return ModelShape.from_config({**vars(spec), "model_type": "llama"}, name="embedded default")
    raise FileNotFoundError(f"the model's config.json is not readable at {path!r}: pass --model_config "
                            "path/to/config.json (e.g. configs/scale/models/qwen3_8b.json)")


def load_config(path: str | Path) -> dict[str, Any]:
    """A config as a dict; pipeline sections given as file paths (``sft: parts/webshop/sft.yaml``) are read,
    relative to the config's directory or the working directory."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: {str(path)!r} is not a file")
    cfg = yaml.safe_load(path.read_text()) or {}
    for key, value in list(cfg.items()):
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            for candidate in (path.parent / value, Path(value)):
                if candidate.is_file():
                    cfg[key] = yaml.safe_load(candidate.read_text()) or {}
                    break
    return cfg


def format_table(shape: ModelShape, results: Iterable[StageMemory], gpu_gb: float) -> str:
    results = list(results)
    columns = ["weights", "gradients", "ddp buckets", "optimizer", "reference", "activations", "logits",
               "probe scratch", "kv cache"]
    columns = [c for c in columns if any(c in r.parts for r in results)]
    head = ["stage", "per batch", *columns, "total GB", f"fits {gpu_gb:g} GB"]
    rows = [head]
    for r in results:
        s = r.settings
        batch = f"{s.generation_batch} x {s.context} tok" if s.generation_batch else f"{s.tokens} tok"
        batch += ", ckpt" if s.checkpointing and not s.generation_batch else ""
        cells = [f"{r.parts[c] / GB:.1f}" if c in r.parts else "-" for c in columns]
        rows.append([r.stage, batch, *cells, f"{r.total / GB:.1f}", "yes" if r.fits(gpu_gb * GB) else "NO"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"{shape.name}: {shape.params() / 1e9:.2f} B parameters, {shape.layers} layers, hidden {shape.hidden}, "
             f"vocab {shape.vocab}; usable {HEADROOM:.0%} of each GPU"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def memory(config: str, gpu_memory_gb: float = 80.0, model_config: str | None = None) -> None:
    """Print the peak memory per GPU of every stage of a config; exit 1 naming the setting when one cannot fit.

    Args:
        config: a pipeline config (``prism-lit pipeline``) or a fit config (``prism-lit fit``).
        gpu_memory_gb: memory of one GPU (80 for A100/H100 80 GB).
        model_config: the model's HF ``config.json`` (default: ``config.json`` in the config's model path).
    """
    cfg = load_config(config)
    shape = _model_shape(cfg, model_config)
    results = [estimate_stage(shape, s) for s in stages_from_config(cfg)]
    print(format_table(shape, results, gpu_memory_gb))
    failing = [r for r in results if not r.fits(gpu_memory_gb * GB)]
    for r in failing:
        need = r.total / GB
        print(f"\n{r.stage}: needs {need:.1f} GB of {gpu_memory_gb:g} GB ({HEADROOM:.0%} usable). Change: "
              + "; or ".join(r.advice or ["a GPU with more memory"]))
    if failing:
        raise SystemExit(1)




def main(argv: list[str] | None = None) -> None:
    """``prism-lit memory --config X.yaml [--gpu_memory_gb 80] [--model_config config.json]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="prism-lit memory", description=memory.__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a pipeline config or a fit config (YAML)")
    parser.add_argument("--gpu_memory_gb", "--gpu-memory-gb", type=float, default=80.0,
                        help="memory of one GPU in GB (default 80)")
    parser.add_argument("--model_config", "--model-config", default=None,
                        help="the model's HF config.json (default: config.json in the config's model path)")
    args = parser.parse_args(argv)
    memory(args.config, args.gpu_memory_gb, args.model_config)


main.parses_own_arguments = True  # type: ignore[attr-defined]
