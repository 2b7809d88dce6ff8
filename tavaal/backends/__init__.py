"""Where the heavy steps of a stage run: in-process (``local``) or on Ray (``ray``)."""
from tavaal.backends.base import Backend
from tavaal.backends.local import LocalBackend
from tavaal.config import BackendConfig

__all__ = ["Backend", "LocalBackend", "build_backend"]


def build_backend(cfg: BackendConfig) -> Backend:
    """The backend a config names; Ray is imported only for ``ray``."""
    if cfg.name == "local":
        return LocalBackend()
    if cfg.name == "ray":
        from tavaal.backends.distributed import RayBackend

        return RayBackend(cfg)
    from tavaal.errors import ConfigError

    raise ConfigError(f"unknown backend '{cfg.name}'; choose one of: local, ray")
