"""tavaal/config.py: each section checks its own fields; field descriptions are data the reference page reads."""

import dataclasses
import re

import pytest

from tavaal.config import ALConfig, Config, DataConfig, Section, TrainConfig, load_config, setting
from tavaal.errors import ConfigError

from conftest import ROOT


def leaves(cls: type = Config, prefix: str = ""):
    """``(dotted key, field)`` of every field that is not itself a section."""
    for f in dataclasses.fields(cls):
        if isinstance(f.default_factory, type) and issubclass(f.default_factory, Section):
            yield from leaves(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def test_every_field_is_described_and_its_check_names_what_it_expects():
    for key, f in leaves():
        assert f.metadata.get("doc", "").strip(), f"{key} has no description"
        assert (f.metadata["check"] is None) == (f.metadata["expected"] is None), key
        if f.metadata["check"] is not None:
            assert f.metadata["check"](f.default), f"{key}: its default fails its own check"
    with pytest.raises(TypeError):
        setting(1, "a check without the words for it", check=lambda v: v > 0)


def test_descriptions_give_reasons_not_measurements():
    """The issue's rule: a description says why in words; timings, dates and machines belong to benchmarks/."""
    measured = re.compile(r"\d(\.\d+)?x on|\bEPYC\b|\bXeon\b|\b20\d\d-\d\d-\d\d\b|\d+(\.\d+)? ?(ms|min)\b", re.I)
    for key, f in leaves():
        assert not measured.search(f.metadata["doc"]), f"{key}: {f.metadata['doc']}"
    assert not measured.search((ROOT / "docs" / "configuration.md").read_text())


def message(overrides: dict) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, {"data.name": "synthetic", **overrides})
    return str(e.value)


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("seed", -1, "an integer in [0, 2^63)"),
        ("device", "gpu", "auto, cpu, cuda or cuda:N"),
        ("data.classes", ["a", "a"], "distinct class names"),
        ("train.batch_size", 7, "an even integer in [2, 1048576] (the ranking loss pairs the two halves of a batch)"),
        ("train.milestones", [160, 20], "increasing epochs in [1, 10_000]"),
        ("train.lr", float("nan"), "a finite number"),
        ("vae.base_channels", 9000, "in [1, 8192] (widths go to 8x)"),
        ("al.subset_size", 100, "in [al.budget (1000), 100_000_000]"),
        ("backend.score_compute", "threads", "auto, tasks or actors"),
    ],
)
def test_a_bad_field_is_refused_in_the_same_words(key, value, expected):
    assert message({key: value}) == f"config field '{key}' must be {expected}, got {value!r}"


def test_each_section_checks_itself_under_its_prefix():
    TrainConfig().check("train.")  # the defaults pass
    with pytest.raises(ConfigError, match=r"^config field 'train\.epochs' must be in \[1, 10_000\], got 0$"):
        TrainConfig(epochs=0).check("train.")
    with pytest.raises(ConfigError, match=r"'al\.subset_size' must be in \[al\.budget \(50\)"):
        ALConfig(budget=50, subset_size=10).check("al.")  # a check between two fields of one section
    with pytest.raises(ConfigError, match="'data.path' must be a Parquet file/directory or an image folder"):
        DataConfig(name="parquet").check("data.")
    with pytest.raises(ConfigError, match=r"^config field 'al\.stages' must be"):
        Config(al=ALConfig(stages=0)).check()  # the top level checks its sections


def test_checks_across_sections_come_after_each_sections_own():
    seg = {"task": "segmentation"}
    assert "'data.imbalance_ratio' must be 1 for segmentation" in message({**seg, "data.imbalance_ratio": 10})
    assert "'al.oracle' must be simulated or auto for segmentation" in message({**seg, "al.oracle": "manual"})
    # a value no section allows is refused by its section first
    assert "'al.oracle' must be auto, simulated, manual or labelstudio" in message({**seg, "al.oracle": "people"})
