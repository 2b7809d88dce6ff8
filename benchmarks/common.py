"""What the benchmark scripts share, once: a run directory with one raw JSON per experiment and the checks before
resuming it, the header that says where and how a result was made, the statistics of the reports, and a backend
wrapper that times a stage's parts."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tavaal.config import from_dict, load_config
from tavaal.core.metrics import objective_metrics, stage_quality
from tavaal.errors import TavaalError
from tavaal.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "entropy", "coreset", "lloss", "lloss_rank", "vaal", "tavaal")  # the reports' column order


# ---------------------------------------------------------------- run directories, raw JSON, resuming


class Refused(Exception):
    """A run that must not start or go on; the message says why (a script's main prints it and exits 2)."""


def raw_path(run_dir: Path, setting: str, strategy: str, seed: int) -> Path:
    """Where one experiment's JSON goes: ``<run_dir>/raw/<setting>-<strategy>-seed<k>.json``."""
    return run_dir / "raw" / f"{setting}-{strategy}-seed{seed}.json"


def write_json(path: str | Path, obj) -> None:
    """``obj`` as JSON at ``path``, atomically (a killed run leaves the old file or the new one, never half)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj)))


def load_raw(run_dir: Path, sub: str = "raw") -> dict[str, dict[str, dict[int, dict]]]:
    """setting -> strategy -> seed -> the experiment's JSON, from ``<run_dir>/<sub>/<setting>-<strategy>-seed<k>.json``
    (``sub``: ``raw``, or another folder of experiments in that layout)."""
    out: dict = {}
    for path in sorted((run_dir / sub).glob("*-seed*.json")):
        setting, strategy, seed = path.stem.rsplit("-", 2)
        out.setdefault(setting, {}).setdefault(strategy, {})[int(seed.removeprefix("seed"))] = json.loads(
            path.read_text()
        )
    return out


def recorded_run(run_dir: Path, resume: bool) -> dict | None:
    """The ``run.json`` of the run in ``run_dir`` (None: there is none); a run there is refused without ``resume``.
    The caller refuses what its own run records (protocol, overrides) no longer match."""
    path = run_dir / "run.json"
    if not path.exists():
        return None
    if not resume:
        raise Refused(f"{run_dir} holds a run; pass --resume to continue it or --name for a new one")
    return json.loads(path.read_text())


def write_run(run_dir: Path, meta: dict) -> None:
    """``<run_dir>/run.json``: what the run is (protocol, presets, overrides) and its invocations."""
    (run_dir / "run.json").write_text(json.dumps(meta, indent=1))


def unfinished(run_dir: Path, todo: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(to run, finished) of ``todo``'s experiments ((setting, strategy, seed, preset, overrides)): finished ones
    have their raw JSON. Refused when a config does not load, or when a finished experiment ran another config than
    the plan resolves to now (``changed_config``): a run finishes with the code and presets it started with."""
    try:  # every config checked before the first experiment starts
        for *_, base, overrides in todo:
            load_config(ROOT / base, overrides)
    except TavaalError as e:
        raise Refused(str(e)) from e
    finished = [t for t in todo if raw_path(run_dir, *t[:3]).exists()]
    differs = changed_config(run_dir, finished)
    if differs:
        raise Refused(f"{differs}; finish it with the code and presets it ran with, or a new --name")
    return [t for t in todo if t not in finished], finished


def changed_config(run_dir: Path, finished: list) -> str | None:
    """Where a finished experiment's resolved config differs from what the same plan resolves to now (a preset or
    a default changed since: run.json's overrides cannot show it), else None. Fields a config recorded before they
    existed take their defaults, so a new field whose default differs from the preset's value is caught too."""
    for setting, strategy, seed, base, overrides in finished:
        saved = json.loads(raw_path(run_dir, setting, strategy, seed).read_text())["config"]
        then, now = from_dict(saved).flat(), load_config(ROOT / base, overrides).flat()
        for key in sorted(set(then) | set(now)):
            if key != "num_threads" and then.get(key) != now.get(key):
                return (
                    f"{raw_path(run_dir, setting, strategy, seed).name} ran with {key}={then.get(key)!r} but the same "
                    f"plan now gives {now.get(key)!r} (a preset or default changed since)"
                )
    return None


# ---------------------------------------------------------------- where and how a result was made


def machine() -> str:
    """Cores, CPU name and OS of this machine."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check; the CPU preset's precision auto follows it)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def platform_line() -> str:
    """``machine()`` with the torch version and bf16 support: what a result's numbers depend on."""
    import torch

    return f"{machine()}; torch {torch.__version__}, bf16 supported (mkldnn): {bf16_supported()}"


def git_rev() -> str:
    """The checkout's short revision, and whether it had uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return rev + (" (with uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The invocation as it is typed again from the repository root: ``python -m benchmarks.<script> ARGS``
    (``argv``: the arguments a main was called with in-process; None: this process's)."""
    return " ".join([f"python -m benchmarks.{script}", *(sys.argv[1:] if argv is None else argv)])


def results_header(title: str, command: str, details: list[str], load: tuple | None = None) -> list[str]:
    """A result's markdown header: the title, then command, date, machine (CPU, torch, bf16), git revision, the load
    average (1 min) before / after when ``load`` holds both, and one line per ``details`` item."""
    lines = [
        f"# {title}",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        f"- machine: {platform_line()}",
        f"- git revision: {git_rev()}",
    ]
    if load is not None:
        lines.append(f"- load average (1 min) before / after: {load[0][0]:.2f} / {load[1][0]:.2f}")
    return lines + [f"- {line}" for line in details] + [""]


def write_results(
    out: str | Path, stem: str, title: str, details: list[str], table: str, load0: tuple, load1: tuple
) -> Path:
    """Print ``table`` and write it to ``out/<stem>-<date>.md`` under ``results_header`` (this process's command)."""
    command = command_line(Path(sys.argv[0]).stem)
    header = results_header(title, command, details, (load0, load1))
    print("\n" + table)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}-{datetime.date.today():%Y-%m-%d}.md"
    path.write_text("\n".join(header) + "\n" + table + "\n")
    print(f"\nwrote {path}")
    return path


def invocation(command: str, **counts) -> dict:
    """One invocation of a run, as its run record keeps it: command, date, git, machine, ``counts`` (jobs, threads,
    experiments run and skipped), then minutes and the load average (1 min) before / after (``record_invocation``
    fills in the after)."""
    return {
        "command": command,
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "git": git_rev(),
        "machine": platform_line(),
        **counts,
        "minutes": 0.0,
        "load": [os.getloadavg()[0], float("nan")],
    }


def record_invocation(inv: dict, save: Callable[[], object], run: Callable[[], int]) -> int:
    """``run()`` (it returns how many experiments failed) with ``save()`` (which writes the record holding ``inv``)
    before and after, and ``inv``'s minutes and load average after filled in between."""
    save()
    t0 = time.perf_counter()
    failed = run()
    inv["minutes"], inv["load"][1] = (time.perf_counter() - t0) / 60, os.getloadavg()[0]
    save()
    return failed


def invocation_line(inv: dict, what: str = "experiments") -> str:
    """A report's line for one recorded invocation (``invocation``)."""
    jobs = f"{inv['jobs']} jobs x {inv['threads'] or 'default'} threads, " if "jobs" in inv else ""
    return (
        f"- run: `{inv['command']}` on {inv['date']}, git {inv['git']}, {inv['machine']}; {jobs}{inv['ran']} {what} "
        f"({inv['skipped']} skipped), {inv['minutes']:.1f} min, load average (1 min) before / after: "
        f"{inv['load'][0]:.2f} / {inv['load'][1]:.2f}"
    )


# ---------------------------------------------------------------- the reports' statistics


def ordered(names) -> list[str]:
    """Strategy names in the reports' order (``STRATEGIES``), others after them, sorted."""
    return [s for s in STRATEGIES if s in names] + sorted(set(names) - set(STRATEGIES))


def auc(records: list[dict]) -> float:
    """Area under an experiment's quality-vs-labels curve over the label range (``objective_metrics``): of
    ``stage_quality``, mIoU where records carry it."""
    return objective_metrics(records)["auc"]


def at_stage(stage: int):
    """A metric like ``auc``: the quality of stage ``stage``."""
    return lambda records: stage_quality(records[stage])


def mean_std(values, digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (ddof 0) of ``values`` times ``scale``, to ``digits`` decimals."""
    return f"{np.mean(values) * scale:.{digits}f} ± {np.std(values) * scale:.{digits}f}"


def t_interval(diffs) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences with a 95% Student's t interval (nan bounds below 2 of them)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean())
    if d.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return mean, mean - half, mean + half


def paired(runs: dict, a: str, b: str, metric) -> tuple[float, int, int]:
    """(mean of metric(a) - metric(b) over the seeds both have, seeds where a is ahead, those seeds); ``runs``:
    strategy -> seed -> experiment JSON."""
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    diffs = [metric(runs[a][k]["records"]) - metric(runs[b][k]["records"]) for k in seeds]
    return (float(np.mean(diffs)) if diffs else float("nan")), sum(d > 0 for d in diffs), len(seeds)


def paired_interval(runs: dict, a: str, b: str, metric) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the mean of metric(a) - metric(b) over the seeds both have and its 95% interval
    (``t_interval``; nan bounds below 2 seeds)."""
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    diffs = [metric(runs[a][k]["records"]) - metric(runs[b][k]["records"]) for k in seeds]
    if not diffs:
        return float("nan"), float("nan"), float("nan"), 0
    return (*t_interval(diffs), len(diffs))


def interval_cell(mean: float, low: float, high: float, digits: int = 2, scale: float = 100.0) -> str:
    """``+mean [+low, +high]`` times ``scale``, or ``+mean`` alone where there is no interval (nan bounds)."""
    if np.isnan(low):
        return f"{mean * scale:+.{digits}f}"
    return f"{mean * scale:+.{digits}f} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def paired_cell(runs: dict, a: str, b: str, metric) -> str:
    """A table cell of ``paired_interval`` in points: ``—`` without common seeds."""
    mean, low, high, n = paired_interval(runs, a, b, metric)
    return "—" if n == 0 else interval_cell(mean, low, high)


# ---------------------------------------------------------------- backends that look at a run's calls


class WrappedBackend:
    """A ``tavaal.backends.Backend`` that hands every call to ``inner``: the base of the benchmarks' wrappers, which
    look at the calls (time them, score a second time) and change nothing the run computes. Registered nowhere: a
    script passes it to ``run_experiment`` or ``run_stage``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name

    def prepare(self, data, device) -> None:
        self.inner.prepare(data, device)

    def relabel(self, data) -> None:
        self.inner.relabel(data)

    def train_task(self, job, on_epoch_end=None):
        return self.inner.train_task(job, on_epoch_end)

    def train_vae(self, job, on_progress=None):
        return self.inner.train_vae(job, on_progress)

    def score(self, scorer, indices, batch_size):
        return self.inner.score(scorer, indices, batch_size)

    def close(self) -> None:
        self.inner.close()


class TimedBackend(WrappedBackend):
    """Times each ``train_task``, ``train_vae`` and ``score`` call into ``times[stage][part]`` (seconds); after a
    stage's last call, ``end_stage(record)`` adds the parts that lie between the calls, from the stage record's own
    clocks: nothing in the library is replaced to time them."""

    TASK, VAE, SCORING = "task + ranker training", "VAE + discriminator", "scoring"

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.times: dict = defaultdict(lambda: defaultdict(float))
        self.stage = 0
        self._start: float | None = None  # when the stage's first call began

    def part(self, scorer) -> str:
        """The part a ``score`` call's time goes to (a subclass tells r̂ from the discriminator's scoring)."""
        return self.SCORING

    def timed(self, part: str, fn, *args):
        t = time.perf_counter()
        if self._start is None:
            self._start = t
        try:
            return fn(*args)
        finally:
            self.times[self.stage][part] += time.perf_counter() - t

    def train_task(self, job, on_epoch_end=None):
        return self.timed(self.TASK, self.inner.train_task, job, on_epoch_end)

    def train_vae(self, job, on_progress=None):
        return self.timed(self.VAE, self.inner.train_vae, job, on_progress)

    def score(self, scorer, indices, batch_size):
        return self.timed(self.part(scorer), self.inner.score, scorer, indices, batch_size)

    def end_stage(self, record) -> dict[str, float]:
        """The parts of ``record``'s stage, called once its calls are done (from ``run_experiment``'s ``on_stage``,
        or after ``run_stage``), by subtraction: evaluation, the stage's time less training and query; selection,
        the query's time less the calls timed in it; the stage, from its first call until now; checkpoint, the stage
        less the record's time (saving the stage, when the loop saves it). The next calls count for the next stage."""
        part = self.times[record.stage]
        in_query = sum(v for k, v in part.items() if k != self.TASK)
        part["evaluation"] = record.time_stage - record.time_train - record.time_query
        part["selection"] = record.time_query - in_query
        part["stage"] = time.perf_counter() - (self._start or time.perf_counter())
        part["checkpoint"] = part["stage"] - record.time_stage
        self.stage, self._start = record.stage + 1, None
        return part
