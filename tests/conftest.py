import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tavaal/__init__.py; before torch loads

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)  # presets are referenced as configs/*.yaml


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tavaal.run ARGS`` in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "tavaal.run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


# a 3-stage synthetic run that takes a few seconds (the smoke preset, trimmed)
TINY = ["--config", "configs/smoke.yaml", "--set", "train.epochs=1", "--set", "vae.iterations=4"]


@pytest.fixture
def tiny_args():
    return list(TINY)
