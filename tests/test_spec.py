"""Spec strictness: YAML parsing, pydantic checks, near-miss names, lines, presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmcore.builder import validate
from mmcore.errors import SpecError, SpecIssue
from mmcore.plugins import get_registry
from mmcore.spec import ModelSpec, load_spec, parse_yaml

# Line numbers below refer to this text (line 1 is "name: tiny").
GOOD = """\
name: tiny
modalities:
  image:
    tokenizer: {type: patch-embedding, image_size: 16, patch_size: 8, width: 16}
    encoder: {type: vit, layers: 1, heads: 2}
  text:
    tokenizer: {type: token-embedding, vocab_size: 300, width: 16, context_length: 8}
    encoder: {type: text-transformer, layers: 1, heads: 2}
fusion: {type: late, embed_dim: 8}
objectives:
  clip: {type: contrastive, pairs: [[image, text]]}
train: {lr: 1e-3, steps: 2}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _errors(tmp_path: Path, text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text))
    return info.value.issues


def test_good_spec_loads_and_validates(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.name == "tiny"
    assert spec.modalities["image"].encoder is not None
    assert spec.modalities["image"].encoder.params == {"layers": 1, "heads": 2}
    validate(spec)


def test_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.train.lr == 1e-3 and isinstance(spec.train.lr, float)
    data, _ = parse_yaml("a: 1e-3\nb: 2E+4\nc: 7\nd: '1e-3'\ne: 1_000\n")
    assert data == {"a": 0.001, "b": 20000.0, "c": 7, "d": "1e-3", "e": 1000}
    assert isinstance(data["c"], int)


def test_duplicate_keys_are_rejected_with_lines(tmp_path: Path) -> None:
    text = GOOD.replace("fusion: {type: late, embed_dim: 8}",
                        "fusion: {type: late, embed_dim: 8}\nname: again")
    issues = _errors(tmp_path, text)
    assert issues == [SpecIssue("name", "duplicate key (first on line 1)", 10)]


def test_nested_duplicate_key(tmp_path: Path) -> None:
    issues = _errors(tmp_path, "a:\n  b: 1\n  c: 2\n  b: 3\n")
    assert [(i.path, i.line) for i in issues] == [("a.b", 4)]
    assert "first on line 2" in issues[0].message


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch /tmp/pwned']",
                                 "!!python/name:os.system", "!custom 3"])
def test_python_and_custom_tags_are_rejected(tmp_path: Path, tag: str) -> None:
    marker = Path("/tmp/pwned")
    existed = marker.exists()
    issues = _errors(tmp_path, GOOD.replace("name: tiny", f"name: {tag}"))
    assert len(issues) == 1 and issues[0].line == 1
    assert "not valid YAML" in issues[0].message and "constructor" in issues[0].message
    assert marker.exists() == existed


def test_unknown_top_level_key(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD + "optimiser: adam\n")
    assert [(i.path, i.message, i.line) for i in issues] == [("optimiser", "unknown key", 13)]


def test_misspelt_component_suggests_nearest(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("{type: vit,", "{type: vti,"))
    assert len(issues) == 1
    assert issues[0].path == "modalities.image.encoder.type"
    assert issues[0].line == 5
    assert "unknown encoder 'vti'" in issues[0].message
    assert "Did you mean 'vit'" in issues[0].message


def test_bad_component_params_have_path_and_line(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("layers: 1, heads: 2}\n  text",
                                            "layers: one, heads: 2, depth: 3}\n  text"))
    found = {(i.path, i.line): i.message for i in issues}
    assert set(found) == {("modalities.image.encoder.layers", 5),
                          ("modalities.image.encoder.depth", 5)}
    assert found[("modalities.image.encoder.depth", 5)] == "unknown key"
    assert "integer" in found[("modalities.image.encoder.layers", 5)]


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    """A structural error (train.steps) does not hide the component errors."""
    text = (GOOD.replace("{type: vit,", "{type: vti,")
            .replace("embed_dim: 8", "embed_dim: -8")
            .replace("steps: 2", "steps: 0"))
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text))
    err = info.value
    assert sorted((i.path, i.line) for i in err.issues) == [
        ("fusion.embed_dim", 9), ("modalities.image.encoder.type", 5), ("train.steps", 12)]
    message = str(err)
    assert "3 problem(s)" in message
    for where in ("modalities.image.encoder.type (line 5)", "fusion.embed_dim (line 9)",
                  "train.steps (line 12)"):
        assert where in message


def test_component_errors_are_all_reported(tmp_path: Path) -> None:
    text = GOOD.replace("{type: vit,", "{type: vti,").replace("embed_dim: 8", "embed_dim: -8")
    issues = _errors(tmp_path, text)
    assert [(i.path, i.line) for i in issues] == [("modalities.image.encoder.type", 5),
                                                  ("fusion.embed_dim", 9)]


def test_spec_never_names_an_import_path(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("{type: vit,", "{type: os.system,"))
    assert issues[0].path == "modalities.image.encoder.type"
    assert "unknown encoder 'os.system'" in issues[0].message


def test_preset_names_resolve() -> None:
    spec = load_spec("clip-vit-b-32")
    assert isinstance(spec, ModelSpec)
    assert spec.name == "clip-vit-b-32"
    assert spec.modalities["image"].tokenizer.params["patch_size"] == 32


def test_unknown_preset_suggests(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec("clip-vit-b-23")
    message = str(info.value)
    assert "'clip-vit-b-23' is neither a spec file nor a preset" in message
    assert "Did you mean 'clip-vit-b-32'" in message


def test_unrelated_name_lists_presets() -> None:
    with pytest.raises(SpecError, match=r"Presets: .*clip-vit-b-32"):
        load_spec("zzzzzzzz")


def test_missing_spec_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=re.escape(f"no such spec file: {missing}")):
        load_spec(missing)


def test_empty_spec_and_non_mapping(tmp_path: Path) -> None:
    assert "the spec is empty" in _errors(tmp_path, "# nothing\n")[0].message
    assert "mapping at the top level" in _errors(tmp_path, "- a\n- b\n")[0].message


def test_width_mismatch_is_reported_at_the_encoder(tmp_path: Path) -> None:
    text = GOOD.replace("{type: vit, layers: 1", "{type: vit, width: 32, layers: 1")
    spec = load_spec(_write(tmp_path, text))  # each component's params are fine alone
    with pytest.raises(SpecError) as info:
        validate(spec)
    issues = info.value.issues
    assert [i.path for i in issues] == ["modalities.image.encoder"]
    assert "width 32 does not match the tokenizer's width 16" in issues[0].message


def test_build_errors_are_reported_together(tmp_path: Path) -> None:
    text = (GOOD.replace("{type: vit, layers: 1", "{type: vit, width: 32, layers: 1")
            .replace("pairs: [[image, text]]", "pairs: [[image, audio]]"))
    with pytest.raises(SpecError) as info:
        validate(load_spec(_write(tmp_path, text)))
    assert [i.path for i in info.value.issues] == ["modalities.image.encoder",
                                                   "objectives.clip"]


def test_unknown_kernel_is_a_spec_issue(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, GOOD + "kernels: {attention: warp-drive}\n"))
    with pytest.raises(SpecError) as info:
        validate(spec)
    assert info.value.issues[0].path == "kernels"
    assert "unknown kernel 'warp-drive'" in info.value.issues[0].message


def test_validate_allocates_nothing(tmp_path: Path) -> None:
    from mmcore.builder import build

    model = build(load_spec(_write(tmp_path, GOOD)), device="meta")
    assert all(p.is_meta for p in model.parameters())


def _needs(preset: str) -> list[str]:
    """Key paths a preset says its user must supply (``metadata.needs``), e.g. the path of
    an imported model's tokenizer.json."""
    import yaml

    target = get_registry().get("preset", preset).factory()
    data = target if isinstance(target, dict) else yaml.safe_load(Path(target).read_text())
    return list((data.get("metadata") or {}).get("needs") or [])


@pytest.mark.parametrize("preset", get_registry().names("preset"))
def test_every_preset_validates(preset: str) -> None:
    needs = _needs(preset)
    if needs:  # all problems are reported at once: those must be the only ones
        with pytest.raises(SpecError) as err:
            validate(load_spec(preset))
        assert sorted({issue.path for issue in err.value.issues}) == sorted(needs)
        return
    spec = load_spec(preset)
    validate(spec)
    assert spec.modalities and spec.fusion.type
