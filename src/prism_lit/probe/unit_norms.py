"""Per-sample, per-unit gradient norms of a causal LM in one batched forward + backward.

Unit u is a linear layer y = x Wᵤᵀ (+ b). For sample i with valid (trained) next-token targets V_i,
its loss is L_i = (1/|V_i|) Σ_{t∈V_i} CE(logits_{i,t}, y_{i,t+1}), and

    ∇_{Wᵤ} L_i = Σ_t δ_{i,t} x_{i,t}ᵀ        δ_{i,t} = ∂L_i/∂y_{i,t}  (output gradient at token t)

Backpropagating Σ_i L_i once gives every sample's own δ_i, because nothing in a causal LM couples
samples (attention, norms and the loss act within a sequence), so the batch never mixes gradients.
Forward hooks keep x, a hook on each unit's output receives δ, and the norm is reduced at once, per
layer, with whichever of these is cheaper (`_sq_norms`):

- direct: G_i = δ_iᵀ x_i, ‖G_i‖²_F                      ~ T·d_in·d_out per sample, memory d_in·d_out
- ghost:  ‖G_i‖²_F = Σ_{t,s} (x_t·x_s)(δ_t·δ_s)          ~ T²·(d_in + d_out) per sample, memory T²

Logits are never materialised for the whole batch (Qwen3's vocabulary makes them ~1.2 MB per token in fp32):
the model returns its final hidden states, and the per-sample loss and its gradient with respect to those hidden
states are computed in chunks of ``logits_chunk_tokens`` positions (`_chunked_losses`); the backward through the
transformer then starts from that gradient. The result is the same as with full logits (to float rounding).

The backward asks autograd only for the gradient of the input embeddings (made a leaf by a hook), so no
parameter gradient is computed or accumulated: weights and their `.grad` are untouched, frozen weights
(peft base layers) are measured like any other, and a sharded weight (FSDP) is never needed — only
activations are. bf16/fp16 activations are reduced in fp32 (a bf16 tiny Llama lands within 0.4 % of fp32).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_UNITS",
    "UnitGradNorms",
    "find_units",
    "measure_unit_grad_norms",
    "per_sample_losses",
    "per_sample_unit_grad_norms_naive",
    "position_ids_from_mask",
    "unit_grad_norms",
]

#: The linear projections of a Llama/Qwen/Mistral block: N = 7 × layers units.
DEFAULT_UNITS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

IGNORE_INDEX = -100
NormMethod = Literal["auto", "direct", "ghost"]


@dataclass
class UnitGradNorms:
    """Result of one batched probe pass.

    norms: [B, N] float64, ‖∇_{W_u} L_i‖_F; unit_names: the N unit names; loss: [B] float64, L_i (NaN when
    the sample has no trained token); n_tokens: [B] long, |V_i|.
    """

    norms: torch.Tensor
    unit_names: list[str]
    loss: torch.Tensor
    n_tokens: torch.Tensor


def _root_module(model: nn.Module) -> nn.Module:
    # peft.PeftModel: name units as in the base model, so plain and adapted models share unit names.
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def find_units(model: nn.Module, units: Sequence[str] | None = None) -> list[tuple[str, nn.Linear]]:
    """The (name, linear layer) pairs probed in `model`, in module order.

    `units` are regular expressions matched against a dotted suffix of each module's name (so "q_proj"
    matches "model.layers.3.self_attn.q_proj" and r"layers\\.0\\..*" selects layer 0); default
    `DEFAULT_UNITS`. A peft LoRA layer counts as its base layer: its weight is the unit.
    """
    patterns = tuple(DEFAULT_UNITS if units is None else units)
    if not patterns:
        raise ValueError("units: give at least one name pattern")
    compiled = [re.compile(rf"(?:^|\.)(?:{p})$") for p in patterns]
    found: list[tuple[str, nn.Linear]] = []
    for name, module in _root_module(model).named_modules():
        if not name or not any(c.search(name) for c in compiled):
            continue
        base = module
        while hasattr(base, "base_layer"):
            base = base.base_layer
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"unit '{name}' matched units {patterns} but is {type(base).__name__}, not nn.Linear"
            )
        found.append((name, base))
    if not found:
        raise ValueError(f"no linear layer of {type(model).__name__} matches units {patterns}")
    return found


def _check_batch(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for key in ("input_ids", "attention_mask", "labels"):
        if key not in batch:
            raise KeyError(f"batch: missing '{key}' (have {sorted(batch)})")
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or labels.shape != input_ids.shape:
        raise ValueError(
            "batch: input_ids, attention_mask and labels must share one [B, T] shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(labels.shape)}"
        )
    if bool(((attention_mask == 0) & (labels != IGNORE_INDEX)).any()):
        raise ValueError(
            "batch: 'labels' must be -100 wherever attention_mask is 0 (a padded token is trained on)"
        )
    return input_ids, attention_mask, labels


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, no gradient checkpointing) for the probe; restores each module's flag after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded sequence sees the positions it has alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def per_sample_losses(
    logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy per sample over its own valid targets (HF shift), and the target counts.

    A target counts when its label is not -100 and the token predicting it is real: with left padding the
    first real token would otherwise be "predicted" from a pad. A sample without targets gets loss 0 here
    (so it adds nothing to a backward); callers report NaN.
    """
    # Shift the targets, not the logits: slicing [B, T, V] logits would copy them.
    targets = _targets(labels, attention_mask)
    valid = targets != IGNORE_INDEX
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    n_tokens = valid.sum(dim=1)
    loss = ce.sum(dim=1) / n_tokens.clamp(min=1)
    return loss, n_tokens


def _targets(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with the positions that predict them (see per_sample_losses)."""
    ignore = torch.full_like(labels[:, :1], IGNORE_INDEX)
    targets = torch.cat([labels[:, 1:], ignore], dim=1)
    return torch.where(attention_mask.bool(), targets, IGNORE_INDEX)


def _chunked_losses(
    hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, attention_mask: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample mean CE from the final hidden states, ``chunk`` positions at a time, with ∂(Σ_i L_i)/∂hidden.

    Only positions with a target are projected onto the vocabulary, and only one chunk's logits exist at a time.
    Returns (loss [B], n_tokens [B], grad_hidden like ``hidden``).
    """
    targets = _targets(labels, attention_mask)
    valid = targets != IGNORE_INDEX
    n_tokens = valid.sum(dim=1)
    weight = 1.0 / n_tokens.clamp(min=1).to(torch.float32)  # each sample's mean over its own targets
    rows, cols = valid.nonzero(as_tuple=True)
    loss = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden)
    for lo in range(0, rows.numel(), chunk):
        r, c = rows[lo : lo + chunk], cols[lo : lo + chunk]
        h = hidden[r, c].detach().requires_grad_(True)
        with torch.enable_grad():
            ce = F.cross_entropy(lm_head(h).float(), targets[r, c], reduction="none") * weight[r]
            (grad,) = torch.autograd.grad(ce.sum(), h)
        loss.index_add_(0, r, ce.detach())
        grad_hidden[r, c] = grad.to(hidden.dtype)
    return loss, n_tokens, grad_hidden


def _use_ghost(t: int, d_in: int, d_out: int) -> bool:
    return t * (d_in + d_out) < d_in * d_out


def _sq_norms(x: torch.Tensor, g: torch.Tensor, method: NormMethod, max_elements: int) -> torch.Tensor:
    """[B] float64: ‖Σ_t g_t x_tᵀ‖²_F per sample, in chunks of samples bounded by `max_elements` scratch."""
    with torch.autocast(device_type=x.device.type, enabled=False):  # the probe may run under training's autocast
        return _sq_norms_fp32(x, g, method, max_elements)


def _sq_norms_fp32(x: torch.Tensor, g: torch.Tensor, method: NormMethod, max_elements: int) -> torch.Tensor:
    if not (x.dtype == g.dtype == torch.float64):  # bf16/fp16 activations or gradients (autocast) reduce in fp32
        x, g = x.float(), g.float()
    b, t, d_in = x.shape
    d_out = g.shape[-1]
    ghost = method == "ghost" or (method == "auto" and _use_ghost(t, d_in, d_out))
    per_sample = 2 * t * t if ghost else d_in * d_out
    chunk = max(1, max_elements // max(1, per_sample))
    out = torch.empty(b, dtype=torch.float64, device=x.device)
    for lo in range(0, b, chunk):
        xs, gs = x[lo : lo + chunk], g[lo : lo + chunk]
        if ghost:
            gram_x = torch.bmm(xs, xs.transpose(1, 2)).double()
            gram_g = torch.bmm(gs, gs.transpose(1, 2)).double()
            out[lo : lo + chunk] = (gram_x * gram_g).sum(dim=(1, 2))
        else:
            grad = torch.bmm(gs.transpose(1, 2), xs)  # [b, d_out, d_in]: each sample's own weight gradient
            out[lo : lo + chunk] = torch.linalg.vector_norm(
                grad.flatten(1), dim=1, dtype=torch.float64
            ).square()
    return out


def _checkpointing_requested(model: nn.Module) -> bool:
    """Whether the model was set up with activation checkpointing (HF's flag; peft and FSDP look through)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        try:
            value = getattr(model, name)
        except AttributeError:
            continue
        return bool(value)
    return False


@contextmanager
def _checkpointed_layers(model: nn.Module) -> Iterator[None]:
    """Every decoder layer's forward under non-reentrant activation checkpointing, in any mode (the probe runs in
    eval mode, where HF's own checkpointing is off). Recomputation runs the whole layer (no early stop), so each
    unit's forward hook fires exactly twice: once in the forward, once when the backward reaches its layer."""
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    from prism_lit.distributed import decoder_layers

    layers = decoder_layers(model)
    saved = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        inner = layer.forward

        def forward(*args: Any, _inner=inner, **kwargs: Any) -> Any:
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
    try:
        with set_checkpoint_early_stop(False):
            yield
    finally:
        for layer, previous in zip(layers, saved):
            del layer.forward
            if previous is not None:
                layer.forward = previous


ForwardRunner = Callable[[Callable[[], Any]], Any]


def measure_unit_grad_norms(
    model: nn.Module,
    batch: Mapping[str, Any],
    units: Sequence[str] | None = None,
    *,
    method: NormMethod = "auto",
    max_scratch_elements: int = 1 << 25,
    logits_chunk_tokens: int | None = 1024,
    activation_checkpointing: bool | None = None,
    run_forward: ForwardRunner | None = None,
) -> UnitGradNorms:
    """Per-sample, per-unit gradient norms, per-sample losses and target counts, in one forward + backward.

    `batch` holds input_ids, attention_mask and labels ([B, T], labels aligned with input_ids, -100 = not
    trained on; any padding side). `method` forces the direct or ghost reduction (default: the cheaper per
    layer). `logits_chunk_tokens`: positions projected onto the vocabulary at a time (``None``: the model's own
    full logits, as a reference; under FSDP2 the root must stay gathered after its forward, as
    :func:`~prism_lit.distributed.apply_fsdp2` shards it). The model runs in eval mode (restored after); weights and `.grad` are not modified.

    Memory: without checkpointing the probe holds what a training step holds (every unit's input, which autograd
    saves anyway). ``activation_checkpointing`` (``None``: as the model is set up, HF's
    ``gradient_checkpointing_enable``) recomputes each decoder layer in the backward: only the layers' inputs are
    kept, and a unit's input lives only while its layer's backward runs; the norms are the same (the hooks take
    the input from the recomputation and the output gradient from the backward, whichever comes first).
    ``run_forward(fn)`` runs ``fn`` (the forward and the loss) inside a wrapper's forward and returns its result:
    the probe callback uses it under FSDP1, whose root unshards the embeddings and LM head only in its forward.
    """
    if logits_chunk_tokens is not None and logits_chunk_tokens < 1:
        raise ValueError(f"logits_chunk_tokens must be >= 1 or None, got {logits_chunk_tokens}")
    if activation_checkpointing is None:
        activation_checkpointing = _checkpointing_requested(model)
    input_ids, attention_mask, labels = _check_batch(batch)
    targets = find_units(model, units)
    b = input_ids.shape[0]
    device = input_ids.device
    sq = torch.zeros(b, len(targets), dtype=torch.float64, device=device)
    calls_per_unit = 2 if activation_checkpointing else 1  # the forward, then the recomputation
    calls = [0] * len(targets)
    inputs: dict[int, torch.Tensor] = {}
    grads: dict[int, torch.Tensor] = {}
    reduced: set[int] = set()

    def reduce_when_ready(idx: int) -> None:
        if idx in inputs and idx in grads:
            sq[:, idx] = _sq_norms(inputs.pop(idx), grads.pop(idx), method, max_scratch_elements)
            reduced.add(idx)

    def forward_hook(idx: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            calls[idx] += 1
            if calls[idx] > calls_per_unit:
                raise RuntimeError(
                    f"unit '{targets[idx][0]}' ran twice in one forward; shared units are not supported"
                )
            x = args[0] if args else kwargs["input"]
            if x.dim() != 3 or x.shape[0] != b or not output.requires_grad:
                raise RuntimeError(
                    f"unit '{targets[idx][0]}': expected a [B, T, d] input that carries a gradient, got "
                    f"shape {tuple(x.shape)} (requires_grad={output.requires_grad})"
                )
            if calls[idx] == 1:
                output.register_hook(backward_hook(idx))
            if calls[idx] == calls_per_unit:
                # No masking needed: at padded positions δ is exactly 0 (their outputs reach no trained target).
                inputs[idx] = x.detach()
                reduce_when_ready(idx)

        return hook

    def backward_hook(idx: int):
        def hook(grad: torch.Tensor) -> None:
            grads[idx] = grad
            reduce_when_ready(idx)

        return hook

    embeds: list[torch.Tensor] = []

    def embedding_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # The graph starts here: a leaf that needs a gradient, so the backward reaches every unit even when
        # all weights are frozen, and stops before the embedding weight. Hooking (instead of passing
        # inputs_embeds) keeps the embedding inside the model's own forward, where FSDP unshards it.
        leaf = output.detach().requires_grad_(True)
        embeds.append(leaf)
        return leaf

    chunked = logits_chunk_tokens is not None

    def forward_and_loss() -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(graph output, its gradient, loss [B], n_tokens [B]): the backward starts from the graph output."""
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            **({"output_hidden_states": True, "logits_to_keep": 1} if chunked else {}),
        )
        if chunked:
            hidden = out.hidden_states[-1]
            del out
            head = model.get_output_embeddings()
            if type(head.weight).__name__ == "DTensor":
                raise RuntimeError(
                    "the LM head is still sharded after the model's forward (FSDP2 resharded the root), so the "
                    "chunked loss cannot apply it; shard the root with reshard_after_forward=False "
                    "(prism_lit.distributed.apply_fsdp2 does) or pass logits_chunk_tokens=None")
            loss, n_tokens, grad_hidden = _chunked_losses(
                hidden, head, labels, attention_mask, logits_chunk_tokens)
            return hidden, grad_hidden, loss, n_tokens
        loss, n_tokens = per_sample_losses(out.logits, labels, attention_mask)
        # Σ_i L_i: its gradient w.r.t. sample i's activations is ∇L_i (samples do not interact)
        return loss.sum(), None, loss.detach(), n_tokens

    handles = [m.register_forward_hook(forward_hook(i), with_kwargs=True) for i, (_, m) in enumerate(targets)]
    handles.append(model.get_input_embeddings().register_forward_hook(embedding_hook))
    try:
        with ExitStack() as stack:
            stack.enter_context(_eval_mode(model))
            stack.enter_context(torch.enable_grad())
            if activation_checkpointing:
                stack.enter_context(_checkpointed_layers(model))
            graph_out, grad_out, loss, n_tokens = (run_forward or _call)(forward_and_loss)
            if len(embeds) != 1:
                raise RuntimeError(
                    f"the input embedding ran {len(embeds)} times in one forward; expected once"
                )
            # Asking for the embeddings' gradient only: no parameter gradient is computed or accumulated.
            torch.autograd.grad(graph_out, embeds[0], grad_outputs=grad_out)
            del graph_out, grad_out
    finally:
        for h in handles:
            h.remove()
        inputs.clear()
        grads.clear()
    missing = [targets[i][0] for i in range(len(targets)) if i not in reduced]
    if missing:
        raise RuntimeError(
            f"units {missing[:3]} (of {len(missing)}) got no input or no output gradient in the probe's "
            f"forward + backward (activation_checkpointing={activation_checkpointing}): they do not reach the loss"
        )
    bad = ~torch.isfinite(sq).all(dim=1)
    if bool(bad.any()):
        raise FloatingPointError(
            f"non-finite gradient norms for samples {bad.nonzero().flatten().tolist()} of the batch: the "
            "model produced NaN/inf activations or gradients (check the dtype and attention over padding)"
        )
    loss = loss.detach().double()
    loss = torch.where(n_tokens > 0, loss, torch.full((), float("nan"), dtype=loss.dtype, device=device))
    return UnitGradNorms(sq.sqrt(), [name for name, _ in targets], loss, n_tokens)


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def unit_grad_norms(
    model: nn.Module, batch: Mapping[str, Any], units: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[str]]:
    """[B, N] per-sample Frobenius norms ‖∇_{W_u} L_i‖_F and the N unit names (measure_unit_grad_norms)."""
    result = measure_unit_grad_norms(model, batch, units)
    return result.norms, result.unit_names


def per_sample_unit_grad_norms_naive(
    model: nn.Module, batch: Mapping[str, Any], units: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Reference oracle: one sample at a time, padding stripped, HF's own `labels=` loss, plain autograd on
    each unit's `weight.grad`. Slow by design. Only unit weights require grad during the loop; every
    parameter's requires_grad and the units' .grad are restored afterwards."""
    input_ids, attention_mask, labels = _check_batch(batch)
    targets = find_units(model, units)
    weights = [m.weight for _, m in targets]
    unit_ids = {id(w) for w in weights}
    others = [p for p in model.parameters() if id(p) not in unit_ids]
    saved = [(w.requires_grad, w.grad) for w in weights]
    saved_others = [p.requires_grad for p in others]
    norms = torch.zeros(input_ids.shape[0], len(targets), dtype=torch.float64)
    try:
        with _eval_mode(model), torch.enable_grad():
            for p in others:
                p.requires_grad_(False)
            for w in weights:
                w.requires_grad_(True)
            for i in range(input_ids.shape[0]):
                keep = attention_mask[i].bool()
                lab = labels[i][keep]
                if int((lab[1:] != IGNORE_INDEX).sum()) == 0:
                    continue
                for w in weights:
                    w.grad = None
                out = model(input_ids=input_ids[i][keep][None], labels=lab[None], use_cache=False)
                out.loss.backward()
                for u, w in enumerate(weights):
                    if w.grad is not None:
                        norms[i, u] = torch.linalg.vector_norm(w.grad, dtype=torch.float64)
    finally:
        for w, (req, grad) in zip(weights, saved):
            w.grad = grad
            w.requires_grad_(req)
        for p, req in zip(others, saved_others):
            p.requires_grad_(req)
    return norms, [name for name, _ in targets]
