"""Label Studio as the oracle (``al.oracle: labelstudio``): each batch becomes Label Studio tasks, and its
annotations come back as the batch's labels, with every check the manual oracle makes.

Two ways, one set of files. Without ``labelstudio.url`` the run writes, beside the manual oracle's request,

  to_label/stage_K.labelstudio.json   the batch as Label Studio tasks: the image (none for an embeddings pool),
                                      ``tavaal_id``, ``tavaal_stage``, ``tavaal_run`` (this run's mark), and the
                                      task model's prediction with its probability as a pre-annotation
  to_label/labelstudio.xml            the labeling interface: one choice per class

and stops; people import the tasks into a project set up with that interface, label them, export the project
as JSON and resume with ``--labels EXPORT.json``. With ``labelstudio.url`` (and the token in
``LABEL_STUDIO_API_KEY``) the run creates the project and imports the tasks itself, and on resume (or while it
waits, ``labelstudio.wait_minutes``) reads the annotations through Label Studio's HTTP API.

The API is spoken with the standard library (``urllib``): the ``label-studio-sdk`` package pins older numpy and
brings code generators and linters into the environment tavaal shares with torch and Ray, and the few calls
used here are stable across Label Studio's 1.x releases. Nothing from Label Studio is evaluated or unpickled:
exports and answers are parsed as JSON and checked before they are believed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, cast
from xml.sax.saxutils import quoteattr

import numpy as np
import torch

from tavaal import checkpoint
from tavaal.config import Config
from tavaal.core.batches import iter_batches
from tavaal.core.pool import PoolState
from tavaal.core.training import ModelSpec
from tavaal.data.base import ALData
from tavaal.errors import CheckpointError, ConfigError, DataError, TavaalError
from tavaal.files import atomic_write
from tavaal.labelfiles import (
    REQUEST_DIR,
    Answer,
    answer_bytes,
    answer_ids,
    check_answers,
    labels_target,
    pending,
    row_ids,
    store_labels,
    write_request,
)
from tavaal.oracle import LabelsPending, ManualOracle

TOKEN_ENV = "LABEL_STUDIO_API_KEY"  # the name Label Studio's own SDK reads
LABEL = "label"  # the name of the labeling interface's class control (the key of a JSON_MIN export)


class LabelStudioError(TavaalError):
    """A Label Studio server that cannot be reached, refuses the token, or answers an API call with an error."""


# ---------------------------------------------------------------- what Label Studio shows


def interface(classes: tuple[str, ...], images: bool) -> str:
    """The labeling interface: the image (or the row's id, for an embeddings pool) and one choice per class.
    With no class known yet (``data.new_classes``), a one-line text answer."""
    shown = '<Image name="item" value="$image"/>' if images else '<Text name="item" value="$tavaal_id"/>'
    if classes:
        choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
        control = f'<Choices name="{LABEL}" toName="item" choice="single" showInline="true">{choices}</Choices>'
    else:
        control = f'<TextArea name="{LABEL}" toName="item" maxSubmissions="1" editable="true"/>'
    return f"<View>{shown}{control}</View>"


def tasks(
    run: str,
    stage: int,
    ids: list[str],
    images: list[str] | None,
    predicted: list[tuple[str, float]] | None,
    control: str,
    version: str,
) -> list[dict]:
    """The batch as Label Studio tasks (its import format): one per id, with its image reference and, when
    ``predicted``, the class and probability the task model gives it as a pre-annotation."""
    out = []
    for k, rid in enumerate(ids):
        data: dict[str, Any] = {"tavaal_id": rid, "tavaal_stage": stage, "tavaal_run": run}
        if images is not None:
            data["image"] = images[k]
        task: dict[str, Any] = {"data": data}
        if predicted is not None:
            name, p = predicted[k]
            value = {"choices": [name]} if control == "choices" else {"text": [name]}
            result = {"from_name": LABEL, "to_name": "item", "type": control, "value": value}
            task["predictions"] = [{"model_version": version, "score": round(float(p), 6), "result": [result]}]
        out.append(task)
    return out


DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"  # where Label Studio serves local files from


def image_root(setting: str | None, folder: Path) -> Path:
    """The folder the tasks address images below: ``labelstudio.image_root``, else the Label Studio server's
    document root when this shell sets it (the same one starts the server), else the run's ``to_label/``."""
    return Path(setting or os.environ.get(DOCUMENT_ROOT_ENV) or folder).resolve()


def image_urls(paths: list[str], root: Path, copy_to: Path) -> tuple[list[str], Path]:
    """Label Studio's local-files address of each image (its path below ``root``), and the folder that holds them
    all. An image outside ``root`` is copied into ``copy_to`` when that is below ``root``, else refused in one line."""
    out, served = [], []
    for k, p in enumerate(paths):
        src = Path(p).resolve()
        if not src.is_relative_to(root):
            if not copy_to.resolve().is_relative_to(root):
                raise ConfigError(
                    f"image '{src}' and the run's {copy_to.parent} are not below labelstudio.image_root '{root}'; set "
                    f"labelstudio.image_root (or {DOCUMENT_ROOT_ENV}) to the Label Studio server's document root, a "
                    "folder that holds the pool's images or the run directory"
                )
            copy_to.mkdir(parents=True, exist_ok=True)
            dst = copy_to / f"{k:05d}_{src.name}"
            if not dst.is_file():
                shutil.copyfile(src, dst)
            src = dst.resolve()
        served.append(src.parent)
        out.append("/data/local-files/?d=" + urllib.parse.quote(str(src.relative_to(root))))
    return out, Path(os.path.commonpath(served)) if served else root


@torch.no_grad()
def predictions(cfg: Config, out_dir: str | Path, stage: int, data: ALData, positions: np.ndarray):
    """``[(class name, probability)]`` of the task model that picked the batch of stage ``stage`` (the newest
    checkpoint, stage ``stage - 1``); None for stage 0's batch, which no model picked."""
    if stage == 0 or not checkpoint.list_stages(out_dir):
        return None
    ck = checkpoint.load_latest(out_dir)
    if ck.stage != stage - 1:
        raise CheckpointError(
            f"the newest checkpoint in {out_dir} is stage {ck.stage}, but stage {stage}'s batch was picked by stage "
            f"{stage - 1}; resume the run from its own directory"
        )
    model, _ = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, cfg.model.ranker_hidden).build(
        with_ranker=False
    )
    model.load_state_dict(ck.states["model"])
    model.eval()
    out: list[tuple[str, float]] = []
    for x, _, _ in iter_batches(data, "train", positions, 256):
        p = torch.softmax(model(x).logits.float(), 1).max(1)
        names = data.class_names
        out += [(names[int(c)], float(v)) for v, c in zip(p.values, p.indices)]
    return out


# ---------------------------------------------------------------- what comes back


def task_answers(items: list, where: str) -> list[Answer]:
    """``(place, id, label)`` of every task of a Label Studio export: its ``JSON`` form (tasks with their
    annotations) or ``JSON_MIN`` (one flat record per task). A task's label is that of its annotations that were
    not skipped (its ground-truth ones, if any are marked), "" when it has none; annotations that disagree, or one
    that chooses two classes, are a one-line DataError."""
    out: list[Answer] = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise DataError(f"{where}: task {n} is a {type(item).__name__}, not a task object; {_EXPORT}")
        full = "annotations" in item or "data" in item
        data = item.get("data") if full else item
        at = f"task {n} (Label Studio task {item.get('id', '?')})"
        if not isinstance(data, dict) or "tavaal_id" not in data:
            raise DataError(
                f"{where} {at}: has no tavaal_id, so it was not made from tavaal's tasks file; export the project "
                f"that holds this run's tasks ({_EXPORT})"
            )
        rid = str(data["tavaal_id"])
        if full:
            labels = _annotated(item.get("annotations") or [], f"{where} {at}")
        else:
            labels = [] if item.get(LABEL) in (None, "") else [_single(item[LABEL], f"{where} {at}")]
        if len(set(labels)) > 1:
            raise DataError(
                f"{where} {at}: id '{rid}' has annotations that disagree ({', '.join(sorted(set(labels)))}); "
                "settle them in Label Studio (delete one, or mark one as ground truth) and export again"
            )
        out.append((at, rid, labels[0] if labels else ""))
    return out


_EXPORT = "in Label Studio: Export, format JSON"


def _annotated(annotations: list, where: str) -> list[str]:
    kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    truth = [a for a in kept if a.get("ground_truth")]
    labels = []
    for a in truth or kept:
        values = [
            r.get("value", {}) for r in a.get("result") or [] if isinstance(r, dict) and r.get("from_name") == LABEL
        ]
        if len(values) > 1:
            raise DataError(f"{where}: an annotation answers '{LABEL}' {len(values)} times; one class per item")
        if values:
            value = values[0] if isinstance(values[0], dict) else {}
            label = _single(value.get("choices", value.get("text")), where)
            if label:
                labels.append(label)
    return labels


def _single(value: Any, where: str) -> str:
    """One class name from a choices/text value: a string, or a list of one."""
    if isinstance(value, dict):
        value = value.get("choices", value.get("text"))
    if isinstance(value, list):
        if len(value) > 1:
            raise DataError(
                f"{where}: an annotation gives {len(value)} classes ({', '.join(map(str, value))}); one class per "
                "item: correct it in Label Studio and export again"
            )
        value = value[0] if value else ""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: the label is a {type(value).__name__}, not a class name; {_EXPORT}")
    return value.strip()


def export_answers(f: Path, request: Path, fix: str) -> list[Answer]:
    """The answers in a Label Studio JSON export file (``--labels EXPORT.json``)."""
    raw = answer_bytes(f, f"Label Studio's JSON export of the tasks of {request.with_suffix('.labelstudio.json')}")
    try:
        items = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"labels file '{f}' is not a JSON export ({type(e).__name__}: {e}); {_EXPORT}") from None
    if not isinstance(items, list):
        raise DataError(
            f"labels file '{f}' holds a JSON {type(items).__name__}, not Label Studio's list of tasks; {_EXPORT}"
        )
    run = remembered(request.parent).get("run")  # read only: checking an answer writes nothing
    for n, item in enumerate(items, 1):
        data = item.get("data", item) if isinstance(item, dict) else None
        if run is not None and isinstance(data, dict) and "tavaal_run" in data and data["tavaal_run"] != run:
            raise DataError(
                f"labels file '{f}' task {n} (Label Studio task {item.get('id', '?')}) belongs to another tavaal run "
                f"(tavaal_run '{data['tavaal_run']}', this run's is '{run}'); export the project this run's tasks "
                f"went into, or only their tasks; {fix}"
            )
    return task_answers(items, f"labels file '{f}'")


def remembered(folder: Path) -> dict:
    """What the run keeps about Label Studio in ``to_label/labelstudio.json``: its mark, the project, the folder of
    each batch's images."""
    record = folder / "labelstudio.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def remember(folder: Path, values: dict) -> dict:
    saved = remembered(folder) | values
    atomic_write(folder / "labelstudio.json", lambda p: p.write_text(json.dumps(saved, indent=1)))
    return saved


def run_tag(folder: Path) -> str:
    """This run's mark on its tasks (``tavaal_run``): a project may hold the tasks of several runs, and an export
    of another run's project is refused rather than read."""
    saved = remembered(folder)
    return str(saved["run"] if "run" in saved else remember(folder, {"run": uuid.uuid4().hex[:12]})["run"])


# ---------------------------------------------------------------- the API


class LabelStudio:
    """The calls tavaal makes to a Label Studio server, over its HTTP API. A personal access token (a JWT) is
    exchanged for a short-lived access token; a legacy token is sent as it is."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self._token, self._auth = token, ""

    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = self._authorization()
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 (http/https checked in config)
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = _detail(e.read())
            if e.code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the token in {TOKEN_ENV} ({e.code}: {detail}); set it to "
                    "your access token (Label Studio: Account & Settings)"
                ) from None
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} failed ({e.code}: {detail})") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LabelStudioError(
                f"Label Studio at {self.url} cannot be reached ({reason}); start it, or correct labelstudio.url"
            ) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise LabelStudioError(
                f"Label Studio at {self.url}: {method} {path} answered something other than JSON; is "
                "labelstudio.url the Label Studio server?"
            ) from None

    def _authorization(self) -> str:
        if self._token.count(".") != 2:  # a legacy token
            return f"Token {self._token}"
        if not self._auth:  # a personal access token: a refresh token, exchanged once per run
            answer = self._call("POST", "/api/token/refresh", {"refresh": self._token}, auth=False)
            self._auth = f"Bearer {answer['access']}"
        return self._auth

    def check(self) -> None:
        """Reachable, and the token accepted."""
        self._call("GET", "/api/projects?page_size=1")

    def project(self, title: str, config: str) -> int:
        """The id of the project titled ``title``, created with the labeling interface ``config`` if absent."""
        page = 1
        while True:
            answer = self._call("GET", f"/api/projects?page_size=100&page={page}")
            for p in answer.get("results", []):
                if p.get("title") == title:
                    return int(p["id"])
            if not answer.get("next"):
                break
            page += 1
        return int(self._call("POST", "/api/projects", {"title": title, "label_config": config})["id"])

    def serve(self, project: int, folder: str) -> None:
        """A local-files storage of the project for ``folder`` (Label Studio serves a local file only from one)."""
        have = self._call("GET", f"/api/storages/localfiles?project={project}")
        if any(isinstance(h, dict) and h.get("path") == folder for h in have or []):
            return
        body = {"project": project, "path": folder, "title": "tavaal images", "use_blob_urls": False}
        self._call("POST", "/api/storages/localfiles", body)

    def add_tasks(self, project: int, items: list[dict]) -> None:
        self._call("POST", f"/api/projects/{project}/import", items)

    def export(self, project: int) -> list:
        """Every task of the project with its annotations (Label Studio's JSON export, unannotated tasks too)."""
        return cast(list, self._call("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true"))


def _detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        detail = body.get("detail") or body.get("validation_errors") or body
    except (ValueError, AttributeError):
        detail = raw[:200].decode("utf-8", "replace")
    return " ".join(str(detail).split())[:300]


def connect(url: str) -> LabelStudio:
    """The client for ``url``, checked: the token in the environment must be set and accepted."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"labelstudio.url is {url} but {TOKEN_ENV} is not set: export {TOKEN_ENV}=<your access token> "
            '(Label Studio: Account & Settings), or set labelstudio.url to "" to work with files'
        )
    client = LabelStudio(url, token)
    client.check()
    return client


# ---------------------------------------------------------------- the oracle


class LabelStudioOracle(ManualOracle):
    """People label the picks in Label Studio: from a tasks file and its JSON export (``--labels``), or through
    its API when ``labelstudio.url`` is set."""

    mode = "labelstudio"

    def __init__(self, cfg: Config, out_dir: str | Path | None = None) -> None:
        super().__init__(cfg, out_dir)
        self.client: LabelStudio | None = None

    def start(self, data: ALData) -> tuple[ALData, PoolState]:
        if self.cfg.labelstudio.url:  # before any stage: a server that cannot be used stops the run at once
            self.client = connect(self.cfg.labelstudio.url)
        return super().start(data)

    def label(self, stage: int, data: ALData, pool: PoolState) -> ALData:
        missing = pending(pool, data)
        if not missing.size:
            return data
        if self.out_dir is None:
            raise ConfigError(
                "the labelstudio oracle writes the batch's tasks into the run's directory: pass --out DIR"
            )
        out = Path(self.out_dir)
        request = write_request(out, stage, data, missing, self.cfg.to_dict())
        tasks_file = self._write_tasks(stage, data, missing)
        what = "images" if hasattr(data.train.x, "encoded") else "rows"
        if self.client is None:
            raise LabelsPending(
                stage,
                tasks_file,
                int(missing.size),
                f"stage {stage} needs labels for {missing.size} {what} (Label Studio oracle). Import {tasks_file} "
                f"into a Label Studio project whose labeling interface is {out / REQUEST_DIR / 'labelstudio.xml'}, "
                "label the tasks, export the project as JSON, then continue with:\n"
                f"  python -m tavaal.run --resume {out} --labels EXPORT.json",
            )
        project = self._project(data)
        found = self._stage_tasks(project, stage)
        if not found:  # not imported yet (a resume, or a stop after the import, finds them there)
            self.client.add_tasks(project, json.loads(tasks_file.read_text()))
        images = remembered(out / REQUEST_DIR).get(f"images_{stage}")
        if images is not None:
            self._serve(project, images)
        requested = row_ids(data, missing)
        wanted = set(requested)
        wait = self.cfg.labelstudio.wait_minutes * 60
        t0, shown = time.monotonic(), -1
        while True:
            answers = task_answers(found, self._where(project))
            done = len({rid for _, rid, label in answers if label and rid in wanted})
            if done == len(requested):  # every task answered: checked as a labels file is, then stored
                return self._store(project, stage, data, missing, answers)
            if time.monotonic() - t0 >= wait:
                break
            if done != shown:
                print(
                    f"stage {stage}: {done} of {missing.size} tasks annotated in {self.client.url}/projects/{project}; "
                    f"waiting up to {self.cfg.labelstudio.wait_minutes:g} min",
                    flush=True,
                )
                shown = done
            time.sleep(min(self.cfg.labelstudio.poll_seconds, max(0.0, wait - (time.monotonic() - t0))))
            found = self._stage_tasks(project, stage)
        raise LabelsPending(
            stage,
            request,
            int(missing.size),
            f"stage {stage} needs labels for {missing.size} {what}: {done} of {missing.size} tasks are annotated "
            f"in {self.client.url}/projects/{project}. When annotators finish, continue with:\n"
            f"  python -m tavaal.run --resume {out}",
        )

    def _write_tasks(self, stage: int, data: ALData, positions: np.ndarray) -> Path:
        """``to_label/stage_K.labelstudio.json`` and ``labelstudio.xml``, written once per batch."""
        folder = Path(cast(str | Path, self.out_dir)) / REQUEST_DIR
        path = folder / f"stage_{stage}.labelstudio.json"
        if path.is_file():
            return path
        ls = self.cfg.labelstudio
        images = None
        if hasattr(data.train.x, "encoded"):
            images, served = image_urls(
                _request_paths(folder, stage), image_root(ls.image_root, folder), folder / f"stage_{stage}"
            )
            remember(folder, {f"images_{stage}": str(served)})
        predicted = predictions(self.cfg, folder.parent, stage, data, positions) if ls.predictions else None
        control = "choices" if data.class_names else "textarea"
        version = f"tavaal {self.cfg.al.strategy} stage {stage - 1}"
        items = tasks(run_tag(folder), stage, row_ids(data, positions), images, predicted, control, version)
        atomic_write(
            folder / "labelstudio.xml", lambda p: p.write_text(interface(data.class_names, images is not None))
        )
        atomic_write(path, lambda p: p.write_text(json.dumps(items, indent=1)))
        return path

    def _project(self, data: ALData) -> int:
        """This run's project: the one recorded in ``to_label/labelstudio.json``, else found or created by title."""
        assert self.client is not None
        folder = Path(cast(str | Path, self.out_dir)) / REQUEST_DIR
        saved = remembered(folder)
        if saved.get("url") == self.client.url and "project" in saved:
            return int(saved["project"])
        title = self.cfg.labelstudio.project or f"tavaal {Path(cast(str | Path, self.out_dir)).resolve().name}"
        project = self.client.project(title, interface(data.class_names, hasattr(data.train.x, "encoded")))
        remember(folder, {"url": self.client.url, "project": project})
        return project

    def _serve(self, project: int, folder: str) -> None:
        """Let Label Studio show the batch's images: a local-files storage for their folder (a note if the server
        does not serve local files; the annotations still come back)."""
        assert self.client is not None
        try:
            self.client.serve(project, folder)
        except LabelStudioError as e:
            print(
                f"note: Label Studio cannot show the images of {folder} ({e}); start it with "
                f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and {DOCUMENT_ROOT_ENV} set to a folder above them",
                flush=True,
            )

    def _stage_tasks(self, project: int, stage: int) -> list[dict]:
        """The project's tasks of this run's batch of stage ``stage`` (a project may hold other runs' tasks)."""
        assert self.client is not None
        run = run_tag(Path(cast(str | Path, self.out_dir)) / REQUEST_DIR)
        out = []
        for t in self.client.export(project):
            data = t.get("data") if isinstance(t, dict) else None
            if isinstance(data, dict) and data.get("tavaal_stage") == stage and data.get("tavaal_run") == run:
                out.append(t)
        return out

    def _where(self, project: int) -> str:
        return f"Label Studio project {self.client.url}/projects/{project}"  # type: ignore[union-attr]

    def _store(self, project: int, stage: int, data: ALData, missing: np.ndarray, answers: list[Answer]) -> ALData:
        """The batch's labels from the annotations, each checked as a labels file's are, stored once."""
        requested, pool_ids, answered = answer_ids(data, missing)
        fix = "correct the annotations in Label Studio and resume again"
        where, new = self._where(project), self.cfg.data.new_classes
        labels = check_answers(answers, requested, pool_ids, data.class_names, new, fix, where, answered)
        target = labels_target(Path(cast(str | Path, self.out_dir)), stage)
        source = f"{self.client.url}/projects/{project} (Label Studio)"  # type: ignore[union-attr]
        return store_labels(target, stage, labels, source, data, new)


def _request_paths(folder: Path, stage: int) -> list[str]:
    """The image paths of the batch's request (the pool's own files, or the copies written beside it)."""
    import pyarrow.parquet as pq

    return [
        str(p) for p in pq.read_table(folder / f"stage_{stage}.parquet", columns=["path"]).column("path").to_pylist()
    ]
