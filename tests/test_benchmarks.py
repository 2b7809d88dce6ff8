"""The benchmark scripts (benchmarks/ is not a package): curves.py on a tiny synthetic protocol, its report maths on
hand-made records, and stage_time.py's local vs Ray table on the smoke preset."""
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import curves  # noqa: E402

# 2 strategies x 2 seeds x 2 settings, 2 stages of 1 epoch, 4 VAE iterations: ~1 s per experiment
TINY = ["--data", "synthetic", "--strategies", "random", "tavaal", "--seeds", "2", "--set", "train.epochs=1",
        "--set", "vae.iterations=4", "--set", "al.stages=2", "--name", "curves-test"]
CELL = r"(\d+\.\d\d) ± (\d+\.\d\d)"


def run_script(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
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


def test_curves_runs_resumes_and_rebuilds_its_report(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    first = run_script("curves.py", *TINY, "--jobs", "2", *out)  # the process pool path
    assert first.stdout.count("] ") == 8 and "ETA" in first.stdout
    run_dir = tmp_path / "curves-test"
    raw = sorted(p.name for p in (run_dir / "raw").glob("*.json"))
    assert raw == [f"{s}-{k}-seed{n}.json" for s in ("balanced", "imbalanced") for k in ("random", "tavaal")
                   for n in (0, 1)]
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
    second = run_script("curves.py", *TINY, "--jobs", "2", "--resume", *out)
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


def fake_run(tmp_path: Path, accs: dict[str, list[list[float]]], entropy: dict[str, float]) -> Path:
    """A finished run with hand-made records (labels 100, 200, 400): strategy -> per seed accuracies."""
    run_dir = tmp_path / "fake"
    (run_dir / "raw").mkdir(parents=True)
    meta = {"protocol": "cpu", "base": "configs/x.yaml", "overrides": [], "invocations": []}
    (run_dir / "run.json").write_text(json.dumps(meta))
    config = {"data": {"name": "fashionmnist", "imbalance_ratio": 10.0, "minority_classes": "even"}}
    for strategy, per_seed in accs.items():
        for seed, ys in enumerate(per_seed):
            records = [{"num_labeled": n, "accuracy": y, "label_entropy": 1.0, "label_entropy_norm": entropy[strategy]}
                       for n, y in zip((100, 200, 400), ys)]
            path = run_dir / "raw" / f"imbalanced-{strategy}-seed{seed}.json"
            path.write_text(json.dumps({"config": config, "minutes": 1.5, "records": records}))
    return run_dir


def test_curves_report_numbers_on_known_records(tmp_path):
    fake_run(tmp_path, {"random": [[0.5, 0.6, 0.7], [0.5, 0.7, 0.8]],
                        "tavaal": [[0.5, 0.7, 0.8], [0.5, 0.6, 0.7]],
                        "vaal": [[0.6, 0.6, 0.6], [0.4, 0.8, 0.9]]},
             {"random": 0.8, "tavaal": 0.9, "vaal": 0.85})
    md = curves.write_report(tmp_path, "fake").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in md.split("Improvement")[0].splitlines()
            if line.startswith("| ")}
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
    assert "tavaal 0.900 ± 0.000, random 0.800 ± 0.000" in md
    assert "| label entropy (norm), last stage | 0.800 ± 0.000 | 0.850 ± 0.000 | 0.900 ± 0.000 |" in md
    assert png_size(tmp_path / "fake" / "imbalanced.png") == (1500, 420)


def test_curves_eta_uses_each_strategys_mean():
    done = {"random": [1.0, 3.0], "tavaal": [10.0]}
    # random 2 + tavaal 10 + vaal (not run yet): the mean of all finished, 14 / 3; two at a time
    assert curves.eta_minutes(done, ["random", "tavaal", "vaal"], jobs=2) == pytest.approx((2 + 10 + 14 / 3) / 2)


def test_stage_time_table_has_every_part_for_both_backends(tmp_path):
    proc = run_script("stage_time.py", "--config", "configs/smoke.yaml", "--stages", "2", "--set", "train.epochs=1",
                      "--set", "vae.iterations=4", "--out", str(tmp_path), timeout=400)
    md = next(tmp_path.glob("stage-time-*.md")).read_text()
    assert "| stage | part | local s | Ray s | Ray / local |" in md and "same selections with both backends: yes" in md
    for part in ("task + ranker training", "VAE + discriminator", "scoring", "**stage**"):
        row = next(line for line in md.splitlines() if line.startswith(f"| 1 | {part} |"))
        local, ray = (float(v) for v in row.split(" | ")[2:4])
        assert local > 0 and ray > 0, row
    assert "| 2 | **stage** |" in md and "wrote" in proc.stdout
