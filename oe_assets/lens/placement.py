"""Where a model split over several devices (Hugging Face ``accelerate``'s ``device_map``) keeps its pieces.

A model loaded with a ``device_map`` runs each top-level piece (embeddings, every block, the final
norm) on its own *execution device*; pieces offloaded to the CPU or disk keep their weights on the
``meta`` device and ``accelerate``'s hooks load them for the piece's forward pass only.  The lens
reads weights outside the forward pass, so it loads an offloaded piece's weights for the moment it
needs them (:func:`materialized`) and computes each later block's factors on that block's execution
device (:func:`execution_device`).  Nothing here imports ``accelerate`` unless the model carries its
hooks.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterable, Iterator

import torch

__all__ = ["execution_device", "materialized", "is_dispatched", "owner"]


def is_dispatched(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries ``accelerate``'s device hooks (loaded with a ``device_map``)."""
    return any(hasattr(m, "_hf_hook") for m in model.modules())


def execution_device(model: torch.nn.Module, name: str) -> torch.device:
    """The device module ``name`` of ``model`` computes on: its (or its nearest enclosing module's)
    hook's execution device when the model is dispatched, else the device of its first weight."""
    parts = name.split(".") if name else []
    for k in range(len(parts), -1, -1):  # the module itself, then its ancestors
        hook = getattr(model.get_submodule(".".join(parts[:k])), "_hf_hook", None)
        device = _hook_device(hook)
        if device is not None:
            return device
    module = model.get_submodule(name)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return next(model.parameters()).device


def _hook_device(hook) -> torch.device | None:
    if hook is None:
        return None
    device = getattr(hook, "execution_device", None)
    if device is None:  # a SequentialHook: its first hook that names a device
        for inner in getattr(hook, "hooks", ()):
            device = getattr(inner, "execution_device", None)
            if device is not None:
                break
    if device is None:
        return None
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def owner(model: torch.nn.Module, tensor: torch.Tensor) -> str:
    """The name of the module of ``model`` that holds parameter ``tensor`` ("" when none does)."""
    for name, module in model.named_modules():
        if any(p is tensor for p in module.parameters(recurse=False)):
            return name
    return ""


@contextmanager
def materialized(model: torch.nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Within the block, the weights of modules ``names`` (and of the modules that contain them or
    that they contain) are real tensors on their execution devices, also where ``accelerate`` keeps
    them offloaded on the CPU or disk; afterwards they are offloaded again.  A model without
    offloaded pieces is left as it is."""
    names = [n for n in names if n is not None]
    if not is_dispatched(model):
        yield
        return
    from accelerate.utils import align_module_device, has_offloaded_params

    chosen: dict[int, torch.nn.Module] = {}  # by id: each module once, in model order within a name
    for name in names:
        parts = name.split(".") if name else []
        related = [model.get_submodule(".".join(parts[:k])) for k in range(len(parts))]  # its ancestors
        related += [m for _, m in model.get_submodule(name).named_modules()]  # itself and what it contains
        for module in related:
            if has_offloaded_params(module):
                chosen.setdefault(id(module), module)
    with ExitStack() as stack:
        for module in chosen.values():
            stack.enter_context(align_module_device(module))
        yield
