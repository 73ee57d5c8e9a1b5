"""A small named hook registry over a ``torch.nn.Module`` tree.

Hooks are registered by module-name pattern, where ``*`` stands for one numeric path component
(a layer index), e.g. ``"vision_model.encoder.layers.*.layer_norm1"``.  Every registered hook
remembers whether it fired; :meth:`HookRegistry.check_all_fired` raises naming every hook that
never ran, which catches renamed modules and wrong layer indices instead of silently returning
empty captures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

__all__ = ["HookRegistry", "HookNeverFired"]


class HookNeverFired(RuntimeError):
    """Raised when registered hooks did not run during a forward pass."""


def _pattern_to_regex(pattern: str) -> re.Pattern:
    parts = [r"(\d+)" if p == "*" else re.escape(p) for p in pattern.split(".")]
    return re.compile(r"\.".join(parts) + r"\Z")


@dataclass
class _Entry:
    name: str
    index: tuple[int, ...]
    handle: torch.utils.hooks.RemovableHandle
    fired: bool = False


@dataclass
class HookRegistry:
    """Named forward / forward-pre hooks, with a check that every one of them fired.

    Use as a context manager so the hooks are removed even when the forward pass fails::

        with HookRegistry(model) as hooks:
            hooks.add_pre("encoder.layers.*.layer_norm1", record, indices=range(3, 12))
            model(x)
            hooks.check_all_fired()
    """

    model: torch.nn.Module
    _entries: list[_Entry] = field(default_factory=list)

    def _resolve(self, pattern: str, indices: Iterable[int] | None) -> list[tuple[str, tuple[int, ...], torch.nn.Module]]:
        regex = _pattern_to_regex(pattern)
        wanted = None if indices is None else {int(i) for i in indices}
        found = []
        for name, module in self.model.named_modules():
            m = regex.match(name)
            if m is None:
                continue
            index = tuple(int(g) for g in m.groups())
            if wanted is not None and (not index or index[0] not in wanted):
                continue
            found.append((name, index, module))
        if not found:
            raise KeyError(
                f"hook pattern {pattern!r} matches no module of {type(self.model).__name__}"
                + ("" if wanted is None else f" at indices {sorted(wanted)}")
            )
        if wanted is not None:
            missing = wanted - {ix[0] for _, ix, _ in found}
            if missing:
                raise KeyError(f"hook pattern {pattern!r} has no module at indices {sorted(missing)}")
        return found

    def _add(self, pattern, fn, indices, pre: bool) -> list[str]:
        names = []
        for name, index, module in self._resolve(pattern, indices):
            entry = _Entry(name=name, index=index, handle=None)  # type: ignore[arg-type]

            if pre:
                def hook(mod, args, kwargs, _e=entry):
                    _e.fired = True
                    fn(_e.name, _e.index, mod, args, kwargs)

                entry.handle = module.register_forward_pre_hook(hook, with_kwargs=True)
            else:
                def hook(mod, args, kwargs, output, _e=entry):
                    _e.fired = True
                    fn(_e.name, _e.index, mod, args, kwargs, output)

                entry.handle = module.register_forward_hook(hook, with_kwargs=True)
            self._entries.append(entry)
            names.append(name)
        return names

    def add_pre(self, pattern: str, fn: Callable, indices: Iterable[int] | None = None) -> list[str]:
        """Call ``fn(name, index, module, args, kwargs)`` before each matching module runs."""
        return self._add(pattern, fn, indices, pre=True)

    def add_post(self, pattern: str, fn: Callable, indices: Iterable[int] | None = None) -> list[str]:
        """Call ``fn(name, index, module, args, kwargs, output)`` after each matching module runs."""
        return self._add(pattern, fn, indices, pre=False)

    def check_all_fired(self) -> None:
        silent = [e.name for e in self._entries if not e.fired]
        if silent:
            raise HookNeverFired(
                "these hooks never fired during the forward pass (renamed modules or a model "
                f"that bypasses them?): {', '.join(silent)}"
            )

    def remove(self) -> None:
        for e in self._entries:
            e.handle.remove()
        self._entries.clear()

    def __enter__(self) -> "HookRegistry":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
