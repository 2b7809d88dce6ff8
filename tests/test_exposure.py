"""What a Ray started by tavaal exposes: every listening socket of its processes is on loopback."""

import ipaddress
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import ray  # (also puts Ray's bundled psutil on sys.path)

from tavaal.backends.ray.connect import SINGLE_MACHINE_ENV, loopback_only

from conftest import ROOT, stop_group

psutil = pytest.importorskip("psutil")

# a run's driver: the project's own connect_ray starts a Ray (no address, no $RAY_ADDRESS, no `ray start` cluster
# in its RAY_TMPDIR), runs one task so a worker process exists, reports, and waits for a line before it stops
DRIVER = """
import json, os, sys
import ray
from tavaal.backends.ray.connect import connect_ray
assert connect_ray(None) is True
worker = ray.get(ray.remote(lambda: os.getpid()).remote())
print(json.dumps({"driver": os.getpid(), "worker": worker, "node_ip": ray.util.get_node_ip_address()}), flush=True)
sys.stdin.readline()
ray.shutdown()
"""


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket bound to loopback
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def listening(pids: list[int]) -> list[tuple[str, int, str, int]]:
    """(process name, pid, address, port) of every listening TCP socket of these processes."""
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            name = p.name()
            conns = p.net_connections(kind="tcp")
        except psutil.Error:  # a worker that exited in between
            continue
        out += [(name, pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise AssertionError(f"the driver did not report within {timeout} s")
    return proc.stdout.readline()


@pytest.mark.slow
def test_a_ray_the_project_starts_listens_on_loopback_only(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="tvlb", dir="/tmp")  # short: Ray's unix socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
    # its own temp dir (no `ray start` cluster of this machine to join) and home (its own token, not ~/.ray's)
    env |= {"RAY_TMPDIR": ray_tmp, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        line = read_line(proc, 180)
        assert line, (tmp_path / "driver.log").read_text()[-3000:]
        info = json.loads(line)
        assert info["node_ip"] == "127.0.0.1"
        found: dict[tuple, tuple] = {}
        for _ in range(3):  # agents open their ports as they come up: look a few times
            tree = psutil.Process(info["driver"]).children(recursive=True)
            pids = [info["driver"]] + [p.pid for p in tree]
            found |= {(pid, ip, port): (name, pid, ip, port) for name, pid, ip, port in listening(pids)}
            time.sleep(1)
        assert info["worker"] in pids
        sockets = sorted(found.values())
        names = {name for name, *_ in sockets}
        # the GCS, the raylet (node manager, object manager), the dashboard agent, the driver and workers all listen
        assert {"gcs_server", "raylet"} <= names and len(sockets) >= 6, sockets
        exposed = [s for s in sockets if not is_loopback(s[2])]
        assert not exposed, f"listening beyond loopback: {exposed}"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        stop_group(proc)
        for pid in pids:  # whatever of that Ray outlived its driver, by process id
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_loopback_only_restores_what_it_changed(monkeypatch):
    """The switch is on only while a Ray starts: the environment and Ray's constant are as before afterwards, so a
    later join of a cluster uses the machine's own address."""
    from ray._private import ray_constants

    monkeypatch.delenv(SINGLE_MACHINE_ENV, raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_only():
        assert os.environ[SINGLE_MACHINE_ENV] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
        if not ray.is_initialized():  # connected, Ray answers with the connected node's address
            from ray._private.services import get_node_ip_address

            assert get_node_ip_address() == "127.0.0.1"
    assert SINGLE_MACHINE_ENV not in os.environ and ray_constants.ENABLE_RAY_CLUSTER is before
    monkeypatch.setenv(SINGLE_MACHINE_ENV, "1")
    with loopback_only():
        pass
    assert os.environ[SINGLE_MACHINE_ENV] == "1"


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
