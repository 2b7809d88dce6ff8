"""benchmarks/official_equivalence.py: its comparison maths on hand-made picks, our half on the smoke preset, and the
official half on a tiny Fashion-MNIST stage when a checkout of the official code is given (``TAVAAL_OFFICIAL_DIR``,
from ``git clone https://github.com/cubeyoung/TA-VAAL``; skipped without it)."""

import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks import official_equivalence as eq

ROOT = Path(__file__).resolve().parents[1]

OFFICIAL = os.environ.get("TAVAAL_OFFICIAL_DIR")
needs_official = pytest.mark.skipif(
    not OFFICIAL,
    reason="set TAVAAL_OFFICIAL_DIR to a checkout of the official code (git clone https://github.com/cubeyoung/TA-VAAL)",
)


# ---------------------------------------------------------------- the comparison maths


def test_jaccard_and_means():
    assert eq.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(0.5)
    assert eq.jaccard([1, 2], [3, 4]) == 0.0
    # pairs: (a, a) 1, (a, b) 0, (a, b) 0
    assert eq.mean_within([[0, 1], [0, 1], [2, 3]]) == pytest.approx(1 / 3)
    assert eq.mean_within([[0, 1]]) != eq.mean_within([[0, 1]])  # nan: one seed has no pair
    # [0, 1] against [0, 1] (1) and [1, 2] (1/3)
    assert eq.mean_across([[0, 1]], [[0, 1], [1, 2]]) == pytest.approx(2 / 3)


def test_chance_jaccard():
    assert eq.chance_jaccard(2, 1) == pytest.approx(0.5)  # the same one of two, or not
    # 2 of 4: overlap 0, 1, 2 with probabilities 1/6, 4/6, 1/6 -> Jaccard 0, 1/3, 1
    assert eq.chance_jaccard(4, 2) == pytest.approx(4 / 6 / 3 + 1 / 6)
    assert eq.chance_jaccard(1000, 100) == pytest.approx(0.053, abs=0.001)  # the brief's "about 0.053"


def test_minority_share_and_tenths():
    import numpy as np

    targets = np.array([0, 1, 2, 3, 4, 5])
    assert eq.minority_share([0, 1, 2], targets, [0, 2, 4]) == pytest.approx(2 / 3)
    assert eq.minority_share([1, 3], targets, [0, 2, 4]) == 0.0
    assert eq.tenths(list(range(20))) == pytest.approx([0.5 + 2 * i for i in range(10)])
    assert eq.tenths([1.0, 3.0]) == [1.0, 3.0]  # fewer iterations than tenths: one part each


def test_verdict():
    shares = [0.40, 0.60]
    v = eq.verdict(0.30, 0.26, [0.45, 0.55], shares)
    assert v["equal"] and v["overlap_ok"] and v["share_ok"] and v["share"] == pytest.approx(0.5)
    v = eq.verdict(0.30, 0.24, [0.45, 0.55], shares)  # across more than 0.05 below within-official
    assert not v["equal"] and not v["overlap_ok"] and v["share_ok"]
    v = eq.verdict(0.30, 0.40, [0.65, 0.75], shares)  # mean share 0.70 outside [0.40, 0.60]
    assert not v["equal"] and v["overlap_ok"] and not v["share_ok"]
    assert v["official_range"] == [0.40, 0.60]


def test_summary_and_noise():
    """Hand-made runs: official picks that repeat (not noise) or that are near chance (noise)."""
    import numpy as np

    targets = np.arange(1000) % 10  # even classes are the minority
    curve = [1.5] * 10 + [1.3] * 10

    def runs(side, picks):
        return [
            {"side": side, "seed": s, "picks": p, "disc_losses": curve, "seconds": 2.0} for s, p in enumerate(picks)
        ]

    official = [list(range(0, 100)), list(range(10, 110))]  # within: 90 / 110
    ours = [list(range(5, 105)), list(range(0, 100))]
    s = eq.summarize_runs(
        runs("official", official) + runs("ours, raw pixels", ours), targets, [0, 2, 4, 6, 8], 1000, 100
    )
    off, mine = s["sides"]["official"], s["sides"]["ours, raw pixels"]
    assert off["within"] == pytest.approx(90 / 110)
    assert mine["across"] == pytest.approx(np.mean([95 / 105, 1.0, 95 / 105, 90 / 110]))
    assert off["shares"] == [0.5, 0.5] and mine["verdict"]["equal"] and not s["noise"]
    assert off["tenths"][0] == pytest.approx(1.5) and off["tenths"][-1] == pytest.approx(1.3)
    assert off["seconds_per_iteration"] == pytest.approx(0.1)
    words = " ".join(eq.verdict_words(s))
    assert "ours, raw pixels: equal" in words and "noise" not in words
    assert "| Equal to the official code | — | **yes** |" in eq.table(s)

    rng = np.random.default_rng(0)
    noisy = [sorted(rng.choice(1000, 100, replace=False).tolist()) for _ in range(3)]
    s = eq.summarize_runs(runs("official", noisy) + runs("ours, normalized", ours), targets, [0, 2], 1000, 100)
    assert s["noise"] and "are noise" in " ".join(eq.verdict_words(s))


# ---------------------------------------------------------------- our half, the smoke preset

SMOKE = ["--config", "configs/smoke.yaml", "--protocol", "none", "--iterations", "3", "--batch", "16", "--jobs", "1"]


def test_ours_smoke(tmp_path, capsys):
    rc = eq.main([*SMOKE, "--seeds", "2", "--out", str(tmp_path), "--name", "eq"])
    assert rc == 0
    raw = json.loads((tmp_path / "eq.json").read_text())
    assert raw["iterations"] == 3
    sides = {(r["side"], r["seed"]) for r in raw["runs"]}
    assert sides == {(s, k) for s in ("ours, normalized", "ours, raw pixels") for k in (0, 1)}
    for r in raw["runs"]:
        assert len(r["picks"]) == 40 and set(r["picks"]) <= set(raw["candidates"])  # the smoke preset's budget
        assert len(r["disc_losses"]) == 3  # every iteration's loss, not one in 100
    md = (tmp_path / "eq.md").read_text()
    assert "our half only, no verdict" in md and "Jaccard within" in md and "- command:" in md
    assert "batch 16" in md and "3 iterations (--iterations)" in md


def test_bad_official_folder(tmp_path, capsys):
    assert eq.main([*SMOKE, "--official", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "not a checkout of the official TA-VAAL code" in err and "git clone https://github.com/cubeyoung/TA-VAAL" in err
    )
    assert eq.main([*SMOKE, "--seeds", "0"]) == 2


# ---------------------------------------------------------------- the official half


@needs_official
def test_official_import_and_narrow_vae():
    """The official module imports from its folder without leaving its common names (config, models, data) behind,
    and its VAE narrowed to base 8 has exactly our 28x28 VAE's parameter shapes."""
    import torch

    from tavaal.models import VAE

    sm = eq.import_official(OFFICIAL)
    assert not {"config", "models", "data", "selection_methods"} & set(sys.modules)
    cuda = torch.Tensor.cuda
    shapes = eq.official_vae_shapes(sm, 8)
    assert torch.Tensor.cuda is cuda  # the device patch is undone
    ours = {k: tuple(v.shape) for k, v in VAE((1, 28, 28), 28, 8, 1).state_dict().items()}
    assert shapes == ours


@needs_official
def test_official_half_tiny(tmp_path):
    """Both halves on a tiny Fashion-MNIST stage: the official code runs its training and scoring here."""
    tiny = [
        "--config",
        "configs/fashionmnist_tavaal_cpu.yaml",
        "--protocol",
        "none",
        "--official",
        OFFICIAL,
        "--iterations",
        "3",
        "--batch",
        "16",
        "--base-channels",
        "8",
        "--seeds",
        "2",
        "--jobs",
        "1",
        "--ours-normalize",
        "false",
        "--out",
        str(tmp_path),
        "--name",
        "eq",
        *("--set data.num_train=2000 --set data.num_test=200 --set train.epochs=2 --set al.initial=40".split()),
        *("--set al.budget=20 --set al.subset_size=100".split()),
    ]
    from tavaal.data.fashionmnist import DEBIAN_DIR

    if not DEBIAN_DIR.is_dir():
        pytest.skip("real Fashion-MNIST files are needed (apt-get install dataset-fashion-mnist)")
    assert eq.main(tiny) == 0
    raw = json.loads((tmp_path / "eq.json").read_text())
    official = [r for r in raw["runs"] if r["side"] == "official"]
    assert len(official) == 2
    for r in official:
        assert len(r["picks"]) == 20 and set(r["picks"]) <= set(raw["candidates"]) and len(set(r["picks"])) == 20
        assert len(r["disc_losses"]) == 3
    md = (tmp_path / "eq.md").read_text()
    assert "parameter shapes then equal ours: True" in md and "ours, raw pixels:" in md
