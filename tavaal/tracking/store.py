"""The MLflow store: connecting (in seconds, with one-line errors), experiments, and opening and ending runs.
mlflow is imported inside the functions: importing this module does not load it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tavaal.errors import TrackingError
from tavaal.redact import has_credentials, redact

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the embedded default store, in the working directory
FALLBACK_HINT = "start it or pass --tracking-uri sqlite:///mlflow.db"
HEALTH_TIMEOUT_S = 5.0  # an unreachable server fails in seconds, not after mlflow's minutes of retries


# ---------------------------------------------------------------- connecting


def connect(tracking_uri: str):
    """An ``MlflowClient`` for a server or store that answers; otherwise TrackingError, in seconds."""
    if tracking_uri.startswith(("http://", "https://")):
        check_health(tracking_uri)
    import mlflow

    with tracking_errors(tracking_uri, "opening the store"):
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    return client


def check_health(url: str) -> None:
    """A plain GET of ``/health`` with a short timeout (mlflow's own retries take minutes to give up).

    User info in the URL (``http://user:pass@host``) goes out as a basic-auth header, as mlflow's own requests
    send it (urllib would read it as part of the host name); the messages name the URL redacted."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(
        parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/") + "/health"
    )
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # something answered (a proxy or auth layer, say): the API call that follows will tell
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        name = type(reason).__name__ if isinstance(reason, BaseException) else type(e).__name__
        raise TrackingError(f"MLflow tracking server {redact(url)} is unreachable ({name}); {FALLBACK_HINT}") from None


@contextlib.contextmanager
def tracking_errors(uri: str, doing: str) -> Iterator[None]:
    """Turn any failure of the tracking client into a one-line TrackingError naming the URI (credentials in the
    URI, or in the client's own message, masked: ``tavaal.redact``)."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as e:
        detail = redact(" ".join(str(e).split()))[:200]
        raise TrackingError(
            f"MLflow tracking at {redact(uri)} failed while {doing} ({type(e).__name__}: {detail}); "
            f"check the server or store, or pass --tracking-uri {DEFAULT_TRACKING_URI}"
        ) from None


# MLflow 3's UI opens an experiment in its training view with this tag (without it: an empty GenAI traces page)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client, tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (tagged as model training, ``EXPERIMENT_KIND``) if it is new."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_location or default_artifact_location(tracking_uri, name)
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # another driver created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """A SQLite store keeps its artifacts beside the file (``<db dir>/mlruns/<experiment>``), not in whatever
    directory the process happens to run in (mlflow's default, ``./mlruns``)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    return str(Path(db).resolve().parent / "mlruns" / re.sub(r"[^\w\-.]", "_", experiment))


def reopen_run(client, run_id: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"MLflow run {run_id} not found at {redact(uri)}; resume with the tracking URI the run started with"
        ) from None
    client.update_run(run_id, status="RUNNING")
    return run


def safe_tags(tags: dict | None) -> dict[str, str]:
    """Tags as text, values with the credentials of any URI in them masked."""
    return {str(k): redact(v) for k, v in (tags or {}).items()}


def set_terminated(client, uri: str, run_id: str, status: str) -> None:
    """``client.set_terminated``; against a server whose URI carries credentials, without mlflow's "View run at
    <URI>" lines on stdout (they would print the password)."""
    if not (uri.startswith(("http://", "https://")) and has_credentials(uri)):
        client.set_terminated(run_id, status)
        return
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        client.set_terminated(run_id, status)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
