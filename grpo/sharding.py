"""Sharded training on PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`), the one place that knows about it.

    sharding = "none"    every rank holds the whole model; gradients are summed (grpo.distributed) — default
    sharding = "fsdp2"   parameters, gradients and optimiser state are split over the ranks: each rank
                         holds 1/K of them, all-gathers a decoder layer just before using it and
                         reduce-scatters its gradient right after (FSDP2, as prime-rl; STYLE.md)

What the trainer sees is the same either way (STYLE.md, "Engines and plumbing"):
    prepare_model(model, sharding)        once, after loading and before the optimiser is built
    policy_module(model)(fn, *args)       runs fn(model, *args) — a forward pass — through the FSDP root
    sampling_context(model)               around `generate`: the weights gathered once per rollout
    full_state_dict(model)                every rank, before rank 0 saves (collective)

[S1] One FSDP unit per decoder layer plus a root. The root is `PolicyModule`, a wrapper whose forward
     calls `fn(model, …)`: our policy forward calls the decoder and the LM-head weight separately
     (grpo.policy [D3]), which on sharded weights fails with "aten.embedding.default got mixed
     torch.Tensor and DTensor" unless it runs inside the root's forward, where the root's own
     parameters (embeddings, final norm, LM head) are gathered.
[S2] Sum, not mean: our losses are normalised by whole-batch counts over all ranks (grpo.aggregation
     [A1]), so the gradient of the global batch is the *sum* of the ranks' gradients, as in
     grpo.distributed [D1].
     FSDP2 averages by default; the divide factor is set to 1 and the reduction forced to a plain SUM
     (gloo's reduce-scatter has averaged instead of summed in some versions, pytorch#162338, and gloo
     has no PREMUL_SUM). tests/test_fsdp.py checks the scale against one process to 1e-10.
[S3] Sampling: `generate` would all-gather every layer at every decoding step. `sampling_context`
     gathers every unit once, keeps them gathered through all forwards (reshard-after-forward off),
     and reshards at the end: no all-gather per decoding step, at the cost of holding the whole model
     (not its gradients or optimiser state) during sampling. A PeftModel root cannot generate sharded.
[S4] Initial weights: every rank loads the same files, and a fresh LoRA adapter is broadcast from rank 0
     before sharding (the scripts call grpo.distributed.broadcast_trainable first), so the shards
     start from one model. There are no replicas to compare afterwards (grpo.distributed
     `check_replicas` skips sharded parameters): each rank holds a different piece.
[S5] The mesh is built on the parameters' device type ("cpu" with gloo; the default would be the
     accelerator).
[S7] Saving: gathering a sharded state dict is collective, so `save_pretrained` on rank 0 alone would
     hang; every rank gathers (`full_state_dict`, `full_optimizer_state`), rank 0 writes the ordinary
     HF/PEFT folder from it. Resume: every rank reads the files and keeps its shard (`load_full_state`).
[S6] QLoRA (bitsandbytes 4-bit) under FSDP2 is fragile upstream (the packed 4-bit weights and their
     quantisation state are not plain tensors to shard): refused when the settings are checked.
"""
from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, Callable

import torch
from torch import nn

SHARDINGS = ("none", "fsdp2")
_ROOTS: "weakref.WeakKeyDictionary[nn.Module, PolicyModule]" = weakref.WeakKeyDictionary()


class PolicyModule(nn.Module):
    """Root module whose forward runs `fn(model, *args, **kwargs)` [S1]; `model` is its only child.

        logp, entropy = policy_module(model)(completion_logprobs, prompt_ids, …, temperature=T)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args, **kwargs):
        out = fn(self.model, *args, **kwargs)
        if isinstance(out, tuple):  # FSDP warns about views returned by a root (in-place ops would skip its hook)
            out = tuple(x.clone() if isinstance(x, torch.Tensor) and x._is_view() else x for x in out)
        return out


def check_sharding(sharding: str, *, load_in_4bit: bool = False) -> str | None:
    """Why `sharding` cannot run with these settings (None if it can) [S6]; called when settings are parsed."""
    if sharding not in SHARDINGS:
        return f"must be one of {', '.join(SHARDINGS)}"
    if sharding == "fsdp2" and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return ("fsdp2 shards over several processes: launch with torchrun --nproc_per_node K (K >= 2); "
                "one process holds the whole model anyway, so use sharding = none")
    if sharding == "fsdp2" and load_in_4bit:
        return ("fsdp2 cannot shard 4-bit (QLoRA) weights reliably (bitsandbytes' packed weights under "
                "FSDP2 are fragile upstream); use sharding = none with load_in_4bit, or a 16/32-bit model")
    return None


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a Hugging Face CausalLM (inside a PeftModel too): one FSDP unit each [S1]."""
    from grpo.policy import causal_lm

    layers = getattr(causal_lm(model).get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(causal_lm(model)).__name__} to shard")
    return list(layers)


def prepare_model(model: nn.Module, sharding: str) -> nn.Module:
    """Shard `model` in place under "fsdp2" (a no-op for "none") and return it; collective under fsdp2.

    Call after loading (and after broadcasting a fresh adapter [S4]) and before building the optimiser:
    the optimiser must see the sharded parameters. The model keeps its class and methods (generate,
    save_pretrained, PEFT's adapters); its parameters become DTensors holding this rank's shard.
    """
    if sharding == "none":
        return model
    problem = check_sharding(sharding)
    if problem:
        raise ValueError(f"sharding {sharding!r}: {problem}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from grpo import distributed as dd

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dd.world_size(),))  # [S5]
    units = [fully_shard(layer, mesh=mesh) for layer in decoder_layers(model)]
    root = fully_shard(PolicyModule(model), mesh=mesh)
    for unit in [*units, root]:  # [S2]
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    # FSDP picks its root as the first unit to run forward; sampling runs the layers before the root ever
    # does, so the root is initialised now (private API; there is no public one in torch 2.13).
    root._get_fsdp_state()._lazy_init()
    _ROOTS[model] = root
    return model


def is_sharded(model: nn.Module) -> bool:
    return model in _ROOTS


def policy_module(model: nn.Module) -> PolicyModule:
    """The module to run a forward pass of `model` through: its FSDP root [S1], or a plain wrapper."""
    return _ROOTS.get(model) or PolicyModule(model)


def _units(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in _ROOTS[model].modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def sampling_context(model: nn.Module):
    """Within the block the whole model is gathered once, for `generate` [S3] (collective under fsdp2;
    a no-op otherwise). Every rank must enter it, even one with nothing to sample."""
    if not is_sharded(model):
        yield
        return
    units = _units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            if unit is not _ROOTS[model]:  # FSDP keeps the root gathered after forward anyway
                unit.set_reshard_after_forward(True, recurse=False)


def _full_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's whole state dict on the CPU of rank 0 ({} on the other ranks) [S7]; None unsharded
    (the model saves its own). Collective under fsdp2: every rank calls it, then rank 0 writes."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k not in tied}  # a tied LM head is saved once, as save_pretrained does


def full_optimizer_state(model: nn.Module, optimizer) -> dict[str, Any] | None:
    """The optimiser's whole state, keyed by parameter name, on the CPU of rank 0 [S7]; None unsharded.
    Collective under fsdp2."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))


def load_full_state(model: nn.Module, weights: dict[str, torch.Tensor], optimizer=None,
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """Load whole (unsharded) weights — names as in `model.state_dict()`, a subset allowed — and optionally a
    `full_optimizer_state` into the sharded model: each rank keeps its shard [S7]. Collective; every rank
    passes the same dicts (each reads the checkpoint files itself)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_full_options(strict=False))
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=_full_options())
