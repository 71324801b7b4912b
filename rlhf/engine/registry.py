"""Named callables that a config picks by name: the verifiable rewards (`rewards.REWARDS`), the
ground-truth answer metrics of `evaluate` (`evaluation.ANSWER_METRICS`) and the named model paths
(`loading.MODEL_PATHS`, e.g. 'demo').

The library defines the registries; a world registers its entries from its own module (`@REWARDS.register`).
Each registry names the modules that fill it (`plugins`) and imports them on its first lookup, so a config
that names the demo world's reward ("demo_reward") works without the library importing the demo: importing
`rlhf.engine.rewards` loads no demo module. Pure Python, no torch (the web tier lists reward names).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Mapping[str, F]):
    """Name → callable. `@registry.register` (or `register(fn, name=...)`) adds one; lookups, `in`, iteration
    and `len` see every entry once the `plugins` modules are imported (on the first of them, once)."""

    def __init__(self, kind: str, plugins: tuple[str, ...] = ()):
        self.kind, self.plugins = kind, plugins
        self._entries: dict[str, F] = {}
        self._state = "unloaded"  # → "loading" → "loaded"

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

    def load_plugins(self) -> None:
        """Import the `plugins` modules (once); each registers its entries as it is imported. A plugin that
        looks a name up while it loads sees the entries registered so far; a failed import is retried."""
        if self._state != "unloaded":
            return
        self._state = "loading"
        try:
            for module in self.plugins:
                importlib.import_module(module)
        except BaseException:
            self._state = "unloaded"
            raise
        self._state = "loaded"

    def __getitem__(self, name: str) -> F:
        self.load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}") from None

    def __iter__(self) -> Iterator[str]:
        self.load_plugins()
        return iter(dict(self._entries))

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry of {self.kind}: {sorted(self._entries)}>"
