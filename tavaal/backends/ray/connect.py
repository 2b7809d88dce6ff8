"""Joining (or starting) Ray with the settings tavaal tunes: one helper for the Ray backend and the sweep driver.

Token authentication (Ray >= 2.52) is Ray's own: a Ray started here turns it on and reads (or makes)
``~/.ray/auth_token``; a cluster is joined with the token this process's environment names, ``RAY_AUTH_MODE=token``
and ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (a job submitted to the cluster inherits
the head's). A cluster that refuses this process is a one-line ConfigError that says so.

A Ray started here is for this machine only: every process of it (GCS, raylet, object manager, dashboard and
runtime-env agents, metrics export, workers) listens on 127.0.0.1 (``loopback_only``). A cluster that other
machines join is started deliberately, with ``ray start --head``, and joined by address; joining is unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from tavaal.errors import ConfigError
from tavaal.redact import redact

# OMP passive waiting: see tavaal/__init__.py. Ray Train's controller polls its workers every 2 s by default, so
# every job ended seconds after its last report, and it takes reports off each worker's queue of one only when it
# polls, so a job of many epoch reports waited on every poll; polling every 0.1 s removes most of both waits
# (benchmarks/results/stage-time-2026-12-01-sync-reports.md)
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}

TOKEN_WHERE = "RAY_AUTH_TOKEN, or in a file named by RAY_AUTH_TOKEN_PATH (ray get-auth-token on the head prints it)"


def local_system_config(num_cpus: int | None = None) -> dict:
    """Ray settings for a Ray that tavaal starts itself: keep idle worker processes alive.

    Ray kills idle workers beyond ``num_workers_soft_limit`` (default: the CPU count) after a second, and it
    counts the processes of actors too. A stage's Ray Train workers then cost the scoring tasks their warm
    processes (torch imported, data set resolved: seconds to rebuild on a small machine). A cluster started with
    ``ray start`` gets the same with ``RAY_num_workers_soft_limit=<n>`` in the environment of ``ray start``.
    """
    cpus = num_cpus or os.cpu_count() or 1
    return {"num_workers_soft_limit": max(8, 4 * cpus)}


# Ray's switch for a single-machine Ray (its default on macOS and Windows): the node's address is 127.0.0.1
# instead of the machine's outward address, and every Ray process binds its ports to the node's address
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a new local Ray starts inside this block, its node address is 127.0.0.1, so its processes listen on
    loopback only, not on every interface: ``with loopback_only(): ray.init(..., _node_ip_address=LOOPBACK)``.

    Ray reads the switch (``SINGLE_MACHINE_ENV=0``) from the environment when it is imported, so this sets it for
    the processes the new Ray starts (they inherit the environment) and, in this already-imported process, the
    constant Ray derived from it (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, Ray 2.60); both go back to
    what they were afterwards. Only for starting a Ray: joining a cluster must keep the machine's own address.
    """
    from ray._private import ray_constants

    env_before = os.environ.get(SINGLE_MACHINE_ENV)
    const_before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = const_before
        if env_before is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = env_before


def connect_ray(address: str | None, log_to_driver: bool = False) -> bool:
    """Join the Ray at ``address`` (else ``$RAY_ADDRESS``, else one that ``ray start`` began on this machine), or
    start one here.

    Returns True if this call connected, False if the process already was. Workers get ``WORKER_ENV``; a Ray
    started here also ``local_system_config()`` (a cluster is configured by its own ``ray start``) and listens on
    loopback only (``loopback_only``).
    """
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return False
    start_local = _starts_here(address)
    where = redact(
        address or os.environ.get("RAY_ADDRESS") or ("this machine" if start_local else "the `ray start` cluster")
    )
    local: dict[str, Any] = {"_system_config": local_system_config(), "_node_ip_address": LOOPBACK}
    try:
        with loopback_only() if start_local else contextlib.nullcontext():
            ray.init(
                address=address,
                runtime_env={"env_vars": WORKER_ENV},
                include_dashboard=False,
                log_to_driver=log_to_driver,
                configure_logging=False,
                **(local if start_local else {}),
            )
    except AuthenticationError:  # RAY_AUTH_MODE=token here, but no token in this process's environment
        raise ConfigError(
            f"Ray at {where} asks for an authentication token and none was found; put the cluster's "
            f"token in {TOKEN_WHERE}"
        ) from None
    except ConnectionError as e:  # joining: a missing or wrong token reads the same as no Ray at the address
        if start_local:
            raise
        raise ConfigError(
            f"cannot join the Ray cluster at {where} ({' '.join(str(e).split())[:160]}); check the "
            f"address and, if it uses token authentication, set RAY_AUTH_MODE=token and the "
            f"cluster's token in {TOKEN_WHERE}"
        ) from None
    return True


def starts_local_ray(address: str | None) -> bool:
    """Whether ``connect_ray(address)`` would start a new Ray on this machine (this process is not connected yet,
    and there is no cluster to join)."""
    import ray

    return not ray.is_initialized() and _starts_here(address)


def _starts_here(address: str | None) -> bool:
    """Whether ``ray.init(address)`` starts a new Ray: no address, no ``$RAY_ADDRESS`` and no cluster that ``ray start``
    began on this machine (ray.init joins that one, and refuses a ``_system_config`` then)."""
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return address == "local"
    from ray._private import services  # ray.init's own lookup (Ray 2.60)

    return services.canonicalize_bootstrap_address(None) is None  # type: ignore[arg-type]  # Ray documents None
