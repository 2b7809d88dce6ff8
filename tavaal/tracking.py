"""The Tracker seam: the loop reports each stage through it (MLflow lives behind it, driver side only)."""
from __future__ import annotations

from typing import Any, Protocol


class Tracker(Protocol):
    def start(self, config: dict[str, Any]) -> None: ...

    def log_stage(self, record: Any) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing (the default for ``python -m tavaal.run`` without a tracking URI)."""

    def start(self, config: dict[str, Any]) -> None:
        pass

    def log_stage(self, record: Any) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass
