"""Where the heavy steps of a stage run: in-process (``local``) or on Ray (``ray``)."""

from tavaal.backends.base import Backend
from tavaal.backends.local import LocalBackend
from tavaal.config import BackendConfig, DataConfig

__all__ = ["Backend", "LocalBackend", "build_backend"]


def build_backend(cfg: BackendConfig, data_cfg: DataConfig | None = None) -> Backend:
    """The backend a config names; Ray is imported only for ``ray`` (``data_cfg``: where a Parquet pool lives,
    for Ray Data to read it)."""
    if cfg.name == "local":
        return LocalBackend()
    if cfg.name == "ray":
        from tavaal.backends.ray.backend import RayBackend

        return RayBackend(cfg, data_cfg)
    from tavaal.errors import ConfigError

    raise ConfigError(f"unknown backend '{cfg.name}'; choose one of: local, ray")
