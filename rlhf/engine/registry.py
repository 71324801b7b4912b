"""Named callables that a config picks by name: the verifiable rewards (`rewards.REWARDS`) and the
ground-truth answer metrics of `evaluate` (`evaluation.ANSWER_METRICS`).

The library defines the registries; a world's rewards register themselves from their own module with
`@REWARDS.register`. The modules of `PLUGINS` are imported on the first lookup of any registry, so a config
that names a world's reward ("demo_reward") works without the library importing that world: importing
`rlhf.engine.rewards` loads no demo module. Pure Python, no torch (the web tier lists these names).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

F = TypeVar("F", bound=Callable)

# Modules that register entries when imported; loaded on the first lookup, once. The demo world's verifiable
# rewards and answer metrics live in demo/rewards.py; another world adds its module here.
PLUGINS: tuple[str, ...] = ("rlhf.engine.demo.rewards",)

_state = "unloaded"  # → "loading" → "loaded"


def load_plugins() -> None:
    """Import every module of `PLUGINS` (once); each registers its entries as it is imported. A plugin that
    looks a name up while it loads sees the entries registered so far; a failed import is retried next time."""
    global _state
    if _state != "unloaded":
        return
    _state = "loading"
    try:
        for module in PLUGINS:
            importlib.import_module(module)
    except BaseException:
        _state = "unloaded"
        raise
    _state = "loaded"


class Registry(Mapping[str, F]):
    """Name → callable. `@registry.register` (or `register(fn, name=...)`) adds one; lookups, `in`, iteration
    and `len` see every entry once the plugin modules are loaded."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, fn: F | None = None, *, name: str | None = None):
        """Register `fn` under `name` (default its `__name__`); usable as a decorator, with or without
        arguments. Returns `fn` unchanged. A second callable under a taken name is an error."""

        def add(f: F) -> F:
            key = name or f.__name__
            if key in self._entries and self._entries[key] is not f:
                raise ValueError(f"{self.kind} {key!r} is already registered ({self._entries[key]!r})")
            self._entries[key] = f
            return f

        return add if fn is None else add(fn)

    def __getitem__(self, name: str) -> F:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}") from None

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(dict(self._entries))

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry of {self.kind}: {sorted(self._entries)}>"
