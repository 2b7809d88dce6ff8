"""Where the heavy steps of a stage run: in-process (``local``) or on Ray (``ray``)."""
from tavaal.backends.base import Backend
from tavaal.backends.local import LocalBackend

__all__ = ["Backend", "LocalBackend", "build_backend"]


def build_backend(name: str) -> Backend:
    if name == "local":
        return LocalBackend()
    from tavaal.errors import ConfigError

    raise ConfigError(f"unknown backend '{name}'; choose one of: local")
