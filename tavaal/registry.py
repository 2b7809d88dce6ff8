"""Small name -> factory registries for datasets, models and strategies (raise on duplicates)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from tavaal.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """A decorator registry: ``@MODELS.register("resnet18")``; ``MODELS.get("resnet18")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")
STRATEGIES: Registry = Registry("strategy")
