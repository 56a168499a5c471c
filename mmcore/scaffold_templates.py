"""The files ``mmcore new-plugin`` writes (see :mod:`mmcore.scaffold`). Placeholders are
``<<plugin>>``, ``<<module>>``, ``<<dist>>``, ``<<component>>``, ``<<cls>>`` and ``<<kind>>``;
a path may hold ``{module}``."""

from __future__ import annotations

PYPROJECT = '''\
[build-system]
requires = ["hatchling>=1.24"]
build-backend = "hatchling.build"

[project]
name = "<<dist>>"
version = "0.1.0"
description = "An mmcore plugin: <<kind>> <<component>>"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["mmcore"]

[project.optional-dependencies]
test = ["pytest>=8"]

# mmcore loads every module named in this group; "<<plugin>>" is the plugin's name
[project.entry-points."mmcore.plugins"]
<<plugin>> = "<<module>>"

[tool.hatch.build.targets.wheel]
packages = ["src/<<module>>"]

[tool.pytest.ini_options]
pythonpath = ["src"]
testpaths = ["tests"]
'''

README = '''\
# <<dist>>

An [mmcore](https://github.com/) plugin that registers one <<kind>>: `<<component>>`.

```bash
python -m pytest -q        # the conformance suite on this plugin's components
pip install -e .           # mmcore now loads it: mmcore plugins, mmcore list
```

`src/<<module>>/__init__.py` registers the component through mmcore's hooks;
`tests/test_conformance.py` runs `mmcore.testing` on it (forward, backward, save/load,
batch and padding invariance). Edit the component, keep the tests green.
'''

TEST_CONFORMANCE = '''\
"""mmcore's conformance suite on this plugin's components (works installed or not)."""

import pytest

from mmcore.testing import check_component, conformance_params, plugin_registry

REGISTRY = plugin_registry("<<module>>", "<<plugin>>")


@pytest.mark.parametrize(("kind", "name"), conformance_params(REGISTRY, plugin="<<plugin>>"))
def test_conformance(kind: str, name: str) -> None:
    check_component(REGISTRY, kind, name)


def test_registered() -> None:
    assert [e.name for e in REGISTRY.list() if e.plugin == "<<plugin>>"]
'''

ENCODER_INIT = '''\
"""mmcore plugin <<plugin>>: the <<component>> encoder."""

from mmcore import hookimpl
from <<module>>.component import <<cls>>Config, <<cls>>Encoder, cost


@hookimpl
def register_encoders(register):
    register("<<component>>", <<cls>>Encoder.build, config=<<cls>>Config, cost=cost, tiny={},
             summary="a residual MLP over each token (masked tokens stay untouched)")
'''

ENCODER = '''\
"""The <<component>> encoder: x + MLP(LayerNorm(x)) per token. (B, N, D) -> (B, N, D)"""

from pydantic import Field
from torch import nn

from mmcore.contract import Tokens
from mmcore.cost import Cost, CostContext, linear, norm
from mmcore.registry import ComponentConfig


class <<cls>>Config(ComponentConfig):
    width: int | None = Field(None, gt=0, description="must equal the input width if given")
    hidden: int = Field(32, gt=0, description="MLP hidden units")


class <<cls>>Encoder(nn.Module):
    def __init__(self, *, width: int, hidden: int) -> None:
        super().__init__()
        self.out_width = width
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    @classmethod
    def build(cls, params, ctx):
        return cls(width=ctx.encoder_width(params.width), hidden=params.hidden)

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(tokens.x + self.mlp(self.norm(tokens.x)), tokens.mask)  # (B, N, D)


def cost(params: <<cls>>Config, ctx: CostContext) -> Cost:
    """Parameters and FLOPs per sample, as mmcore inspect reports them."""
    shape = ctx.in_shape
    assert shape is not None
    n, d = shape.tokens, shape.width
    total = norm(n, d) + linear(n, d, params.hidden) + linear(n, params.hidden, d)
    total.out = shape
    return total
'''

FUSION_INIT = '''\
"""mmcore plugin <<plugin>>: the <<component>> fusion."""

from mmcore import hookimpl
from <<module>>.component import <<cls>>Config, <<cls>>Fusion, cost


@hookimpl
def register_fusions(register):
    register("<<component>>", <<cls>>Fusion.build, config=<<cls>>Config, cost=cost,
             tiny={"embed_dim": 8}, summary="masked mean of each modality, projected")
'''

FUSION = '''\
"""The <<component>> fusion: each modality's masked mean, projected to ``embed_dim``, and
their sum as ``fused``. {name: (B, N, D)} -> embeddings (B, E)"""

import torch
from pydantic import Field
from torch import nn

from mmcore.contract import FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, linear
from mmcore.registry import ComponentConfig


class <<cls>>Config(ComponentConfig):
    embed_dim: int = Field(gt=0, description="width of every pooled embedding")


class <<cls>>Fusion(nn.Module):
    def __init__(self, *, widths: dict[str, int], embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(w, embed_dim) for m, w in widths.items()})
        self.embedding_widths = {**{m: embed_dim for m in widths}, "fused": embed_dim}

    @classmethod
    def build(cls, params, ctx):
        return cls(widths=dict(ctx.widths), embed_dim=params.embed_dim)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        pooled = {m: self.proj[m](_masked_mean(t)) for m, t in sorted(tokens.items())}
        fused = torch.stack(list(pooled.values())).sum(0)  # (B, E)
        return FusionOutput(tokens=dict(tokens), embeddings={**pooled, "fused": fused})


def _masked_mean(tokens: Tokens) -> torch.Tensor:
    valid = tokens.valid()[..., None].to(tokens.x.dtype)  # (B, N, 1)
    return (tokens.x * valid).sum(1) / valid.sum(1).clamp(min=1)  # (B, D)


def cost(params: <<cls>>Config, ctx: CostContext) -> Cost:
    total = Cost()
    for shape in ctx.shapes.values():
        total = total + linear(1, shape.width, params.embed_dim)
    total.embeddings = {**{m: params.embed_dim for m in ctx.shapes}, "fused": params.embed_dim}
    return total
'''

OBJECTIVE_INIT = '''\
"""mmcore plugin <<plugin>>: the <<component>> objective."""

from mmcore import hookimpl
from <<module>>.component import <<cls>>Config, <<cls>>Objective, cost


@hookimpl
def register_objectives(register):
    register("<<component>>", <<cls>>Objective.build, config=<<cls>>Config, cost=cost,
             tiny={"pair": ["alpha", "beta"]},
             summary="pulls two pooled embeddings together (mean squared distance)")
'''

OBJECTIVE = '''\
"""The <<component>> objective: mean squared distance between two pooled embeddings."""

from pydantic import Field
from torch import nn

from mmcore.cost import Cost, CostContext
from mmcore.registry import ComponentConfig


class <<cls>>Config(ComponentConfig):
    pair: tuple[str, str] = Field(description="the two embeddings to pull together")


class <<cls>>Objective(nn.Module):
    def __init__(self, *, pair: tuple[str, str]) -> None:
        super().__init__()
        self.pair = pair

    @classmethod
    def build(cls, params, ctx):
        return cls(pair=params.pair)

    def forward(self, output, batch):
        a, b = (output.embeddings[name] for name in self.pair)  # (B, E) each
        distance = ((a - b) ** 2).sum(-1)  # (B,)
        return {"loss": distance.mean(), "distance": distance.detach().mean()}


def cost(params: <<cls>>Config, ctx: CostContext) -> Cost:
    return Cost()  # no parameters; element-wise work is not counted
'''

MODALITY_INIT = '''\
"""mmcore plugin <<plugin>>: a numeric-vector modality (preprocessor and tokenizer)."""

from mmcore import hookimpl
from <<module>>.component import (
    <<cls>>Config,
    <<cls>>Preprocessor,
    <<cls>>Tokenizer,
    NoParams,
    cost,
    example_items,
    example_values,
)


@hookimpl
def register_preprocessors(register):
    register("<<component>>", <<cls>>Preprocessor.build, config=NoParams, example=example_items,
             summary="lists of numbers -> (B, F) float32")


@hookimpl
def register_tokenizers(register):
    register("<<component>>-embedding", <<cls>>Tokenizer.build, config=<<cls>>Config,
             cost=cost, tiny={"features": 4, "width": 8}, example=example_values,
             summary="one token per number: value x learned vector + feature embedding")
'''

MODALITY = '''\
"""A numeric-vector modality: raw items are lists of ``features`` numbers.

preprocessor: items -> (B, F) float32; tokenizer: (B, F) -> Tokens (B, F, D)."""

import torch
from pydantic import Field
from torch import nn

from mmcore.contract import Tokens
from mmcore.cost import Cost, CostContext, Shape
from mmcore.registry import ComponentConfig


class NoParams(ComponentConfig):
    pass


class <<cls>>Config(ComponentConfig):
    features: int = Field(gt=0, description="numbers per item")
    width: int = Field(gt=0, description="token width")


class <<cls>>Preprocessor:
    @classmethod
    def build(cls, params, ctx):
        return cls()

    def __call__(self, items):
        return torch.tensor([list(map(float, item)) for item in items], dtype=torch.float32)


class <<cls>>Tokenizer(nn.Module):
    def __init__(self, *, features: int, width: int) -> None:
        super().__init__()
        self.out_width = width
        self.value = nn.Parameter(torch.randn(features, width) * 0.02)
        self.feature = nn.Parameter(torch.randn(features, width) * 0.02)

    @classmethod
    def build(cls, params, ctx):
        return cls(features=params.features, width=params.width)

    def forward(self, values: torch.Tensor) -> Tokens:
        return Tokens(values[..., None] * self.value + self.feature)  # (B, F, D)


def example_items(preprocessor, batch_size, generator):
    return [torch.randn(4, generator=generator).tolist() for _ in range(batch_size)]


def example_values(module, batch_size, generator):
    return torch.randn(batch_size, module.value.shape[0], generator=generator)


def cost(params: <<cls>>Config, ctx: CostContext) -> Cost:
    return Cost(params=2 * params.features * params.width,
                out=Shape(params.features, params.width))
'''

CONVERTER_INIT = '''\
"""mmcore plugin <<plugin>>: the <<component>> converter (import a foreign checkpoint)."""

from mmcore import hookimpl
from <<module>>.component import <<cls>>Converter


@hookimpl
def register_converters(register):
    register("<<component>>", <<cls>>Converter,
             summary="a folder holding <<component>>.json (a spec) and model.safetensors")
'''

CONVERTER = '''\
"""The <<component>> converter: a folder with ``<<component>>.json`` (an mmcore spec
mapping) and ``model.safetensors`` (its weights, mmcore names). Replace ``to_mmcore`` with
the key mapping of your format; refuse what you do not implement by name."""

import json
from pathlib import Path

from mmcore.convert.hf import read_safetensors
from mmcore.errors import CheckpointError


class <<cls>>Converter:
    marker = "<<component>>.json"

    def detect(self, source: Path) -> bool:
        return Path(source).is_dir() and (Path(source) / self.marker).is_file()

    def to_mmcore(self, source: Path):
        source = Path(source)
        if not self.detect(source):
            raise CheckpointError(f"{source}: no {self.marker}")
        spec = json.loads((source / self.marker).read_text(encoding="utf-8"))
        return spec, read_safetensors(source / "model.safetensors")
'''

COMMAND_INIT = '''\
"""mmcore plugin <<plugin>>: the ``mmcore <<component>>`` command."""

from mmcore import hookimpl
from <<module>>.component import add_arguments, run


@hookimpl
def register_commands(register):
    register("<<component>>", add_arguments, run, summary="count a spec's parameters")
'''

COMMAND = '''\
"""``mmcore <<component>> SPEC``: print a spec's parameter count (edit to taste)."""


def add_arguments(parser):
    parser.add_argument("spec", metavar="SPEC", help="a YAML spec or a preset name")


def run(args) -> int:
    """Print the parameters of the model SPEC builds (on the meta device: no memory)."""
    import torch

    import mmcore
    from mmcore.builder import build

    with torch.device("meta"):
        model = build(mmcore.load_spec(args.spec), device="meta")
    print(f"{args.spec}: {sum(p.numel() for p in model.parameters()):,} parameters")
    return 0
'''

TEST_CONVERTER = '''\
"""The converter imports a folder it detects."""

import json

import mmcore
from mmcore.convert import import_model
from mmcore.testing import plugin_registry

REGISTRY = plugin_registry("<<module>>", "<<plugin>>")


def test_round_trip(tmp_path):
    model = mmcore.build("clip-tiny")
    mmcore.save(model, tmp_path / "model.safetensors")
    (tmp_path / "<<component>>.json").write_text(json.dumps(model.spec.model_dump(
        mode="json", exclude_defaults=True)))
    assert REGISTRY.get("converter", "<<component>>").factory().detect(tmp_path)
    imported = import_model(tmp_path, "<<component>>", registry=REGISTRY)
    assert sum(p.numel() for p in imported.parameters()) == sum(
        p.numel() for p in model.parameters())
'''

TEST_COMMAND = '''\
"""The command runs."""

import argparse

from mmcore.testing import plugin_registry

REGISTRY = plugin_registry("<<module>>", "<<plugin>>")


def test_command(capsys):
    command = REGISTRY.get("command", "<<component>>").factory()
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args(["clip-tiny"])) == 0
    assert "parameters" in capsys.readouterr().out
'''

COMMON = {"pyproject.toml": PYPROJECT, "README.md": README}


def _kind(init: str, component: str, test: str = TEST_CONFORMANCE) -> dict[str, str]:
    return {"src/{module}/__init__.py": init, "src/{module}/component.py": component,
            "tests/test_{module}.py": test}


#: kind -> its files (beside COMMON)
KINDS: dict[str, dict[str, str]] = {
    "encoder": _kind(ENCODER_INIT, ENCODER),
    "modality": _kind(MODALITY_INIT, MODALITY),
    "fusion": _kind(FUSION_INIT, FUSION),
    "objective": _kind(OBJECTIVE_INIT, OBJECTIVE),
    "converter": _kind(CONVERTER_INIT, CONVERTER, TEST_CONVERTER),
    "command": _kind(COMMAND_INIT, COMMAND, TEST_COMMAND),
}
