"""docs/: the configuration reference is generated from tavaal/config.py and kept current."""

import dataclasses
import subprocess
import sys

from tavaal import config_doc

from conftest import ROOT

DOC = ROOT / "docs" / "configuration.md"


def rows() -> dict[str, list[str]]:
    """Dotted key -> its table row(s) in the committed page."""
    out: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            out.setdefault(line.split("`")[1], []).append(line)
    return out


def test_config_doc_is_current():
    assert DOC.read_text() == config_doc.render(), (
        "docs/configuration.md is stale; regenerate it: python -m tavaal.config_doc > docs/configuration.md"
    )
    check = subprocess.run(
        [sys.executable, "-m", "tavaal.config_doc", "--check"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr


def test_every_field_once_with_its_real_default():
    found = rows()
    expected = set()
    for prefix, cls in config_doc.sections():
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory):
                continue
            key = prefix + f.name
            expected.add(key)
            assert len(found.get(key, [])) == 1, f"{key} must have exactly one row"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert f"| `{config_doc.cell(config_doc.yaml_value(default))}` |" in found[key][0], key
    assert set(found) == expected  # nothing stale or invented
    assert {"seed", "data.name", "model.name", "train.lr", "vae.score_bn", "al.subset_size", "backend.name"} <= expected
    assert "| `batch` |" in found["vae.score_bn"][0]
    assert "| `10000` |" in found["al.subset_size"][0]
    assert "| `0.1` |" in found["train.lr"][0]
    assert "| `null` |" in found["data.num_train"][0]


def test_rows_carry_the_provenance_descriptions():
    found = rows()
    assert "(paper: 10,000)" in found["al.subset_size"][0]
    assert "official code LR = 0.1" in found["train.lr"][0]
    assert "\\|L\\|" in found["vae.iterations"][0]  # pipes escaped
    # a description written over several lines is one row; a heading is a row of its own, not the field's
    assert 'or "running" (eval mode' in found["vae.score_bn"][0]
    assert "when every pool label is known, else manual" in found["al.oracle"][0]
    assert "your own images" not in found["data.download"][0]
    assert "*your own images" in DOC.read_text()


def test_check_fails_on_a_stale_page(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text(config_doc.render().replace("| `0.1` |", "| `0.2` |", 1))
    monkeypatch.setattr(config_doc, "DOC", stale)
    assert config_doc.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and config_doc.COMMAND in err
