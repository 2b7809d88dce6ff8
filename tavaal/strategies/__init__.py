"""Query strategies, one file each, registered by name in ``tavaal.registry.STRATEGIES``."""

from tavaal.registry import STRATEGIES
from tavaal.strategies import coreset, entropy, lloss, random, tavaal, vaal  # noqa: F401 (registration)
from tavaal.strategies.base import QueryContext, QueryResult, Strategy


def build_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)()


__all__ = ["QueryContext", "QueryResult", "Strategy", "build_strategy", "STRATEGIES"]
