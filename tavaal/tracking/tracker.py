"""The Tracker seam and its MLflow tracker (with its outage buffer): the loop reports each stage through it.

``MLflowTracker`` writes one MLflow run per experiment through its own ``MlflowClient`` (no global active run), so
one driver can hold a tracker per Tune trial; what a stage logs is ``metrics.stage_metrics``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tavaal.core.metrics import objective_metrics, stage_quality
from tavaal.errors import TrackingError
from tavaal.redact import redact
from tavaal.tracking import runinfo
from tavaal.tracking.metrics import (
    MARKER,
    PICKED,
    curve_points,
    log_config,
    log_figure,
    log_metrics,
    log_params,
    log_selected,
    metric_steps,
    query_metrics,
    set_tags,
    stage_metrics,
)
from tavaal.tracking.parent import PARENT_TAG
from tavaal.tracking.plots import accuracy_figure
from tavaal.tracking.store import (
    DEFAULT_TRACKING_URI,
    check_health,
    connect,
    ensure_experiment,
    reopen_run,
    safe_tags,
    set_terminated,
    tracking_errors,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


class Tracker(Protocol):
    def start(self, config: dict[str, Any], run_id: str | None = None) -> str | None: ...

    def log_stage(self, record: dict[str, Any]) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing (the default for ``python -m tavaal.run`` without a tracking URI)."""

    def start(self, config: dict[str, Any], run_id: str | None = None) -> str | None:
        return None

    def log_stage(self, record: dict[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class MLflowTracker:
    """One MLflow run per AL experiment; ``log_stage`` is idempotent per stage, so a resume logs nothing twice.

    Besides the stage metrics, a run gets its objective per stage (``auc``, ``final_accuracy``), tags for strategy,
    seed, data set and sweep (``runinfo.run_tags``), MLflow's system metrics while it runs, the pool and test sets as
    inputs (``log_inputs``, called by the loop once the data is built) and, when it finishes, the final task model
    and ranker as MLflow models, read from the last stage's checkpoint in ``checkpoint_dir`` (or given to ``end``);
    ``register_model`` registers the task model under that name."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "tavaal",
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
        warn: Callable[[str], None] | None = None,
        checkpoint_dir: str | Path | None = None,
        register_model: str | None = None,
        sweep: str | None = None,
        source: str = "python -m tavaal.run",
        system_metrics_interval: float | None = runinfo.SYSTEM_METRICS_INTERVAL_S,
    ) -> None:
        self.tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
        self.experiment, self.run_name, self.parent_run_id = experiment, run_name, parent_run_id
        self.tags = safe_tags(tags)
        self.artifact_location = artifact_location  # only used when the experiment is created here
        self.checkpoint_dir, self.register_model = checkpoint_dir, register_model
        self.sweep, self.source = sweep, source
        self.system_metrics_interval = system_metrics_interval
        self.run_id: str | None = None
        self.model_uris: dict[str, str] = {}  # name -> models:/ URI of the final models, once logged
        self._client: MlflowClient | None = None
        self._config: dict[str, Any] = {}
        self._inputs: dict[str, Any] | None = None  # runinfo.describe_inputs of the run's data
        self._monitor: Any = None  # MLflow's SystemMetricsMonitor for this run
        self._points: dict[int, tuple[float, float]] = {}  # stage -> (labels/count, test/accuracy), whole run
        self._quality: dict[int, tuple[float, float]] = {}  # stage -> (labels/count, accuracy or mIoU): the objective
        self._picked: set[int] = set()  # stages whose query (picks, game health) is in the run
        self._pending: dict[int, dict[str, Any]] = {}  # stage -> record, held back by a tracking outage
        self._tried: set[int] = set()  # stages whose sending failed once (they may have reached the server)
        self._warned = False
        self._ended = False
        self.warn = warn or (lambda msg: print(redact(msg), file=sys.stderr, flush=True))

    def check(self) -> None:
        """Raise TrackingError (one line) unless the server or store answers."""
        self._client = connect(self.tracking_uri)

    def start(self, config: dict[str, Any], run_id: str | None = None) -> str:
        """Create the run (params and config artifacts), or reopen ``run_id`` to resume it; returns its id."""
        client = self._client or connect(self.tracking_uri)
        self._client = client
        self._config = config
        with tracking_errors(self.tracking_uri, "starting the run"):
            tags = runinfo.run_tags(config, self.sweep, self.source) | self.tags
            tags |= {PARENT_TAG: self.parent_run_id} if self.parent_run_id else {}
            if run_id is None:
                exp_id = ensure_experiment(client, self.tracking_uri, self.experiment, self.artifact_location)
                run_name = None if self.run_name is None else redact(self.run_name)
                run = client.create_run(exp_id, run_name=run_name, tags=tags)
            else:
                run = reopen_run(client, run_id, self.tracking_uri)
                set_tags(client, run.info.run_id, tags)  # a run from before these tags gets them
            self.run_id = run.info.run_id
            if not run.data.params:  # new, or created by a process killed before its params went out
                log_params(client, self.run_id, config)
                log_config(client, self.run_id, config)
            self._points = curve_points(client, self.run_id)
            self._picked = set(metric_steps(client, self.run_id, PICKED))
            miou = metric_steps(client, self.run_id, "test/miou")  # segmentation: the objective is over mIoU
            self._quality = {s: (n, miou.get(s, a)) for s, (n, a) in self._points.items()}
        self._ended = False
        self._monitor = runinfo.start_system_metrics(
            self.run_id, self.tracking_uri, self.system_metrics_interval, resume=run_id is not None
        )
        return self.run_id

    def log_inputs(self, data, spec) -> None:
        """The run's data (pool and test set) as MLflow inputs, and what its final models need (the model's spec, an
        input example); the loop calls it once the data is built."""
        self.use_inputs(runinfo.describe_inputs(data, spec, self._config))

    def use_inputs(self, inputs: dict[str, Any]) -> None:
        """``log_inputs`` from a ``runinfo.describe_inputs`` made elsewhere (a Tune trial reports it)."""
        self._inputs = inputs
        if self.run_id is None or self._client is None:
            return
        try:
            with tracking_errors(self.tracking_uri, "logging the run's inputs"):
                runinfo.log_inputs(self._client, self.run_id, inputs)
        except TrackingError as e:
            self.warn(f"warning: {e}")  # the run goes on; only its inputs are missing

    def log_stage(self, record: dict[str, Any]) -> None:
        """Metrics at ``step = stage`` and the stage's selected indices; a stage already in the run is skipped.

        While the server or store is unreachable the stage is held back (the loop's checkpoint holds every
        record too), one warning says so, and held-back stages go out, oldest first, with the next stage that
        finds the server answering again; ``end`` (or a ``--resume``) sends whatever is left.
        """
        rec = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        stage = int(rec["stage"])
        if self.run_id is None:
            raise RuntimeError("MLflowTracker.log_stage called before start")
        # a stage in the run is skipped, unless it now brings a query it did not have (the last stage of a shorter
        # plan, queried when the run is extended): then its query's part goes out
        if stage not in self._points or (rec.get("selected") and stage not in self._picked):
            self._pending[stage] = rec
        self.flush()

    @property
    def pending(self) -> list[int]:
        """Stages not yet in the MLflow run (held back by an outage)."""
        return sorted(self._pending)

    def flush(self) -> bool:
        """Send held-back stages, oldest first; False (after warning once per outage) while tracking is down."""
        for stage in sorted(self._pending):
            try:
                self._send(stage, self._pending[stage])
            except TrackingError as e:
                self._tried.add(stage)
                if not self._warned:
                    self._warned = True
                    self.warn(
                        f"warning: {e}. The run goes on; stage metrics stay in the checkpoints and are "
                        "sent when tracking answers again (or on --resume)"
                    )
                return False
            del self._pending[stage]
        if self._warned:
            self._warned = False
            self.warn("tracking is back: every held-back stage has been sent")
        return True

    def _send(self, stage: int, rec: dict[str, Any]) -> None:
        client, run_id = self._client, self.run_id
        assert client is not None and run_id is not None  # stages are held back only after start
        if self.tracking_uri.startswith(("http://", "https://")):
            check_health(self.tracking_uri)  # seconds, not mlflow's minutes of retries against a dead server
        with tracking_errors(self.tracking_uri, f"logging stage {stage}"):
            # a batch sent just before a failure may have been stored anyway: look before sending it again
            update = stage in self._points  # the stage is in the run; only its query is new
            marker = PICKED if update else MARKER
            if stage in self._tried and stage in metric_steps(client, run_id, marker):
                self._points[stage] = (float(rec["num_labeled"]), float(rec["accuracy"]))
                self._picked |= {stage} if rec.get("selected") else set()
                return
            if rec.get("selected"):
                log_selected(client, run_id, stage, rec["selected"])
            # one batch, its marker last: if the marker is in the run, the whole batch is
            log_metrics(client, run_id, stage, query_metrics(rec) if update else self._with_objective(stage, rec))
        self._points[stage] = (float(rec["num_labeled"]), float(rec["accuracy"]))
        self._picked |= {stage} if rec.get("selected") else set()

    def _with_objective(self, stage: int, rec: dict[str, Any]) -> dict[str, float]:
        """The stage's metrics with the sweep's objective so far (``auc``, ``final_accuracy`` over stages 0..stage)
        before the marker: every run, sweep trial or not, can be sorted by them in the runs table."""
        self._quality[stage] = (float(rec["num_labeled"]), float(stage_quality(rec)))
        upto = [{"num_labeled": n, "accuracy": q} for s, (n, q) in sorted(self._quality.items()) if s <= stage]
        metrics = stage_metrics(rec)
        marker = metrics.pop(MARKER)
        return metrics | objective_metrics(upto) | {MARKER: marker}

    def end(self, status: str = "FINISHED", states: dict[str, Any] | None = None) -> None:
        """Log the final models (a finished run), the accuracy-vs-labels plot of the whole run, and set its status.

        ``states`` are the last stage's model states (``model``, ``ranker``); without them they are read from the
        newest checkpoint in ``checkpoint_dir``. With stages still held back by an outage, the run is left open with
        a warning: ``--resume`` of the run directory sends them and ends it (the AL results themselves are complete
        in the checkpoints).
        """
        if self.run_id is None or self._ended:
            return
        if not self.flush():
            runinfo.stop_system_metrics(self._monitor, last_sample=False)
            self._monitor = None
            uri = redact(self.tracking_uri)
            self.warn(
                f"warning: stages {self.pending} are not in MLflow run {self.run_id} yet: when "
                f"{uri} answers again, run python -m tavaal.run --resume <run dir> --tracking-uri {uri} to send them"
            )
            return
        client = self._client
        assert client is not None  # start connected before it set run_id
        runinfo.stop_system_metrics(self._monitor)
        self._monitor = None
        if status == "FINISHED":
            self._log_models(states)
        try:
            with tracking_errors(self.tracking_uri, "ending the run"):
                if self._points:
                    log_figure(client, self.run_id, accuracy_figure({"this run": self._points}), "accuracy.png")
                set_terminated(client, self.tracking_uri, self.run_id, status)
        except TrackingError as e:
            self.warn(f"warning: {e}")  # every stage is in the run; only the figure or the status is missing
            return
        self._ended = True

    def _log_models(self, states: dict[str, Any] | None) -> None:
        """The final task model and ranker as MLflow models (``runinfo.log_models``), their URIs as tags; a failure
        is one warning line (the run and its checkpoints are complete without them)."""
        if self._inputs is None or self.run_id is None or self._client is None:
            return  # the loop never described its data (a run driven by hand): nothing to build the model from
        if states is None and self.checkpoint_dir is not None:
            from tavaal import checkpoint

            try:
                states = checkpoint.load_latest(self.checkpoint_dir).states
            except Exception as e:  # noqa: BLE001 - a missing or damaged checkpoint: say so, the run still ends
                self.warn(f"warning: the final model is not logged to MLflow: {' '.join(str(e).split())[:200]}")
                return
        if not states or "model" not in states:
            return
        try:
            with tracking_errors(self.tracking_uri, "logging the final model"):
                self.model_uris = runinfo.log_models(
                    self.tracking_uri, self.run_id, self._inputs, states, self.register_model
                )
                set_tags(self._client, self.run_id, {f"{runinfo.TAG}{k}_uri": v for k, v in self.model_uris.items()})
        except TrackingError as e:
            self.warn(f"warning: {e}")
