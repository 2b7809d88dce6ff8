"""Atomic per-stage checkpoints: ``OUT/stage-NNNN/{state.pt, config.json, manifest.json}``.

A stage is written to a temporary directory, fsynced, then renamed into place, so a kill leaves either
the whole stage or nothing. ``manifest.json`` (written last) holds each file's size and SHA-256; a stage
whose files do not match it is reported as damaged, and ``load_latest`` falls back to the newest stage that
is good (the resumed run redoes the stages after it; a damaged directory is moved aside to
``stage-NNNN.damaged-<time>``, never deleted). Loading uses ``torch.load(weights_only=True)``.

A stage is believed only when it is well-formed *and* belongs here: its manifest has the expected shape and
names exactly the stage's files, the stage number in the manifest and in ``state.pt`` is the directory's,
its records run 0..stage, and it carries the run's identity. ``OUT/run.json`` (written when the run starts)
holds that identity: a random run id, which every stage's manifest and state repeat, and the run's config,
which every stage's config must match except in the fields a resume may change (``RESUMABLE_FIELDS``). So a
stage copied in from another experiment, or copied to another stage number, is treated as damaged. A directory
without ``run.json`` (a Tune trial restoring one stage, or a run from before identities) takes its identity from
its oldest good stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tavaal import faults
from tavaal.config import flatten
from tavaal.core.pool import PoolState
from tavaal.errors import CheckpointError, ConfigError
from tavaal.files import fsync

STAGE_RE = re.compile(r"^stage-(\d{4,})$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
FORMAT_VERSION = 1
STAGE_FILES = ("state.pt", "config.json")  # what a manifest must name, exactly
IDENTITY = "run.json"
_FALLBACK = "--resume uses the newest good stage before it"

# fields that may differ between a run and its resume (they do not change what gets selected: al.stages only
# adds or removes stages at the end, and the loop queries a stage that was the last of a shorter plan)
RESUMABLE_FIELDS = (
    "device",
    "num_threads",
    "backend",
    "al.stages",
    "al.score_batch_size",
    "al.keep_checkpoints",
    "data.data_dir",
    "data.download",
    "data.new_classes",
    "labelstudio",  # where people label the next batch: the picks do not depend on it
)


@dataclass
class StageCheckpoint:
    stage: int  # the last complete stage
    pool: PoolState  # after that stage's query (its picks carry labeled_at = stage + 1)
    records: list[dict]  # one per completed stage, in order
    states: dict[str, dict]  # model, ranker, vae, discriminator state dicts of that stage
    config: dict[str, Any]  # the resolved config of the run
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. the tracking run id


@contextlib.contextmanager
def run_dir_lock(out_dir: str | Path | None) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock``) on the run directory for the whole run, so that two processes never
    write one run's stages (each would take the other's for damaged and move it aside). The lock is on the
    directory itself, so it writes nothing, and the OS drops it when the process dies. A directory created here
    for a run that is then refused, still empty, is removed again."""
    if out_dir is None:
        yield
        return
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is an existing file, not a directory; choose a directory path for the run")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(
            f"cannot create or open the run directory '{out}' ({e.strerror}); choose a writable --out"
        ) from None
    try:
        try:
            import fcntl
        except ImportError:  # no flock on this OS: runs are not guarded against a second process
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(
                    f"run directory '{out}' is in use by another process (a run or resume of it is still going); "
                    "wait for it to end, or choose another --out"
                ) from None
        try:
            yield
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
    finally:
        os.close(fd)  # drops the lock


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


def resumable(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def config_mismatch(saved: dict[str, Any], run: dict[str, Any]) -> str | None:
    """The first field (dotted) where two resolved configs differ outside ``RESUMABLE_FIELDS``, comparing the
    fields both hold (a config from an older version may lack newer fields), else None."""
    a, b = dict(flatten(saved)), dict(flatten(run))
    for key in sorted(set(a) & set(b)):
        if not resumable(key) and a[key] != b[key]:
            return f"{key}: {a[key]!r} here, {b[key]!r} in the run"
    return None


def write_identity(out_dir: str | Path, config: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Write ``OUT/run.json`` (a new run id unless given) and return it; called when a run starts."""
    ident = {"run_id": run_id or uuid.uuid4().hex, "config": config, "format_version": FORMAT_VERSION}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{IDENTITY}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(ident, indent=2, sort_keys=True))
    fsync(tmp)
    os.replace(tmp, out / IDENTITY)
    fsync(out)
    return ident


def read_identity(out_dir: str | Path) -> dict[str, Any] | None:
    """``OUT/run.json``, checked for shape; None when absent. A damaged one is a CheckpointError: without it no
    stage can be shown to belong to the run."""
    path = Path(out_dir) / IDENTITY
    if not path.exists():
        return None
    try:
        ident = json.loads(path.read_text())
    except (OSError, ValueError):
        ident = None
    if (
        not isinstance(ident, dict)
        or not isinstance(ident.get("run_id"), str)
        or not ident["run_id"]
        or not isinstance(ident.get("config"), dict)
    ):
        raise CheckpointError(
            f"{path} (the run's identity) is damaged or not a tavaal run file; restore it from a backup or "
            "start again with a new --out"
        )
    return ident


def run_identity(out_dir: str | Path) -> dict[str, Any] | None:
    """The identity stages are checked against: ``OUT/run.json``, else the oldest stage whose files match its
    manifest (its run id and config; see the module docstring), else None (no stage at all)."""
    ident = read_identity(out_dir)
    if ident is not None:
        return ident
    for stage in list_stages(out_dir):
        path = stage_dir(out_dir, stage)
        try:
            manifest = _verify_files(path, stage)
            config = _read_config(path)
        except CheckpointError:
            continue
        return {"run_id": manifest.get("run_id"), "config": config, "adopted": True}
    return None


def save_stage(
    out_dir: str | Path,
    stage: int,
    pool: PoolState,
    records: list[dict],
    states: dict[str, dict],
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Write stage ``stage`` atomically and return its directory. ``meta["run_id"]`` (the run's identity) goes
    into the manifest and the state. ``replace``: an existing good stage of that number is superseded (a stage
    that was the last of a shorter plan, now with its query) and removed once the new one is in place; otherwise
    an existing one is a damaged stage being redone, and is kept aside."""
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
    faults.point("checkpoint")  # tests: widen the window in which a kill lands mid-write
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    files = {
        name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        for name in ("state.pt", "config.json")
    }
    manifest = {"stage": stage, "run_id": (meta or {}).get("run_id"), "files": files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for name in ("state.pt", "config.json", "manifest.json"):
        fsync(tmp / name)
    old = None
    if final.exists():
        if replace:  # hidden (no stage name) until the new one is in place, then removed
            old = out / f".{final.name}.superseded-{os.getpid()}"
            os.rename(final, old)
        else:  # a stage redone after a fallback: keep the damaged one for inspection
            os.rename(final, out / f"{final.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.rename(tmp, final)
    fsync(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _stage_number(path: Path) -> int:
    m = STAGE_RE.match(path.name)
    if m is None:
        raise CheckpointError(f"checkpoint {path} is not named stage-NNNN; {_FALLBACK}")
    return int(m.group(1))


def _manifest(path: Path, stage: int) -> dict[str, Any]:
    """``manifest.json`` of ``path``, checked for shape: ``{"stage": <the directory's number>, "run_id": str|null,
    "files": {name: {"bytes": int, "sha256": hex}}}`` naming exactly ``STAGE_FILES``."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"checkpoint {path} has no readable manifest.json; {_FALLBACK}") from None

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} has a malformed manifest.json ({what}); {_FALLBACK}")

    if not isinstance(manifest, dict):
        raise bad(f"a {type(manifest).__name__}, not a mapping")
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(STAGE_FILES):
        raise bad(f"'files' must name exactly {', '.join(STAGE_FILES)}")
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or type(entry.get("bytes")) is not int
            or entry["bytes"] < 0
            or not isinstance(entry.get("sha256"), str)
            or SHA256_RE.match(entry["sha256"]) is None
        ):
            raise bad(f"the entry of {name} needs 'bytes' (an integer) and 'sha256' (64 hex digits)")
    if type(manifest.get("stage")) is not int or manifest["stage"] != stage:
        raise CheckpointError(
            f"checkpoint {path} holds stage {manifest.get('stage')!r} in its manifest, not {stage}: a stage "
            f"copied or renamed; {_FALLBACK}"
        )
    if manifest.get("run_id") is not None and not isinstance(manifest["run_id"], str):
        raise bad("'run_id' must be a string")
    return manifest


def _verify_files(path: Path, stage: int) -> dict[str, Any]:
    """The manifest, after checking that every file it names is there with its size and SHA-256."""
    manifest = _manifest(path, stage)
    for name, meta in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing; {_FALLBACK}")
        if f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint file {f} is damaged (size or SHA-256 differs from its manifest); {_FALLBACK}"
            )
    return manifest


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint file {path / 'config.json'} is not a config mapping; {_FALLBACK}")
    return config


def verify_stage(path: Path, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Raise CheckpointError naming the first thing wrong with the stage at ``path``: a manifest of the wrong shape
    or number, a file missing or not matching it, a run id or config not this run's (``identity``, see
    ``run_identity``); returns the stage's config."""
    path = Path(path)
    manifest = _verify_files(path, _stage_number(path))
    config = _read_config(path)
    if identity is not None:
        ours, theirs = identity.get("run_id"), manifest.get("run_id")
        if theirs != ours and not (theirs is None and identity.get("adopted")):
            raise CheckpointError(
                f"checkpoint {path} belongs to another run (run id {theirs}, this run's is {ours}); {_FALLBACK}"
            )
        differs = config_mismatch(config, identity["config"])
        if differs is not None:
            raise CheckpointError(f"checkpoint {path} was made with another config ({differs}); {_FALLBACK}")
    return config


def load_stage(path: str | Path, identity: dict[str, Any] | None = None) -> StageCheckpoint:
    """The stage at ``path``, believed only after ``verify_stage`` and a check of its state's own shape: the stage
    number, the run id, one record per stage 0..stage, and a pool whose labels agree with the last record."""
    path = Path(path)
    config = verify_stage(path, identity)
    stage = _stage_number(path)
    try:
        payload = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        ck = StageCheckpoint(
            int(payload["stage"]),
            PoolState.from_dict(payload["pool"]),
            list(payload["records"]),
            dict(payload["states"]),
            config,
            path,
            dict(payload.get("meta", {})),
        )
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}); {_FALLBACK}") from None
    problem = _state_problem(ck, stage, json.loads((path / "manifest.json").read_text()).get("run_id"))
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is inconsistent ({problem}); {_FALLBACK}")
    return ck


def _state_problem(ck: StageCheckpoint, stage: int, run_id: str | None) -> str | None:
    if ck.stage != stage:
        return f"its state is stage {ck.stage}"
    if ck.meta.get("run_id") != run_id:
        return "its state and manifest name different runs"
    if not all(isinstance(r, dict) for r in ck.records) or [r.get("stage") for r in ck.records] != list(
        range(stage + 1)
    ):
        return f"its records are not stages 0..{stage}"
    last = ck.records[-1]
    expected = last.get("num_labeled", -1) + len(last.get("selected") or [])
    if ck.pool.num_labeled != expected:
        return f"its pool holds {ck.pool.num_labeled} labels, its last record {expected}"
    return None


def load_latest(out_dir: str | Path, log: Callable[[str], None] | None = None) -> StageCheckpoint:
    """The newest good stage under ``out_dir``; its ``.pool.labeled_at`` is the per-sample stage array.

    A newer stage that fails its manifest check or cannot be read is named through ``log`` (one line each)
    and skipped; CheckpointError when no stage is good.
    """
    if not Path(out_dir).is_dir():
        raise CheckpointError(
            f"checkpoint directory '{out_dir}' does not exist; pass the --out directory of an earlier run to --resume"
        )
    stages = list_stages(out_dir)
    if not stages:
        raise CheckpointError(
            f"no stage checkpoint in '{out_dir}'; pass the --out directory of an earlier run to --resume"
        )
    identity = run_identity(out_dir)
    damaged: list[str] = []
    for stage in reversed(stages):
        try:
            ck = load_stage(stage_dir(out_dir, stage), identity)
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
    identity = run_identity(out_dir) if Path(out_dir).is_dir() else None
    for stage in reversed(list_stages(out_dir)):
        try:
            return verify_stage(stage_dir(out_dir, stage), identity)
        except CheckpointError:
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
