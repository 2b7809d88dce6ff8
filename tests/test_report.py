"""python -m tavaal.report on a real MLflow store filled through MLflowTracker."""

import subprocess
import sys

import pytest

from tavaal.errors import ConfigError
from tavaal.report import collect, group_runs, summarize
from tavaal.tracking import MLflowTracker
from tavaal.tracking.parent import start_parent_run

from conftest import ROOT, call_main


def record(stage, acc, counts):
    return {
        "stage": stage,
        "num_labeled": sum(counts),
        "accuracy": acc,
        "balanced_accuracy": acc,
        "per_class_accuracy": [acc, acc],
        "label_counts": counts,
        "label_entropy": 0.5,
        "label_entropy_norm": 0.7,
        "selected": [],
        "time_train": 1.0,
        "time_query": 0.0,
        "time_stage": 1.0,
        "info": {},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    accs = {("random", 0): [0.5, 0.6], ("random", 1): [0.6, 0.7], ("tavaal", 0): [0.55, 0.8]}
    for (strategy, seed), values in accs.items():
        t = MLflowTracker(uri, "rep", run_name=f"{strategy}-{seed}", artifact_location=str(tmp / "art"))
        t.start({"seed": seed, "data": {"name": "synthetic"}, "al": {"strategy": strategy}})
        for stage, acc in enumerate(values):
            t.log_stage(record(stage, acc, [50 * (stage + 1), 50 * (stage + 1)]))
        t.end()
    return uri, tmp


def test_summary_means_and_improvement_over_random(store):
    """Single runs differing by seed alone: the seeds are averaged (and said to be seeds)."""
    uri, _ = store
    groups = group_runs(collect(uri, "rep"))
    assert list(groups) == ["single runs on synthetic"]
    table = summarize(groups["single runs on synthetic"])
    rnd, tav = table["random"]["rows"], table["tavaal"]["rows"]
    assert table["random"]["kind"] == "seeds" and table["random"]["n"] == 2
    assert [r["labels"] for r in rnd] == [100, 200] and rnd[0]["runs"] == 2
    assert rnd[1]["mean"] == pytest.approx(0.65) and rnd[1]["std"] == pytest.approx(0.05)
    assert tav[1]["vs_random"] == pytest.approx(0.15) and tav[0]["vs_random"] == pytest.approx(0.0)


def test_report_cli_writes_figures_and_table(store, tmp_path, capsys):
    """The real command line (a subprocess), then a bad experiment through tavaal.report.main in this process."""
    from tavaal.report import main

    uri, _ = store
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tavaal.report",
            "--experiment",
            "rep",
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "r" / "single_runs_on_synthetic"
    for name in ("accuracy.png", "improvement.png", "entropy.png"):
        assert (folder / name).stat().st_size > 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| tavaal | 200 | 1 seeds | 80.00 | +15.00 pt |" in md
    assert "random: 2 seeds averaged" in md and "tavaal: 1 run (one seed)" in md
    bad = call_main(main, ["--experiment", "nope", "--tracking-uri", uri], capsys)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr
    assert "tavaal-sweep" in bad.stderr  # the name the README's sweep writes


# ---------------------------------------------------------------- sweeps kept apart (issue 25)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """Two sweeps as python -m tavaal.sweep leaves them (a parent run, a child per trial), on different data:
    'syn' = 2 tavaal trials (two eta values) on synthetic data, 'fm' = 2 tavaal trials on fashionmnist and one
    random run. Stage metrics only, through MLflowTracker: no training."""
    tmp = tmp_path_factory.mktemp("sweeps")
    uri = f"sqlite:///{tmp}/mlflow.db"
    plan = {
        "syn": ("synthetic", 40, {("tavaal", 1.0): [0.5, 0.9], ("tavaal", 0.5): [0.5, 0.7]}),
        "fm": (
            "fashionmnist",
            100,
            {("tavaal", 1.0): [0.6, 0.7], ("tavaal", 0.5): [0.62, 0.8], ("random", 1.0): [0.6, 0.65]},
        ),
    }
    for sweep, (data, initial, trials) in plan.items():
        parent = start_parent_run(uri, "sw", sweep, {"sweep.objective": "auc"})
        for i, ((strategy, eta), accs) in enumerate(trials.items()):
            t = MLflowTracker(uri, "sw", run_name=f"{sweep}-{i}", parent_run_id=parent, sweep=sweep)
            config = {"seed": 0, "data": {"name": data}, "al": {"strategy": strategy, "initial": initial}}
            t.start(config | {"train": {"eta": eta}})
            for stage, acc in enumerate(accs):
                t.log_stage(record(stage, acc, [initial // 2 * (stage + 1)] * 2))
            t.end()
    return uri


def test_two_sweeps_on_different_data_are_reported_apart(two_sweeps, tmp_path, capsys):
    from tavaal.report import main

    uri = two_sweeps
    groups = group_runs(collect(uri, "sw"))
    assert sorted(groups) == ["fm on fashionmnist", "syn on synthetic"]
    syn = summarize(groups["syn on synthetic"])["tavaal"]
    assert [r["labels"] for r in syn["rows"]] == [40, 80]  # its own label counts: nothing of fm's 100, 200
    res = call_main(main, ["--experiment", "sw", "--tracking-uri", uri, "--out", tmp_path / "r"], capsys)
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## fm on fashionmnist" in md and "## syn on synthetic" in md
    assert (tmp_path / "r" / "syn_on_synthetic" / "accuracy.png").exists()
    assert (tmp_path / "r" / "fm_on_fashionmnist" / "improvement.png").exists()
    assert not (tmp_path / "r" / "syn_on_synthetic" / "improvement.png").exists()  # no random: no empty figure
    # asked to combine them: one line, exit 2, nothing written
    res = call_main(main, ["--experiment", "sw", "--tracking-uri", uri, "--out", tmp_path / "c", "--combine"], capsys)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "different data sets" in lines[0], res.stderr
    assert "data.name=" in lines[0] and not (tmp_path / "c").exists()


def test_a_report_of_trials_says_trials_and_shows_the_best_point(two_sweeps):
    table = summarize(group_runs(collect(two_sweeps, "sw"), sweeps=["fm"])["fm on fashionmnist"])
    tav = table["tavaal"]
    assert tav["kind"] == "trials" and tav["n"] == 2  # two hyperparameter points of seed 0, not "2 seeds"
    assert tav["best"] == {"train.eta": "0.5"}  # the better area under the curve: 0.62 -> 0.8
    assert [r["mean"] for r in tav["rows"]] == [0.62, 0.8]
    assert [(r["low"], r["high"]) for r in tav["rows"]] == [(0.6, 0.62), (0.7, 0.8)]  # the spread of the points
    assert table["random"]["kind"] == "seeds" and tav["rows"][1]["vs_random"] == pytest.approx(0.15)
    from tavaal.report import _what

    assert "2 trials (hyperparameter points, not seeds); best point train.eta=0.5" in _what("tavaal", tav)


def test_combining_sweeps_on_the_same_data_and_protocol_is_allowed_but_not_other_protocols(two_sweeps):
    runs = collect(two_sweeps, "sw")
    (label,) = group_runs(runs, sweeps=["syn"], combine=True)
    assert label == "syn"
    other = [r for r in runs if r.sweep == "fm"]
    for r in other:  # the same data, another protocol (the initial labels)
        r.data = next(x for x in runs if x.sweep == "syn").data
    with pytest.raises(ConfigError, match="different protocols .*al.initial") as e:
        group_runs([r for r in runs if r.sweep == "syn"] + other, combine=True)
    assert "\n" not in str(e.value)


def test_no_figure_without_artists(tmp_path):
    """A figure is written only with something drawn on it, and its title says what it is."""
    from tavaal.tracking.plots import strategy_figures

    row = {"labels": 10, "runs": 1, "mean": 0.5, "std": 0.0, "low": 0.5, "high": 0.5, "vs_random": None}
    table = {"tavaal": {"kind": "seeds", "n": 1, "rows": [row | {"entropy": float("nan"), "entropy_norm": 0.0}]}}
    written = strategy_figures(table, tmp_path, "g on synthetic")
    assert [p.name for p in written] == ["accuracy.png"]  # no random and no entropy: nothing else to draw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png"]
    from tavaal.tracking.plots import report_figures

    assert [what for *_, what in report_figures("mIoU")] == [
        "test mIoU vs labels",
        "mIoU minus random's vs labels",
        "label entropy of the labeled set vs labels",
    ]
