"""The manual oracle's files: the batch people annotate, the answers they give, and the labels kept.

Every file lives under the run's output directory ``OUT`` and is written to a temporary name, fsynced and renamed
into place, so a kill leaves either the old file or the new one:

  to_label/stage_K.csv, .parquet   the batch to annotate before stage K: id, path, label (empty); in the CSV
                                   a cell a spreadsheet would run as a formula is quoted (``csvsafe``)
  to_label/stage_K/                the images of that batch, when the pool stores encoded bytes
  to_label/config.json             the run's resolved config (a resume before the first checkpoint reads it)
  labels/stage_K.json              the labels of that batch, validated, written once and never changed

A labels file people return is validated in full before anything is written: the first problem is a one-line
DataError naming the file and line. Nothing here decides when to ask; that is the oracle's (``tavaal/oracle.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import UnidentifiedImageError

from tavaal import checkpoint
from tavaal.core.pool import PoolState
from tavaal.csvsafe import uncell, write_csv
from tavaal.data.base import ALData, Split
from tavaal.data.encoded import EncodedImages, decode_image, image_suffix
from tavaal.errors import CheckpointError, ConfigError, DataError
from tavaal.files import atomic_write

REQUEST_DIR, LABELS_DIR = "to_label", "labels"


def pending(pool: PoolState, data: ALData) -> np.ndarray:
    """Positions that are labeled in the AL state but whose label nobody has given yet (ascending)."""
    return np.flatnonzero((pool.labeled_at >= 0) & ~data.known_rows)


def row_ids(data: ALData, positions: np.ndarray) -> list[str]:
    """The stable ids of pool positions, as strings (the position itself for data sets without ids)."""
    ids = data.train.ids
    return [str(i) for i in (positions if ids is None else ids[positions])]


# ---------------------------------------------------------------- files: config


def run_config(out_dir: str | Path) -> dict:
    """The resolved config of the run in ``out_dir``: its newest checkpoint's, or the one saved with the
    stage-0 request when no stage has run yet."""
    saved = Path(out_dir) / REQUEST_DIR / "config.json"
    if not checkpoint.list_stages(out_dir) and saved.is_file():
        return json.loads(saved.read_text())
    return checkpoint.latest_config(out_dir)


def has_initial_request(out_dir: str | Path) -> bool:
    return (Path(out_dir) / REQUEST_DIR / "stage_0.csv").is_file()


# ---------------------------------------------------------------- the request: the batch to annotate


def write_request(out_dir: str | Path, stage: int, data: ALData, positions: np.ndarray, config: dict) -> Path:
    """Write ``to_label/stage_K.{csv,parquet}`` (and the images when the pool holds bytes); returns the CSV.

    An existing request is left as it is: people may be filling in its label column right now.
    """
    req = Path(out_dir) / REQUEST_DIR
    csv_path = req / f"stage_{stage}.csv"
    if not csv_path.is_file():
        check_images(data, positions)  # before anything is written: nothing unreadable is offered to annotators
    atomic_write(req / "config.json", lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True)))
    if csv_path.is_file():
        return csv_path
    ids = row_ids(data, positions)
    paths = _image_paths(req / f"stage_{stage}", data, positions)
    table = pa.table({"id": ids, "path": paths, "label": pa.nulls(len(ids), pa.string())})
    atomic_write(req / f"stage_{stage}.parquet", lambda p: pq.write_table(table, p))
    # people open this file in a spreadsheet: csvsafe quotes every cell it would run as a formula
    rows = [[i, path, ""] for i, path in zip(ids, paths)]
    atomic_write(csv_path, lambda p: write_csv(p, ["id", "path", "label"], rows))
    return csv_path


def check_images(data: ALData, positions: np.ndarray) -> None:
    """Decode the images of ``positions`` (a DataError naming the row and id if one is not an image)."""
    if not hasattr(data.train.x, "encoded"):
        return
    x = cast(EncodedImages, data.train.x)
    for pos, rid in zip(positions, row_ids(data, positions)):
        try:
            decode_image(x.encoded([pos])[0], x.size, x.channels)
        except (UnidentifiedImageError, OSError, ValueError, TypeError) as e:
            row = int(x.source_rows([pos])[0])
            raise DataError(
                f"row {row} (id '{rid}') of {x.where} is not a readable image ({type(e).__name__}); "
                "replace the image or drop that row, then run the same command again"
            ) from None


def _image_paths(folder: Path, data: ALData, positions: np.ndarray) -> list[str]:
    """The images' own paths, or copies of the encoded bytes written under ``folder`` ("" if neither)."""
    if not hasattr(data.train.x, "encoded"):
        return [""] * positions.size
    x = cast(EncodedImages, data.train.x)  # an image column (or anything with its paths and encoded)
    paths = x.paths(positions)
    if paths is not None:
        return paths
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = []
    for k, (i, b) in enumerate(zip(row_ids(data, positions), x.encoded(positions))):
        names.append(f"{k:05d}_{re.sub(r'[^A-Za-z0-9._-]', '_', i)[:80]}{image_suffix(b)}")
        (tmp / names[-1]).write_bytes(b)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return [str((folder / n).resolve()) for n in names]


def request_message(csv_path: Path, out_dir: str | Path, stage: int, n: int, data: ALData) -> str:
    classes = ", ".join(data.class_names) if data.class_names else "(none yet)"
    what = "images" if hasattr(data.train.x, "encoded") else "rows"  # an embeddings pool has no images to show
    return (
        f"stage {stage} needs labels for {n} {what} (manual oracle). Fill in the 'label' column of {csv_path} "
        f"with one of: {classes}; then continue with:\n"
        f"  python -m tavaal.run --resume {out_dir} --labels {csv_path}"
    )


# ---------------------------------------------------------------- the answers: validate all, then store


def read_labels(
    file: str | Path,
    requested: list[str],
    pool_ids: set[str],
    classes: tuple[str, ...],
    allow_new: bool,
    request: Path,
    answered: Collection[str] = (),
) -> dict[str, str]:
    """``{id: class name}`` from the file people return: a CSV with columns ``id`` and ``label`` (others are
    ignored), or Label Studio's JSON export of the tasks file (``.json``; ``tavaal/labelstudio.py``).

    Every requested id must get exactly one label, and nothing else may be labeled; a label must be a known
    class (or anything, with ``allow_new``). The first problem is a one-line DataError naming the file and line
    (or task). A Label Studio export may hold the tasks of earlier stages too: those of ids ``answered`` before
    are passed over.
    """
    f = Path(file)
    fix = f"fix the file and run the same command again (the request is {request})"
    if f.suffix.lower() == ".json":
        from tavaal.labelstudio import export_answers  # Label Studio's export: the same checks follow

        answers = export_answers(f, request, fix)
        return check_answers(answers, requested, pool_ids, classes, allow_new, fix, f"labels file '{f}'", answered)
    answers, exported = _csv_answers(f, request, fix, pool_ids)
    skip = answered if exported else None  # Label Studio's CSV export holds the earlier stages' tasks too
    return check_answers(answers, requested, pool_ids, classes, allow_new, fix, f"labels file '{f}'", skip)


Answer = tuple[str, str, str]  # where in the file (e.g. "line 7"), the row id, the label given ("" if none)


def check_answers(
    answers: list[Answer],
    requested: list[str],
    pool_ids: set[str],
    classes: tuple[str, ...],
    allow_new: bool,
    fix: str,
    source: str,
    skip: Collection[str] | None = None,
) -> dict[str, str]:
    """``{id: class name}`` for the ``requested`` ids from ``answers``, each checked: the id is in the pool and was
    requested (ids in ``skip``, answered at an earlier stage, are passed over), it is labeled once, the label is
    a known class (or anything, with ``allow_new``); and no requested id is left without a label. The first
    problem is a one-line DataError naming ``source`` and where in it."""
    wanted, known = set(requested), set(classes)
    out: dict[str, str] = {}
    first: dict[str, str] = {}
    for at, rid, label in answers:
        where = f"{source} {at}"
        if rid not in pool_ids:
            raise DataError(f"{where}: id '{rid}' is not in the pool; {fix}")
        if rid not in wanted:
            if skip is not None and rid in skip:
                continue
            raise DataError(
                f"{where}: id '{rid}' was not requested (only the ids of the request may be labeled); {fix}"
            )
        if rid in out:
            raise DataError(f"{where}: id '{rid}' is labeled twice (first on {first[rid]}); {fix}")
        if not label:
            raise DataError(f"{where}: id '{rid}' has no label; every requested id needs one; {fix}")
        if label not in known and not allow_new:
            raise DataError(
                f"{where}: label '{label}' is not a known class ({', '.join(classes)}); correct "
                "it, or allow new classes with --set data.new_classes=true"
            )
        out[rid], first[rid] = label, at
    missing = [i for i in requested if i not in out]
    if missing:
        raise DataError(
            f"{source} has no {'task' if skip is not None else 'line'} for {len(missing)} of the "
            f"{len(requested)} requested ids (e.g. '{missing[0]}'); every requested id needs a label; {fix}"
        )
    return out


def _csv_answers(f: Path, request: Path, fix: str, pool_ids: set[str]) -> tuple[list[Answer], bool]:
    """The (line, id, label) of every non-blank row of a labels CSV with columns ``id`` and ``label``, and whether
    it is Label Studio's CSV export (a ``tavaal_id`` column)."""
    rows = _csv_rows(f, request, fix)
    header = rows[0][1] if rows else None
    if header is None or not any(h.strip() for h in header):
        raise DataError(
            f"labels file '{f}' is empty; expected a header line with 'id' and 'label' and one "
            f"line per requested id; {fix}"
        )
    cols = [h.strip() for h in header]
    exported = "tavaal_id" in cols
    if exported:  # Label Studio's CSV export: its 'id' is Label Studio's task number, not the pool's
        if "id" in cols:
            cols[cols.index("id")] = "label_studio_task"
        cols[cols.index("tavaal_id")] = "id"
    if "id" not in cols or "label" not in cols:
        raise DataError(
            f"labels file '{f}' line 1: columns are {', '.join(cols)}; expected columns 'id' and 'label'; {fix}"
        )
    i_id, i_label = cols.index("id"), cols.index("label")
    out: list[Answer] = []
    for line, row in rows[1:]:
        if not any(v.strip() for v in row):
            continue  # blank line
        if len(row) <= max(i_id, i_label):
            raise DataError(
                f"labels file '{f}' line {line}: has {len(row)} fields, expected at least "
                f"{max(i_id, i_label) + 1}; {fix}"
            )
        # the request quoted ids a spreadsheet would run (csvsafe); spaces a spreadsheet added are dropped
        # unless they are part of the id itself
        rid = uncell(row[i_id]) if uncell(row[i_id]) in pool_ids else uncell(row[i_id].strip())
        out.append((f"line {line}", rid, row[i_label].strip()))
    return out, exported


def answer_bytes(f: Path, wanted: str) -> bytes:
    """The bytes of the labels file ``f``; a directory, a missing file or one that cannot be read is a one-line
    DataError that says to pass ``wanted`` instead."""
    if f.is_dir():
        raise DataError(f"labels file '{f}' is a directory; pass {wanted}")
    if not f.is_file():
        raise DataError(f"labels file '{f}' not found; pass {wanted}")
    try:
        return f.read_bytes()
    except OSError as e:
        raise DataError(
            f"labels file '{f}' cannot be read ({e.strerror or type(e).__name__}); make it readable, or pass a "
            f"copy of {wanted}"
        ) from None


def _csv_rows(f: Path, request: Path, fix: str) -> list[tuple[int, list[str]]]:
    """Every row of the CSV file ``f`` with its line number; a file that cannot be read as UTF-8 CSV is a
    one-line DataError naming the file and the problem."""
    raw = answer_bytes(f, f"the filled-in request CSV, e.g. --labels {request}")
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a byte order mark
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"labels file '{f}' line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 text; save the file as "
            f"CSV UTF-8 (in a spreadsheet: 'CSV UTF-8' or encoding 'Unicode (UTF-8)'); {fix}"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:
        line = rows[-1][0] + 1 if rows else 1  # where the record that failed starts
        if "field larger than field limit" in str(e):
            raise DataError(
                f"labels file '{f}' line {line}: a field is longer than csv's limit of {csv.field_size_limit()} "
                f"characters (an unclosed quote joins the lines after it into one field); {fix}"
            ) from None
        raise DataError(f"labels file '{f}' line {line}: not valid CSV ({e}); {fix}") from None
    return rows


def ingest_labels(
    file: str | Path, out_dir: str | Path, stage: int, data: ALData, positions: np.ndarray, allow_new: bool
) -> ALData:
    """Validate the whole labels file for the pending ``positions``, store it as ``labels/stage_K.json``,
    and return the data set with those labels. A bad file raises before anything is written."""
    target = labels_target(out_dir, stage)
    requested, pool_ids, answered = answer_ids(data, positions)
    request = Path(out_dir) / REQUEST_DIR / f"stage_{stage}.csv"
    labels = read_labels(file, requested, pool_ids, data.class_names, allow_new, request, answered)
    return store_labels(target, stage, labels, str(Path(file).resolve()), data, allow_new)


def answer_ids(data: ALData, positions: np.ndarray) -> tuple[list[str], set[str], set[str]]:
    """What answers are checked against: the ids requested (of ``positions``), every id of the pool, and the ids
    answered before (the rows whose label is known)."""
    every = row_ids(data, np.arange(len(data.train)))
    return row_ids(data, positions), set(every), {every[i] for i in np.flatnonzero(data.known_rows)}


def labels_target(out_dir: str | Path, stage: int) -> Path:
    """``labels/stage_K.json``, which must not exist yet: the rows it would label are still pending."""
    target = Path(out_dir) / LABELS_DIR / f"stage_{stage}.json"
    if target.exists():
        raise CheckpointError(
            f"{target} exists but the rows it labels are still pending; it does not belong to "
            "this run's data: move it away and resume again"
        )
    return target


def store_labels(
    target: Path, stage: int, labels: dict[str, str], source: str, data: ALData, allow_new: bool
) -> ALData:
    """Write the validated ``labels`` of stage ``stage`` to ``target`` (once) and return the data with them."""
    record = {"stage": stage, "source": source, "labels": labels}
    atomic_write(target, lambda p: p.write_text(json.dumps(record, indent=1)))
    return with_labels(data, labels, allow_new, str(target))


def stored_labels(out_dir: str | Path | None) -> list[tuple[str, dict[str, str]]]:
    """Every ``labels/stage_K.json`` of the run, in stage order: ``[(file, {id: class name})]``."""
    folder = Path(out_dir) / LABELS_DIR if out_dir is not None else None
    if folder is None or not folder.is_dir():
        return []
    files = sorted(folder.glob("stage_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    out = []
    for p in files:
        try:
            out.append((str(p), dict(json.loads(p.read_text())["labels"])))
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(
                f"labels file {p} cannot be read; restore it (or delete it to be asked for those labels again)"
            ) from None
    return out


def with_labels(data: ALData, labels: dict[str, str], allow_new: bool, source: str) -> ALData:
    """``data`` with the given ``{id: class name}`` set in the pool's targets; new classes are appended."""
    classes = list(data.class_names)
    index = {c: i for i, c in enumerate(classes)}
    position = {k: i for i, k in enumerate(row_ids(data, np.arange(len(data.train))))}
    y = data.train.y.clone()
    for rid, name in labels.items():
        if rid not in position:
            raise CheckpointError(
                f"{source} labels id '{rid}', which is not in the pool; resume with the data the run started with"
            )
        if name not in index:
            if not allow_new:
                raise ConfigError(
                    f"{source} uses class '{name}', which is not in the class list; resume with "
                    "--set data.new_classes=true"
                )
            index[name] = len(classes)
            classes.append(name)
        y[position[rid]] = index[name]
    train = Split(data.train.x, y, data.train.ids)
    return dataclasses.replace(data, train=train, num_classes=len(classes), class_names=tuple(classes))


def apply_stored_labels(data: ALData, out_dir: str | Path | None, allow_new: bool) -> ALData:
    """``data`` with every label people gave this run so far (``labels/*.json``, in stage order)."""
    stored = stored_labels(out_dir)
    if not stored:
        return data
    assert out_dir is not None  # stored_labels finds files only in a folder
    merged = {rid: name for _, labels in stored for rid, name in labels.items()}
    return with_labels(data, merged, allow_new, f"{Path(out_dir) / LABELS_DIR}/")
