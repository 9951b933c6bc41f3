"""Scale-out helpers: rank/world queries, FSDP2 sharding of HF decoder models, an FSDP1 wrap policy for LoRA,
and gathering a sharded model's full weights for export.

Which Lightning strategy uses what (docs/scaling.md):

- ``strategy: ddp`` — nothing here is needed; every rank holds the whole model.
- ``ModelParallelStrategy`` (FSDP2, also on CPU with gloo) — :class:`~prism_lit.sft.SFTModule` calls
  :func:`apply_fsdp2` in ``configure_model``: every decoder layer becomes its own ``fully_shard`` unit, then the
  root (embeddings, final norm, LM head) does.
- ``FSDPStrategy`` (FSDP1, GPU only in Lightning 2.6) — pass :class:`LoraAwareWrapPolicy` as ``auto_wrap_policy``
  and ``use_orig_params: true`` when the policy is a LoRA adapter (frozen and trainable weights share a layer).

Export under sharding: :func:`gather_full_state_dict` is a collective (every rank calls it); rank 0 receives the
full, CPU-resident weights and writes them with ``save_pretrained(state_dict=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from prism_lit.io import atomic_directory

DECODER_LAYER_SUFFIX = "DecoderLayer"


# ---------------------------------------------------------------------- ranks
def world_info() -> tuple[int, int]:
    """``(global_rank, world_size)``: from the initialised process group, else the launcher's environment
    (torchrun's ``RANK``/``WORLD_SIZE``, SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``), else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and size_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[size_key])
    return 0, 1


def is_rank_zero() -> bool:
    """True on the process that writes shared artifacts (global rank 0)."""
    return world_info()[0] == 0


def barrier() -> None:
    """Wait for every rank; a no-op without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------- decoder layers
def decoder_layer_class_names(model: nn.Module) -> set[str]:
    """Class names of the model's transformer blocks.

    Hugging Face models list them in ``_no_split_modules`` (``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ...);
    a peft wrapper is looked through. Falls back to every class whose name ends in ``DecoderLayer``.
    """
    names: set[str] = set()
    for module in model.modules():
        declared = getattr(module, "_no_split_modules", None)
        if declared:
            names.update(declared)
    if not names:
        names = {type(m).__name__ for m in model.modules() if type(m).__name__.endswith(DECODER_LAYER_SUFFIX)}
    return names


def decoder_layers(model: nn.Module, class_names: Iterable[str] | None = None) -> list[nn.Module]:
    """The model's transformer blocks in order (the units FSDP shards one by one)."""
    wanted = set(class_names) if class_names else decoder_layer_class_names(model)
    # by the class or a base class: fully_shard turns LlamaDecoderLayer into a subclass FSDPLlamaDecoderLayer
    layers = [m for m in model.modules() if any(c.__name__ in wanted for c in type(m).__mro__)]
    if not layers:
        raise ValueError(
            f"no decoder layers found in {type(model).__name__} (looked for classes {sorted(wanted) or 'named *'}"
            f"{DECODER_LAYER_SUFFIX}); name the block class explicitly"
        )
    return layers


# ---------------------------------------------------------------------- FSDP2 (ModelParallelStrategy)
def is_fsdp2_sharded(model: nn.Module) -> bool:
    """True when ``fully_shard`` has already been applied to ``model`` (its root)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def data_parallel_mesh(device_mesh):
    """The data-parallel sub-mesh of a ModelParallelStrategy mesh, refusing an unused tensor-parallel dimension.

    Lightning's defaults are ``data_parallel_size = num_nodes`` and ``tensor_parallel_size = devices``; prism_lit
    applies no tensor parallelism, so with those defaults the ranks of one node would all see the *same* data.
    """
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            "ModelParallelStrategy: tensor_parallel_size is "
            f"{device_mesh['tensor_parallel'].size()}, but prism_lit shards with FSDP2 only. Set "
            "`data_parallel_size` to the world size (num_nodes × devices) and `tensor_parallel_size: 1`."
        )
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh


def apply_fsdp2(
    model: nn.Module,
    device_mesh=None,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    layer_class_names: Iterable[str] | None = None,
) -> nn.Module:
    """Shard ``model`` with FSDP2: each decoder layer is one ``fully_shard`` unit, then the root.

    Args:
        model: a HF causal LM, optionally peft-wrapped (LoRA works: FSDP2 shards per parameter, so frozen and
            trainable weights may share a unit).
        device_mesh: a ModelParallelStrategy mesh (its data-parallel dimension is used) or a 1-D mesh;
            ``None`` = all ranks of the default process group.
        param_dtype / reduce_dtype: FSDP2 mixed precision (e.g. ``torch.bfloat16`` / ``torch.float32``);
            ``None`` keeps the parameters' dtype.
        reshard_after_forward: free each decoder layer's gathered weights after its forward (less memory, one
            more all-gather in backward). The root (embeddings, final norm, LM head) always stays gathered from its
            forward to its backward: the chunked loss (:mod:`prism_lit.sft.loss`, the probe) applies the LM head
            to the returned hidden states after the root's forward, and the backward needs them at once anyway.
        layer_class_names: transformer-block classes; default: the model's ``_no_split_modules``.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = data_parallel_mesh(device_mesh) if device_mesh is not None else None
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for layer in decoder_layers(model, layer_class_names):
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False)
    return model


def _torch_dtype(name: str | None, option: str) -> torch.dtype | None:
    if name is None:
        return None
    from prism_lit.policy.loading import DTYPES

    if name not in DTYPES:
        raise ValueError(f"{option}: unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return getattr(torch, DTYPES[name])


def fsdp2_options(strategy: Any) -> dict[str, Any]:
    """``apply_fsdp2`` keyword arguments a strategy carries (:class:`FSDP2Strategy`'s mixed precision), else none."""
    options = getattr(strategy, "fsdp2_options", None)
    return dict(options()) if callable(options) else {}


def load_sharded_fsdp2(
    load_full: Callable[[], nn.Module],
    build_empty: Callable[[], nn.Module],
    device_mesh,
    **fsdp_kwargs: Any,
) -> nn.Module:
    """A model sharded with :func:`apply_fsdp2` whose full copy exists on one rank only, and only on its CPU.

    Rank 0 of the data-parallel mesh calls ``load_full()`` (``from_pretrained``) on the CPU; every other rank calls
    ``build_empty()`` under ``torch.device("meta")`` (the same architecture, adapter included, with no storage).
    All ranks shard, allocate their shards on the mesh's device, and rank 0 broadcasts the weights
    (``set_model_state_dict(..., broadcast_from_rank0=True)``: one tensor at a time, each rank keeps its shard)
    and the buffers (rotary tables are not in the state dict). Host memory: one full copy on rank 0 instead of
    one per rank; device memory: the shards, plus one full tensor in flight.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    mesh = data_parallel_mesh(device_mesh)
    if mesh.size() == 1:
        return apply_fsdp2(load_full(), device_mesh, **fsdp_kwargs)
    source = mesh.get_local_rank() == 0
    if source:
        with torch.device("cpu"):
            model = load_full()
        full = model.state_dict()
        buffers = {name: buf.clone() for name, buf in model.named_buffers()}
    else:
        with torch.device("meta"):
            model = build_empty()
        full, buffers = {}, {}
    apply_fsdp2(model, device_mesh, **fsdp_kwargs)
    device = torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" \
        else torch.device(mesh.device_type)
    model.to_empty(device=device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    group = mesh.get_group()
    src = dist.get_global_rank(group, 0)
    for name, buf in model.named_buffers():
        if source:
            buf.copy_(buffers[name])
        dist.broadcast(buf, src=src, group=group)
    return model


def optimizer_state_by_name(saved: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """Re-key a plain ``optimizer.state_dict()`` (integer ids) by parameter name, for ``set_optimizer_state_dict``.

    Saved ids follow the order of the saved ``param_groups``, not the module's parameter order (SFTModule puts
    matrices and vectors in separate groups), so ids are matched group by group with ``optimizer``'s parameters,
    which ``configure_optimizers`` rebuilt in the same order.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    saved_groups, groups = saved["param_groups"], optimizer.param_groups
    sizes = [len(g["params"]) for g in saved_groups], [len(g["params"]) for g in groups]
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"checkpoint optimizer: parameter groups of sizes {sizes[0]} do not match this run's {sizes[1]} "
            "(was the checkpoint written with another policy, LoRA setting or optimizer?)"
        )
    key = {sid: names[id(p)] for sg, g in zip(saved_groups, groups) for sid, p in zip(sg["params"], g["params"])}
    return {
        "state": {key[k]: v for k, v in saved["state"].items()},
        "param_groups": [dict(g, params=[key[i] for i in g["params"]]) for g in saved_groups],
    }


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with data-parallel defaults and resumable plain checkpoints.

    - ``data_parallel_size`` defaults to the world size and ``tensor_parallel_size`` to 1: prism_lit shards with
      FSDP2 only (Lightning's defaults put a node's devices on the tensor-parallel axis).
    - Resuming from a single-file checkpoint written by another strategy (one process, DDP, or this strategy
      with ``save_distributed_checkpoint: false``) maps the optimizer state by parameter groups (see
      :func:`optimizer_state_by_name`). Sharded checkpoint directories are loaded by Lightning (DCP reshards them
      to the current world size).

    - ``param_dtype`` / ``reduce_dtype``: FSDP2's mixed precision (``MixedPrecisionPolicy``), applied by the
      module's ``configure_model`` (:func:`fsdp2_options`): e.g. ``bfloat16`` / ``float32`` keeps fp32 sharded master
      weights and optimizer state, all-gathers and computes in bf16, reduce-scatters gradients in fp32.
      ``None``: the parameters' own dtype.

    Other args are ``ModelParallelStrategy``'s.
    """

    def __init__(
        self,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int | str = 1,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint, process_group_backend=process_group_backend,
            **kwargs,
        )
        self.param_dtype = _torch_dtype(param_dtype, "FSDP2Strategy.param_dtype")
        self.reduce_dtype = _torch_dtype(reduce_dtype, "FSDP2Strategy.reduce_dtype")

    def fsdp2_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`apply_fsdp2` / :func:`load_sharded_fsdp2` (the mixed precision)."""
        return {"param_dtype": self.param_dtype, "reduce_dtype": self.reduce_dtype}

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes // (
                1 if self._tensor_parallel_size == "auto" else int(self._tensor_parallel_size))
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():
            if self.lightning_module.strict_loading:
                return super().load_checkpoint(path, weights_only=weights_only)
            return self._load_sharded_subset(path, weights_only)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        strict = self.lightning_module.strict_loading
        set_model_state_dict(self.model, checkpoint.pop("state_dict"),
                             options=StateDictOptions(full_state_dict=True, strict=strict))
        options = StateDictOptions(full_state_dict=True)
        for optimizer, saved in zip(self.optimizers, checkpoint.get("optimizer_states", [])):
            if saved["state"] and isinstance(next(iter(saved["state"])), int):
                saved = optimizer_state_by_name(saved, optimizer, self.model)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=saved, options=options)
        return checkpoint

    def _load_sharded_subset(self, path: Path, weights_only: bool | None) -> dict[str, Any]:
        """A sharded (DCP) checkpoint that holds only some of the model's weights (a LoRA adapter: the modules'
        ``on_save_checkpoint`` drops the frozen base): Lightning's loader asks DCP for every weight and fails on
        the first frozen one, so only the saved weights are requested here; the others keep what ``policy.path``
        gave them."""
        from lightning.fabric.strategies.fsdp import _METADATA_FILENAME
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint import load as dcp_load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        saved = set(FileSystemReader(path).read_metadata().state_dict_metadata)
        weights = {k: v for k, v in get_model_state_dict(self.model).items() if f"state_dict.{k}" in saved}
        if not weights:
            raise ValueError(f"{path}: this sharded checkpoint holds none of the model's weights (another model's?)")
        dcp_load({"state_dict": weights}, checkpoint_id=path)
        set_model_state_dict(self.model, weights, options=StateDictOptions(strict=False))
        for idx, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{idx}": get_optimizer_state_dict(self.model, optimizer)}
            dcp_load(state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state[f"optimizer_{idx}"],
                                     options=StateDictOptions(cpu_offload=True))
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)


# ---------------------------------------------------------------------- FSDP1 (FSDPStrategy)
class LoraAwareWrapPolicy:
    """``auto_wrap_policy`` for Lightning's ``FSDPStrategy`` on HF decoder models, LoRA or not.

    Wraps every transformer block in its own FSDP unit. With ``wrap_adapters`` each trainable leaf module
    (peft's ``lora_A``/``lora_B`` Linear layers) becomes a unit of its own as well, so no flat parameter mixes
    frozen and trainable weights: needed when ``use_orig_params`` is ``False``; with ``use_orig_params: true``
    (recommended) the blocks alone suffice and communication stays coarse.

    Args:
        layer_class_names: transformer-block classes; default: any class named ``*DecoderLayer``
            (Llama, Qwen2/3, Mistral, Gemma, Phi3 ...).
        wrap_adapters: also wrap trainable leaf modules separately.
    """

    def __init__(self, layer_class_names: list[str] | None = None, wrap_adapters: bool = False) -> None:
        self.layer_class_names = set(layer_class_names or [])
        self.wrap_adapters = wrap_adapters

    def is_block(self, module: nn.Module) -> bool:
        name = type(module).__name__
        return name in self.layer_class_names if self.layer_class_names else name.endswith(DECODER_LAYER_SUFFIX)

    @staticmethod
    def is_trainable_leaf(module: nn.Module) -> bool:
        params = list(module.parameters(recurse=False))
        return not list(module.children()) and bool(params) and all(p.requires_grad for p in params)

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:
            return True  # always descend; the decision is made per module below
        return self.is_block(module) or (self.wrap_adapters and self.is_trainable_leaf(module))


# ---------------------------------------------------------------------- full weights for export
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_param_name(name: str) -> str:
    """A parameter name without FSDP1 / activation-checkpoint / torch.compile wrapper segments, i.e. the key it
    has in a state dict (``layers.0._fsdp_wrapped_module.mlp...`` → ``layers.0.mlp...``)."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def is_sharded(module: nn.Module) -> bool:
    """True when any parameter of ``module`` is a DTensor (FSDP2/TP) or any submodule is an FSDP1 unit."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    if any(isinstance(m, FullyShardedDataParallel) for m in module.modules()):
        return True
    return any(isinstance(p, DTensor) for p in module.parameters())


def gather_full_state_dict(root: nn.Module, prefix: str = "", trainable_only: bool = False) -> dict[str, Any]:
    """The full (unsharded) state dict of ``root``, on CPU: on rank 0 only for GPU models (other ranks get an
    empty dict), on every rank for CPU models.

    A collective: every rank must call it. Works for FSDP1, FSDP2, DDP and plain modules. Keys are returned
    without wrapper prefixes; ``prefix`` (e.g. ``"model."`` for the HF model inside a LightningModule) selects
    the entries under it and strips it. ``trainable_only`` skips frozen weights (a LoRA adapter's export does not
    need the gathered base model).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    on_cpu = all(p.device.type == "cpu" for p in root.parameters())
    # offloading CPU tensors to the CPU makes FSDP1 free what it hands out (a segfault on clone); and all ranks
    # then get the full dict, which costs nothing extra on CPU
    options = StateDictOptions(full_state_dict=True, cpu_offload=not on_cpu, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(root, options=options)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def drop_tied_duplicates(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Keep one entry per shared parameter (tied embeddings): a gathered state dict names it under every alias,
    while ``save_pretrained`` on an unsharded model writes it once."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(clean_param_name(name))
    aliases = {alias for group in names.values() for alias in group[1:]}
    return {k: v for k, v in state.items() if k not in aliases}


def save_adapter(model, out_dir: Path, state_dict: dict[str, Any], adapter_name: str = "default") -> None:
    """Write a peft adapter (``adapter_model.safetensors`` + ``adapter_config.json``) from a gathered state dict.

    ``PeftModel.save_pretrained(state_dict=...)`` selects adapter entries by the model's module names, which under
    FSDP1 carry wrapper segments, and then silently writes nothing; here the entries are the trainable parameters
    by their clean names, and the keys are peft's (the adapter name removed), so ``PeftModel.from_pretrained``
    loads them.
    """
    import copy

    from safetensors.torch import save_file

    trainable = {clean_param_name(n) for n, p in model.named_parameters() if p.requires_grad}
    weights = {k.replace(f".{adapter_name}.", "."): v.contiguous() for k, v in state_dict.items() if k in trainable}
    if not weights:
        raise ValueError(f"save_adapter: no trainable entry of adapter {adapter_name!r} in the gathered state dict")
    save_file(weights, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.copy(model.peft_config[adapter_name])
    config.inference_mode = True
    config.save_pretrained(str(out_dir))


def save_pretrained_atomic(model, tokenizer, out_dir: str | os.PathLike, state_dict: dict[str, Any]) -> Path:
    """The model (``save_pretrained(state_dict=...)``) or adapter (:func:`save_adapter`) plus the tokenizer into
    ``out_dir``, atomically by rename.

    Used for sharded models, whose parameters are shards: the gathered ``state_dict`` replaces them.
    """
    with atomic_directory(out_dir) as tmp:
        if hasattr(model, "peft_config"):
            save_adapter(model, tmp, state_dict)
        else:
            model.save_pretrained(tmp, state_dict=drop_tied_duplicates(model, state_dict))
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def export_sharded_policy(root: nn.Module, model, tokenizer, out_dir: str | os.PathLike, prefix: str = "model.") -> None:
    """Gather ``model``'s weights from the shards held under ``root`` and export on rank 0 (collective).

    Args:
        root: the module the strategy sharded or wrapped (``trainer.strategy.model``).
        model: the HF (or peft) model inside ``root``; its ``save_pretrained`` writes the files.
        tokenizer: saved next to the weights.
        out_dir: the export directory.
        prefix: ``model``'s attribute path inside ``root``.
    """
    adapter = hasattr(model, "peft_config")
    state = gather_full_state_dict(root, prefix=prefix, trainable_only=adapter)
    if is_rank_zero():
        save_pretrained_atomic(model, tokenizer, out_dir, state)
