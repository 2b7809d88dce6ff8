"""python -m tavaal.report on a real MLflow store filled through MLflowTracker."""

import subprocess
import sys

import pytest

from tavaal.report import collect, summarize
from tavaal.tracking import MLflowTracker

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
        t.start({"seed": seed, "al": {"strategy": strategy}})
        for stage, acc in enumerate(values):
            t.log_stage(record(stage, acc, [50 * (stage + 1), 50 * (stage + 1)]))
        t.end()
    return uri, tmp


def test_summary_means_and_improvement_over_random(store):
    uri, _ = store
    table = summarize(collect(uri, "rep"))
    rnd, tav = table["random"], table["tavaal"]
    assert [r["labels"] for r in rnd] == [100, 200] and rnd[0]["seeds"] == 2
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
    for name in ("accuracy.png", "improvement.png", "entropy.png", "report.md"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    assert "| tavaal | 200 | 1 | 80.00 ± 0.00 | +15.00 pt |" in (tmp_path / "r" / "report.md").read_text()
    bad = call_main(main, ["--experiment", "nope", "--tracking-uri", uri], capsys)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr
