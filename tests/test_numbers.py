"""Numbers typed as people type them: ``1e-3``, ``5e-4``, ``.5`` are floats in YAML files
and ``--set`` alike, in configs and search spaces; everything else parses as plain YAML did."""

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tavaal.config import load_config, load_yaml, parse_override
from tavaal.errors import ConfigError
from tavaal.search_space import check_space, read_space

from conftest import run_main


def _no_leading_zero(x: float) -> str:  # 0.5 -> .5, -0.25 -> -.25 (values with an exponent: as repr)
    return repr(x).replace("0.", ".", 1) if abs(x) < 1 and "e" not in repr(x) else repr(x)


def _dot_exponent(x: float) -> str:  # -0.005 -> -.5000000e-2: no leading digit, unsigned 1-digit exponent
    mantissa, exp = f"{abs(x):.6e}".split("e")
    return f"{'-' if x < 0 else ''}.{mantissa.replace('.', '')}e{int(exp) + 1}"


def _short_exponent(x: float) -> str:  # 5e-4, 1e5: no dot, exponent without padding
    mantissa, exp = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


FORMATS = {
    "repr": repr,  # 1e-05, 0.0005, 1.7976931348623157e+308
    "e": lambda x: f"{x:.17e}",  # 5.00000000000000010e-04
    "E": lambda x: f"{x:E}",  # 5.000000E-04
    "short": _short_exponent,
    "short E": lambda x: _short_exponent(x).upper(),  # 1E5
    "no leading zero": _no_leading_zero,
    "dot exponent": _dot_exponent,
    "plus": lambda x: repr(x) if repr(x).startswith("-") else "+" + repr(x),  # +1e-05, +0.5
    "plus exponent": lambda x: f"{x:+.3e}",  # +1.000e+03
    "trailing dot": lambda x: f"{int(x)}." if abs(x) < 1e15 else repr(x),  # 5.
}


def typed(values: st.SearchStrategy[float]) -> st.SearchStrategy[str]:
    """The text of a float as someone might type it."""
    return st.builds(lambda x, fmt: FORMATS[fmt](x), values, st.sampled_from(sorted(FORMATS)))


FINITE = st.floats(allow_nan=False, allow_infinity=False)
POSITIVE = st.floats(min_value=0, exclude_min=True, allow_infinity=False)  # train.lr must be > 0


def typed_positive() -> st.SearchStrategy[str]:
    """Typed positive floats that stay positive and finite once rounded to the text (no '0.', no '2e308')."""
    return typed(POSITIVE).filter(lambda t: 0 < float(t) < math.inf)


@settings(max_examples=80, deadline=None)
@given(typed(FINITE))
def test_set_reads_any_typed_float(text):
    key, value = parse_override("train.lr=" + text)
    assert key == "train.lr" and type(value) is float and value == float(text), text


@settings(max_examples=60, deadline=None)
@given(text=typed_positive())
def test_config_file_reads_any_typed_float(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(f"data:\n  name: synthetic\ntrain:\n  lr: {text}\n  weight_decay: {text}\n")
    cfg = load_config(path)
    assert cfg.train.lr == float(text) and cfg.train.weight_decay == float(text), text


@settings(max_examples=40, deadline=None)
@given(lo=typed_positive(), hi=typed_positive())
def test_search_space_bounds_read_as_floats(tmp_path_factory, lo, hi):
    path = tmp_path_factory.mktemp("space") / "s.yaml"
    path.write_text(f"train.lr: {{loguniform: [{lo}, {hi}]}}\nvae.lr: {{uniform: [{lo}, {hi}]}}\n")
    space = read_space(path)
    for key in ("train.lr", "vae.lr"):
        args = space[key][1]
        assert all(type(a) is float for a in args) and args == [float(lo), float(hi)], (lo, hi)
    if float(lo) < float(hi):
        check_space(space, {}, str(path))  # the bounds are numbers the config accepts


def test_tune_style_bounds(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("train.weight_decay: {loguniform: [1e-4, 1e-1]}\nvae.lr: {uniform: [5e-5, .5]}\n")
    space = read_space(path)
    assert space == {"train.weight_decay": ("loguniform", [1e-4, 0.1]), "vae.lr": ("uniform", [5e-5, 0.5])}
    check_space(space, {}, str(path))


def test_set_weight_decay_5e_4_resolves():
    cfg = load_config("configs/smoke.yaml", ["train.weight_decay=5e-4", "train.lr=1e-2"])
    assert cfg.train.weight_decay == 0.0005 and cfg.train.lr == 0.01
    assert parse_override("vae.lr=-.5e-2") == ("vae.lr", -0.005)


@pytest.mark.parametrize(
    "text",
    [
        "1",
        "-3",
        "+7",
        "0",
        "0x10",
        "017",
        "1_000",
        "yes",
        "no",
        "true",
        "False",
        "null",
        "~",
        "[8]",
        "[1, 2.5]",
        "'5e-4'",
        '"1e-3"',
        "1e3abc",
        "e5",
        ".",
        "-.",
        "1e",
        "1.5.2",
        "2001-12-14",
        "1:30",
        "5.0e-4",
        "1.0e+3",
        ".5",
        ".inf",
        "-.inf",
        "{a: 1}",
        "fast",
    ],
)
def test_everything_else_parses_as_before(text):
    assert repr(load_yaml(text)) == repr(yaml.safe_load(text))


def test_nan_still_reads_and_safe_loader_untouched():
    assert math.isnan(parse_override("train.lr=.nan")[1])
    assert yaml.safe_load("5e-4") == "5e-4"  # the resolver lives on our loader only


def test_int_and_string_fields_keep_their_types():
    cfg = load_config("configs/smoke.yaml", ["al.initial=100", "train.lr=1"])
    assert cfg.al.initial == 100 and type(cfg.al.initial) is int
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float  # float fields take integers, as before
    assert parse_override("data.name=1e3abc") == ("data.name", "1e3abc")
    cfg = load_config("configs/smoke.yaml", ["al.initial=1e2"])  # an integral float, as 100.0 always was
    assert cfg.al.initial == 100 and type(cfg.al.initial) is int
    with pytest.raises(ConfigError, match=r"^config field 'al.initial' must be an integer, got 0\.1$"):
        load_config("configs/smoke.yaml", ["al.initial=1e-1"])


def test_quoted_number_stays_a_string(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  weight_decay: '5e-4'\n")
    with pytest.raises(ConfigError, match=r"^config field 'train.weight_decay' must be a number, got '5e-4'$"):
        load_config(path)


def test_cli_check_accepts_5e_4(capsys):
    r = run_main(capsys, "--config", "configs/smoke.yaml", "--set", "train.weight_decay=5e-4", "--check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("config OK: tavaal on synthetic"), r.stdout
