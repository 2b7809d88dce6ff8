"""The benchmark scripts (the package benchmarks, run as ``python -m benchmarks.<script>``): curves.py on a tiny
synthetic protocol and on tiny shapes (segmentation: mIoU), its settings' presets, its report maths on hand-made
records, and stage_time.py's local vs Ray table on the smoke preset."""

import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common, curves

ROOT = Path(__file__).resolve().parents[1]

# 2 strategies x 2 seeds x 2 settings, 2 stages of 1 epoch, 4 VAE iterations: ~1 s per experiment
TINY = [
    "--data",
    "synthetic",
    "--strategies",
    "random",
    "tavaal",
    "--seeds",
    "2",
    "--set",
    "train.epochs=1",
    "--set",
    "vae.iterations=4",
    "--set",
    "al.stages=2",
    "--name",
    "curves-test",
]
CELL = r"(\d+\.\d\d) ± (\d+\.\d\d)"
# the shapes setting's tiny version (16 + 16 labels of 96 images, 16x16), 2 strategies, 1 seed: ~2 s per experiment
SHAPES = [
    "--data",
    "synthetic",
    "--settings",
    "shapes",
    "--strategies",
    "random",
    "tavaal",
    "--seeds",
    "1",
    "--jobs",
    "1",
    "--name",
    "curves-shapes",
]


def run_script(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def picks(path: Path) -> list[dict]:
    """An experiment's records without their timings."""
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in json.loads(path.read_text())["records"]]


def section(md: str, setting: str) -> str:
    return md.split(f"## {setting}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_curves_runs_resumes_and_rebuilds_its_report(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    first = run_script("curves", *TINY, "--jobs", "2", *out)  # the process pool path
    assert first.stdout.count("] ") == 8 and "ETA" in first.stdout
    run_dir = tmp_path / "curves-test"
    raw = sorted(p.name for p in (run_dir / "raw").glob("*.json"))
    assert raw == [
        f"{s}-{k}-seed{n}.json" for s in ("balanced", "imbalanced") for k in ("random", "tavaal") for n in (0, 1)
    ]
    md = (tmp_path / "curves-test.md").read_text()
    for setting in ("balanced", "imbalanced"):
        part = section(md, setting)
        acc, gain = part.split("Improvement over random", 1)
        rows = {line.split(" | ")[0].strip("| "): line for line in acc.splitlines() if line.startswith("| ")}
        for labels in ("40", "80"):  # smoke preset: 40 initial + 40 per stage
            cells = re.findall(CELL, rows[labels])
            assert len(cells) == 2 and all(0 <= float(m) <= 100 and 0 <= float(s) <= 50 for m, s in cells)
        assert len(re.findall(CELL, rows["**AUC**"])) == 2
        assert re.search(r"\n\| 80 \| [+-]\d+\.\d\d \([0-2]/2\) \|", gain), gain
        assert re.search(r"tavaal vs random: [+-]\d+\.\d pt AUC \([0-2]/2 seeds ahead\)", part)
        assert png_size(run_dir / f"{setting}.png") == (1500, 420)
    imb = section(md, "imbalanced")
    assert "imbalance ratio 10" in imb and "label entropy (norm) of the labeled set at 80 labels" in imb
    # a killed benchmark: one experiment's JSON missing; --resume runs that one alone, to the same records
    lost = run_dir / "raw" / "imbalanced-tavaal-seed1.json"
    before = picks(lost)
    lost.unlink()
    second = run_script("curves", *TINY, "--jobs", "2", "--resume", *out)
    assert "1 experiments to run, 7 skipped" in second.stdout and second.stdout.count("] ") == 1
    assert picks(lost) == before
    resumed = (tmp_path / "curves-test.md").read_text()
    assert resumed.split("\n## ", 1)[1] == md.split("\n## ", 1)[1]  # the same tables
    assert curves.main(["--report-only", "--name", "curves-test", *out]) == 0  # in this process: no torch start-up
    assert (tmp_path / "curves-test.md").read_text() == resumed
    # a second run under the same name must not mix with the first: without --resume, or with another protocol
    assert curves.main([*TINY, *out]) == 2 and "--resume" in capsys.readouterr().err
    assert curves.main([*TINY, "--set", "train.lr=0.2", "--resume", *out]) == 2
    assert "resume it with the same protocol" in capsys.readouterr().err


@pytest.mark.slow
def test_curves_shapes_setting_reports_miou(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    proc = run_script("curves", *SHAPES, *out)
    assert proc.stdout.count("] ") == 2 and "mIoU" in proc.stdout
    run_dir = tmp_path / "curves-shapes"
    # its own preset, tiny: none of the Fashion-MNIST protocol's overrides, no data.name
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["settings"] == {
        "shapes": {"base": "configs/shapes_seg_cpu.yaml", "overrides": list(curves.SHAPES_SMOKE)}
    }
    miou = {}
    for strategy in ("random", "tavaal"):
        exp = json.loads((run_dir / "raw" / f"shapes-{strategy}-seed0.json").read_text())
        assert exp["config"]["task"] == "segmentation" and exp["config"]["data"]["name"] == "shapes_seg"
        assert [r["num_labeled"] for r in exp["records"]] == [16, 32]
        miou[strategy] = [r["miou"] for r in exp["records"]]
        assert all(math.isfinite(m) and 0 <= m <= 1 for m in miou[strategy]), miou
        assert any(r["miou"] != r["accuracy"] for r in exp["records"])  # pixel accuracy is not what gets reported
    part = section((tmp_path / "curves-shapes.md").read_text(), "shapes")
    assert re.search(
        r"shapes_seg: 96 synthetic pool images \(16x16, 5 pixel classes, ~[789]\d% background\), test "
        r"split of 32; label entropy: of the labeled set's pixel classes",
        part,
    ), part
    table = part.split("Test mIoU (%), mean ± std over seeds:", 1)[1].split("Improvement", 1)[0]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    # one seed: std 0, mean = the record's mIoU; AUC of two stages = their mean
    assert rows == [
        f"| {n} | {miou['random'][i] * 100:.2f} ± 0.00 | {miou['tavaal'][i] * 100:.2f} ± 0.00 |"
        for i, n in enumerate((16, 32))
    ]
    assert f"| **AUC** | {sum(miou['random']) * 50:.2f} ± 0.00 | {sum(miou['tavaal']) * 50:.2f} ± 0.00 |" in table
    gain = (sum(miou["tavaal"]) - sum(miou["random"])) * 50
    assert (
        f"- tavaal vs random: {gain:+.1f} pt mIoU AUC ({int(gain > 0)}/1 seeds ahead), "
        f"{(miou['tavaal'][1] - miou['random'][1]) * 100:+.1f} pt mIoU at 32 labels"
    ) in part
    assert "accuracy" not in part.split("Preset:", 1)[1]
    assert png_size(run_dir / "shapes.png") == (1500, 420)
    assert curves.main([*SHAPES, "--set", "train.lr=0.2", "--resume", *out]) == 2
    assert "resume it with the same protocol" in capsys.readouterr().err


def test_curves_settings_carry_their_presets_and_default_strategies(monkeypatch):
    args = curves.parse_args(["--settings", "balanced", "shapes", "--seeds", "1"])
    todo = curves.plan(args, curves.setting_configs(args), threads=1)
    fmnist = [t for t in todo if t[0] == "balanced"]
    assert [t[1] for t in fmnist] == list(curves.STRATEGIES)
    assert all(
        base == "configs/fashionmnist_tavaal_cpu.yaml"
        and sets[: len(curves.CPU_PROTOCOL)] == curves.CPU_PROTOCOL
        and "data.name=fashionmnist" in sets
        for _, _, _, base, sets in fmnist
    )
    assert [t[1:] for t in todo if t[0] == "shapes"] == [
        (k, 0, "configs/shapes_seg_cpu.yaml", ["num_threads=1", f"al.strategy={k}", "seed=0"])
        for k in ("random", "entropy", "lloss", "vaal", "tavaal")
    ]
    assert curves.parse_args([]).settings == ["balanced", "imbalanced"]  # the Fashion-MNIST command as before
    chosen = curves.parse_args(["--settings", "imbalanced", "shapes", "--strategies", "vaal", "random"])
    assert [t[:3] for t in curves.plan(chosen, curves.setting_configs(chosen), 0)] == [  # seed by seed
        (s, k, n) for n in range(3) for s in ("imbalanced", "shapes") for k in ("vaal", "random")
    ]
    with pytest.raises(SystemExit):
        curves.parse_args(["--paper", "--settings", "shapes"])
    # a run.json written before settings had presets of their own resumes with the same command, under the protocol
    # of its day (10 epochs: the CPU protocol trains 30 since 2026-12-02)
    legacy = json.loads((ROOT / "benchmarks/results/curves-2026-11-25/run.json").read_text())
    then = [
        p.replace("epochs=30", "epochs=10").replace("[24]", "[8]").replace("epoch=18", "epoch=6")
        for p in curves.CPU_PROTOCOL
    ]
    monkeypatch.setitem(curves.PROTOCOLS, "cpu", (curves.PROTOCOLS["cpu"][0], then))
    assert {
        s: (c["base"], c["overrides"]) for s, c in curves.recorded_settings(legacy).items()
    } == curves.setting_configs(curves.parse_args([]))


def fake_run(tmp_path: Path, accs: dict[str, list[list[float]]], entropy: dict[str, float]) -> Path:
    """A finished run with hand-made records (labels 100, 200, 400): strategy -> per seed accuracies."""
    run_dir = tmp_path / "fake"
    (run_dir / "raw").mkdir(parents=True)
    meta = {"protocol": "cpu", "base": "configs/x.yaml", "overrides": [], "invocations": []}
    (run_dir / "run.json").write_text(json.dumps(meta))
    config = {"data": {"name": "fashionmnist", "imbalance_ratio": 10.0, "minority_classes": "even"}}
    for strategy, per_seed in accs.items():
        for seed, ys in enumerate(per_seed):
            records = [
                {"num_labeled": n, "accuracy": y, "label_entropy": 1.0, "label_entropy_norm": entropy[strategy]}
                for n, y in zip((100, 200, 400), ys)
            ]
            path = run_dir / "raw" / f"imbalanced-{strategy}-seed{seed}.json"
            path.write_text(json.dumps({"config": config, "minutes": 1.5, "records": records}))
    return run_dir


def test_curves_report_numbers_on_known_records(tmp_path):
    fake_run(
        tmp_path,
        {
            "random": [[0.5, 0.6, 0.7], [0.5, 0.7, 0.8]],
            "tavaal": [[0.5, 0.7, 0.8], [0.5, 0.6, 0.7]],
            "vaal": [[0.6, 0.6, 0.6], [0.4, 0.8, 0.9]],
        },
        {"random": 0.8, "tavaal": 0.9, "vaal": 0.85},
    )
    md = curves.write_report(tmp_path, "fake").read_text()
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in md.split("Improvement")[0].splitlines()
        if line.startswith("| ")
    }
    # seed 0 random: AUC = (100·0.55 + 200·0.65) / 300 = 61.67 %, seed 1: (100·0.6 + 200·0.75) / 300 = 70 %
    # columns in the strategies' order: random, vaal, tavaal; vaal: 60 % and (100·0.6 + 200·0.85)/300 = 76.67 %
    assert "| **AUC** | 65.83 ± 4.17 | 68.33 ± 8.33 | 65.83 ± 4.17 |" in md
    assert rows["400"] == "| 400 | 75.00 ± 5.00 | 75.00 ± 15.00 | 75.00 ± 5.00 |"
    # paired by seed: tavaal - random = +10, -10 at 400 labels; vaal - random = -10, +10
    assert "| 400 | +0.00 (1/2) | +0.00 (1/2) |" in md
    # AUC vs random: vaal -1.67, +6.67 -> +2.50 (1/2); tavaal +8.33, -8.33
    assert "| **AUC** | +2.50 (1/2) | +0.00 (1/2) |" in md
    assert "- tavaal vs random: +0.0 pt AUC (1/2 seeds ahead), +0.0 pt at 400 labels (1/2 seeds ahead)" in md
    assert "- tavaal vs vaal: -2.5 pt AUC (1/2 seeds ahead)" in md
    # 95% intervals over two paired seeds, mean ± t(0.975, 1) · sd / sqrt(2) with t = 12.706: AUC vaal - random
    # -1.67, +6.67 (sd 5.89); tavaal - random +8.33, -8.33 (sd 11.79); tavaal - vaal +10, -15 (sd 17.68)
    assert "| labels | vaal − random | tavaal − random | tavaal − vaal |" in md
    assert "| **AUC** | +2.50 [-50.44, +55.44] | +0.00 [-105.89, +105.89] | -2.50 [-161.33, +156.33] |" in md
    assert "AUC 95% interval [-105.9, +105.9]" in md
    assert "tavaal 0.900 ± 0.000, random 0.800 ± 0.000" in md
    assert "| label entropy (norm), last stage | 0.800 ± 0.000 | 0.850 ± 0.000 | 0.900 ± 0.000 |" in md
    assert png_size(tmp_path / "fake" / "imbalanced.png") == (1500, 420)


def test_curves_eta_uses_each_strategys_mean():
    done = {"random": [1.0, 3.0], "tavaal": [10.0]}
    # random 2 + tavaal 10 + vaal (not run yet): the mean of all finished, 14 / 3; two at a time
    assert curves.eta_minutes(done, ["random", "tavaal", "vaal"], jobs=2) == pytest.approx((2 + 10 + 14 / 3) / 2)


def test_stage_time_table_has_every_part_for_both_backends(tmp_path, ray_cluster, capsys, monkeypatch):
    # the kept worker group only: a TorchTrainer.fit() per job costs ~13 s each here (test_ray_train.py covers it);
    # the script's main in this process, on the session's Ray (no interpreter, torch or Ray start-up)
    import runpy

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "stage_time.py",
            "--config",
            "configs/smoke.yaml",
            "--stages",
            "2",
            "--set",
            "train.epochs=1",
            "--set",
            "vae.iterations=4",
            "--ray-modes",
            "kept",
            "--out",
            str(tmp_path),
        ],
    )
    runpy.run_module("benchmarks.stage_time", run_name="__main__")
    out = capsys.readouterr().out
    md = next(tmp_path.glob("stage-time-*.md")).read_text()
    assert "| stage | part | local s | Ray, kept s | Ray, kept / local |" in md
    assert "same selections with every backend: yes" in md
    for part in ("task + ranker training", "VAE + discriminator", "scoring", "**stage**"):
        row = next(line for line in md.splitlines() if line.startswith(f"| 0 | {part} |"))
        local, ray, ratio = (float(v) for v in row.strip("| ").split(" | ")[2:5])
        assert local > 0 and ray > 0 and ratio == pytest.approx(ray / local, rel=0.2), row  # of unrounded times
    assert "| 1 | **stage** |" in md and "wrote" in out  # stages numbered from 0, as everywhere


@pytest.mark.slow
def test_ablations_pair_variants_with_their_baselines(tmp_path):
    """ablations.py on the smoke preset: a variant pulls in its baseline's runs, and its table pairs them by seed."""
    from benchmarks import ablations

    run_script(
        "ablations",
        "--protocol",
        "smoke",
        "--variants",
        "batch_bn",
        "--seeds",
        "2",
        "--set",
        "al.stages=2",
        "--set",
        "vae.iterations=3",
        "--set",
        "train.epochs=1",
        "--out",
        str(tmp_path),
        "--name",
        "abl",
    )
    raw = sorted(p.name for p in (tmp_path / "abl" / "raw").glob("*.json"))
    assert raw == sorted(
        f"{v}-{s}-seed{k}.json"
        for k in (0, 1)
        for v, ss in (("standard", ("random", "lloss_rank", "vaal", "tavaal")), ("batch_bn", ("vaal", "tavaal")))
        for s in ss
    )
    md = (tmp_path / "abl.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| batch_bn |") and "| tavaal |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    runs = curves.load_raw(tmp_path / "abl")
    d, ahead, n = curves.paired(
        {"a": runs["batch_bn"]["tavaal"], "b": runs["standard"]["random"]}, "a", "b", curves.auc
    )
    assert cells[5] == f"{d * 100:+.2f} ({ahead}/{n})" and n == 2  # vs random: the standard variant's random
    d, ahead, n = curves.paired({"a": runs["batch_bn"]["tavaal"], "b": runs["batch_bn"]["vaal"]}, "a", "b", curves.auc)
    assert cells[7] == f"{d * 100:+.2f} ({ahead}/{n})"  # vs vaal: its own variant's vaal
    assert cells[10] != "—" and cells[12] != "—"  # the game's health: discriminator loss tail, r̂ AUROC
    assert ablations.variant_configs("fit")["fit_balanced"][1] == ("random", "lloss_rank", "vaal", "tavaal")


def test_paired_interval_and_minority_share_on_known_answers():
    """The curves report's 95% interval (Student's t over paired seed differences) and the minority classes'
    share of a stage's picks (from the growth of the labeled set's class counts)."""

    def run(acc):
        return {"records": [{"accuracy": acc, "num_labeled": 1}]}

    runs = {"a": {k: run(v) for k, v in enumerate((0.3, 0.5, 0.7))}, "b": {k: run(0.2) for k in range(3)}}
    mean, low, high, n = curves.paired_interval(runs, "a", "b", curves.at_stage(0))
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n): diffs 0.1, 0.3, 0.5 have sd 0.2
    assert n == 3 and mean == pytest.approx(0.3) and (low, high) == pytest.approx((0.3 - half, 0.3 + half))
    assert curves.paired_interval({"a": {0: run(0.5)}, "b": {0: run(0.2)}}, "a", "b", curves.at_stage(0))[3] == 1
    records = [{"label_counts": [5, 5, 5]}, {"label_counts": [8, 6, 11]}, {"label_counts": [8, 6, 11]}]
    assert curves.minority_share(records, 0, [0, 2]) == pytest.approx(9 / 10)
    assert curves.minority_share(records, 1, [0, 2]) is None and curves.minority_share(records, 2, [0]) is None


def test_curves_resume_refuses_finished_experiments_whose_config_changed_since(tmp_path):
    """A preset or default that changed since an experiment finished: its resolved config no longer matches the
    plan, which run.json's overrides cannot show. A field recorded before it existed takes its default."""
    from tavaal.config import load_config

    run_dir = tmp_path / "run"
    (run_dir / "raw").mkdir(parents=True)
    overrides = ["al.strategy=random", "seed=0"]
    config = load_config(ROOT / "configs/smoke.yaml", overrides).to_dict()
    del config["vae"]["normalize"]  # written by a version without the field (its default then: true)
    common.raw_path(run_dir, "balanced", "random", 0).write_text(json.dumps({"config": config}))
    finished = [("balanced", "random", 0, "configs/smoke.yaml", overrides)]
    assert common.changed_config(run_dir, finished) is None
    finished = [("balanced", "random", 0, "configs/smoke.yaml", [*overrides, "vae.normalize=false"])]
    said = common.changed_config(run_dir, finished)
    assert said == (
        "balanced-random-seed0.json ran with vae.normalize=True but the same plan now gives False (a preset or "
        "default changed since)"
    )
