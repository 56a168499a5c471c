"""Hostile spec files: size, alias bombs, recursive aliases, deep nesting, control bytes,
non-UTF-8 text. Each is a SpecError naming the problem, fast, and never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mmcore.cli import main
from mmcore.errors import SpecError
from mmcore.spec_yaml import SPEC_BYTES, parse_yaml

MAX_SPEC_BYTES = int(SPEC_BYTES.default)

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def _fails_fast(text: str, message: str) -> None:
    start = time.process_time()
    with pytest.raises(SpecError, match=message):
        parse_yaml(text, "bad.yaml")
    assert time.process_time() - start < 5.0  # a bound on work, not a speed claim


def test_a_billion_laughs_is_refused_before_it_expands() -> None:
    _fails_fast(LAUGHS, r"expands to more than 100,000 values")
    _fails_fast("name: x\nmetadata:\n" + "".join("  " + line + "\n"
                                                   for line in LAUGHS.splitlines()),
                r"expands to more than 100,000 values")


def test_a_recursive_alias_is_refused() -> None:
    _fails_fast("a: &a [1, *a]\n", r"recursive alias")
    _fails_fast("a: &a {b: *a}\n", r"recursive alias")


def test_deep_nesting_is_refused() -> None:
    _fails_fast("a: " + "[" * 5000 + "]" * 5000 + "\n", r"nest")
    _fails_fast("a: " + "[" * 70 + "]" * 70 + "\n", r"deeper than 64 levels")


@pytest.mark.parametrize("byte", ["\x00", "\x07"])
def test_control_bytes_are_invalid_yaml_not_a_crash(byte: str) -> None:
    _fails_fast(f"name: a{byte}b\n", r"not valid YAML")


def test_size_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_fast("#" * (MAX_SPEC_BYTES + 1), r"over the limit of 1,048,576")
    big = tmp_path / "big.yaml"
    big.write_text("#" * (MAX_SPEC_BYTES + 1))
    assert main(["validate", str(big)]) == 2
    assert "spec file is 1,048,577 bytes, over the limit" in capsys.readouterr().err


def test_a_non_utf8_spec_names_the_file(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "latin1.yaml" in err and "not UTF-8" in err and "Traceback" not in err


def test_aliases_within_the_limits_still_work() -> None:
    data, _ = parse_yaml("base: &b {width: 64}\nother: *b\n")
    assert data["other"] == {"width": 64}


@pytest.mark.parametrize(("key", "value"), [("layers", True), ("heads", 4.0), ("heads", 4.5)])
def test_integer_params_take_integers_only(key: str, value: object) -> None:
    import mmcore

    spec = mmcore.load_spec("clip-tiny").to_dict()
    spec["modalities"]["image"]["encoder"][key] = value
    with pytest.raises(SpecError, match=rf"modalities\.image\.encoder\.{key}: .*expected an "
                                        rf"integer, got {value!r}"):
        mmcore.load_spec(spec)


@pytest.mark.parametrize(("where", "key", "value"), [
    ("encoder", "layers", 99999999999999999999),
    ("tokenizer", "width", 10**9),
])
def test_absurd_sizes_are_refused_analytically_before_any_build(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, key: str,
        value: int) -> None:
    import yaml

    import mmcore

    spec = mmcore.load_spec("clip-tiny").to_dict()
    spec["modalities"]["image"][where][key] = value
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(spec))
    start = time.process_time()
    for command in (["validate", "--no-data", str(path)], ["inspect", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "parameters" in err and "over the ceiling of 1e+13" in err
    assert time.process_time() - start < 30.0  # nothing was built
