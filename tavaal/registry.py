"""Small name -> factory registries for datasets, models and strategies (raise on duplicates).

Each registry loads the package whose modules fill it (``tavaal.data``, ``tavaal.models``, ``tavaal.strategies``)
the first time it is asked for a name, so code that only checks names (``tavaal.config``) imports none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from tavaal.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """A decorator registry: ``@MODELS.register("resnet18")``; ``MODELS.get("resnet18")``."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        importlib.import_module(self.package)  # registers its entries on first import; a dict lookup after
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        importlib.import_module(self.package)
        return sorted(self._items)


DATASETS: Registry = Registry("dataset", "tavaal.data")
MODELS: Registry = Registry("model", "tavaal.models")
STRATEGIES: Registry = Registry("strategy", "tavaal.strategies")
