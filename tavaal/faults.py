"""Fault injection for the reliability tests, through one seam: ``$TAVAAL_FAULTS``.

A run never sets it; a test sets it (for a subprocess, or in the env of a Ray it starts) to make one process fail
at one named point, so that the recovery path it checks is the real one. A comma-separated list of:

  task:EPOCH:DIR    a Ray Train worker kills its own process after task epoch EPOCH, before reporting it, while
                    ``DIR/armed`` exists and ``DIR/fired`` does not (it writes ``DIR/fired``: once per arming)
  vae:ITER:DIR      the same at VAE iteration ITER (an iteration at which the job reports)
  trial:STAGE:DIR   a Tune trial raises after reporting stage STAGE, once (``DIR/fired`` marks it)
  checkpoint:SECS   a stage checkpoint waits SECS between writing its state and its manifest (widens the window
                    in which a kill lands mid-write)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "TAVAAL_FAULTS"


def point(kind: str, step: int = 0) -> None:
    """Fail here if ``$TAVAAL_FAULTS`` names this point (``kind`` at ``step``); otherwise do nothing."""
    for spec in os.environ.get(ENV, "").split(","):
        k, _, rest = spec.partition(":")
        if k != kind:
            continue
        if kind == "checkpoint":
            time.sleep(float(rest))
            continue
        at, _, folder = rest.partition(":")
        if int(at) != step:
            continue
        fired = Path(folder) / "fired"
        if fired.exists() or (kind != "trial" and not (Path(folder) / "armed").exists()):
            continue
        fired.write_text(f"process {os.getpid()} failed on purpose at {kind} {step} (${ENV})\n")
        if kind == "trial":
            raise RuntimeError(f"injected trial fault after stage {step} (${ENV})")
        os._exit(1)  # a worker's real death, not an exception it could catch
