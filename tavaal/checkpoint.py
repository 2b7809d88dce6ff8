"""Atomic per-stage checkpoints: ``OUT/stage-NNNN/{state.pt, config.json, manifest.json}``.

A stage is written to a temporary directory, fsynced, then renamed into place, so a kill leaves either
the whole stage or nothing. ``manifest.json`` (written last) holds each file's size and SHA-256; a stage
whose files do not match it is reported as damaged, and ``load_latest`` falls back to the newest stage that
is good (the resumed run redoes the stages after it; a damaged directory is moved aside to
``stage-NNNN.damaged-<time>``, never deleted). Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tavaal.core.pool import PoolState
from tavaal.errors import CheckpointError
from tavaal.files import fsync

STAGE_RE = re.compile(r"^stage-(\d{4,})$")
FORMAT_VERSION = 1
PAUSE_ENV = "TAVAAL_TEST_CHECKPOINT_PAUSE"  # seconds between writing state.pt and the manifest (tests only)
_FALLBACK = "--resume uses the newest good stage before it"


@dataclass
class StageCheckpoint:
    stage: int  # the last complete stage
    pool: PoolState  # after that stage's query (its picks carry labeled_at = stage + 1)
    records: list[dict]  # one per completed stage, in order
    states: dict[str, dict]  # model, ranker, vae, discriminator state dicts of that stage
    config: dict[str, Any]  # the resolved config of the run
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. the tracking run id


def stage_dir(out_dir: str | Path, stage: int) -> Path:
    return Path(out_dir) / f"stage-{stage:04d}"


def list_stages(out_dir: str | Path) -> list[int]:
    """Stages with a complete (renamed into place) directory, ascending."""
    p = Path(out_dir)
    if not p.is_dir():
        return []
    return sorted(int(m.group(1)) for d in p.iterdir() if d.is_dir() and (m := STAGE_RE.match(d.name)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_stage(
    out_dir: str | Path,
    stage: int,
    pool: PoolState,
    records: list[dict],
    states: dict[str, dict],
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write stage ``stage`` atomically and return its directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = stage_dir(out, stage)
    for stale in out.glob(f".{final.name}.tmp-*"):  # left by a process killed while writing this stage
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    payload = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "pool": pool.to_dict(),
        "records": records,
        "states": states,
        "meta": dict(meta or {}),
        # every stage re-derives its seeds from (run seed, stage), so these are a record, not a dependency
        "rng": {"torch": torch.get_rng_state()},
    }
    torch.save(payload, tmp / "state.pt")
    if PAUSE_ENV in os.environ:  # tests: widen the window in which a kill lands mid-write
        time.sleep(float(os.environ[PAUSE_ENV]))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    files = {
        name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        for name in ("state.pt", "config.json")
    }
    (tmp / "manifest.json").write_text(json.dumps({"stage": stage, "files": files}, indent=2))
    for name in ("state.pt", "config.json", "manifest.json"):
        fsync(tmp / name)
    if final.exists():  # a stage redone after a fallback: keep the damaged one for inspection
        os.rename(final, out / f"{final.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.rename(tmp, final)
    fsync(out)
    return final


def verify_stage(path: Path) -> None:
    """Raise CheckpointError naming the first file that is missing or does not match the manifest."""
    manifest = path / "manifest.json"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError):
        raise CheckpointError(f"checkpoint {path} has no readable manifest.json; {_FALLBACK}") from None
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing; {_FALLBACK}")
        if f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint file {f} is damaged (size or SHA-256 differs from its manifest); {_FALLBACK}"
            )


def load_stage(path: str | Path) -> StageCheckpoint:
    path = Path(path)
    verify_stage(path)
    try:
        payload = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        config = json.loads((path / "config.json").read_text())
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}); {_FALLBACK}") from None
    return StageCheckpoint(
        int(payload["stage"]),
        PoolState.from_dict(payload["pool"]),
        list(payload["records"]),
        dict(payload["states"]),
        config,
        path,
        dict(payload.get("meta", {})),
    )


def load_latest(out_dir: str | Path, log: Callable[[str], None] | None = None) -> StageCheckpoint:
    """The newest good stage under ``out_dir``; its ``.pool.labeled_at`` is the per-sample stage array.

    A newer stage that fails its manifest check or cannot be read is named through ``log`` (one line each)
    and skipped; CheckpointError when no stage is good.
    """
    stages = list_stages(out_dir)
    if not Path(out_dir).is_dir():
        raise CheckpointError(
            f"checkpoint directory '{out_dir}' does not exist; pass the --out directory of an earlier run to --resume"
        )
    if not stages:
        raise CheckpointError(
            f"no stage checkpoint in '{out_dir}'; pass the --out directory of an earlier run to --resume"
        )
    damaged: list[str] = []
    for stage in reversed(stages):
        try:
            ck = load_stage(stage_dir(out_dir, stage))
        except CheckpointError as e:
            damaged.append(str(e).split(";")[0])
            if log is not None:
                log(f"warning: {damaged[-1]}")
            continue
        if damaged and log is not None:
            log(f"warning: falling back to {ck.path.name}, the newest good checkpoint; the stages after it are redone")
        return ck
    raise CheckpointError(
        f"no good stage checkpoint in '{out_dir}' ({len(damaged)} damaged, the newest: "
        f"{damaged[0]}); start again with a new --out"
    )


def latest_config(out_dir: str | Path) -> dict[str, Any]:
    """The resolved config of the newest stage that passes its manifest check, read without loading the
    stage's weights (``load_latest`` does that, and raises the one-line error when no stage is good)."""
    for stage in reversed(list_stages(out_dir)):
        path = stage_dir(out_dir, stage)
        try:
            verify_stage(path)
            return json.loads((path / "config.json").read_text())
        except (CheckpointError, ValueError):
            continue
    return load_latest(out_dir).config


def prune(out_dir: str | Path, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` stage directories (``keep`` 0: delete none); returns the deleted stages."""
    stages = list_stages(out_dir)
    if keep <= 0 or len(stages) <= keep:
        return []
    old = stages[:-keep]
    for stage in old:
        shutil.rmtree(stage_dir(out_dir, stage))
    return old
