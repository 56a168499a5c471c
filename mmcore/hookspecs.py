"""The plugin hooks. Each takes a ``register`` callback bound to one kind of component.

A plugin module implements any of these with ``@mmcore.hookimpl``::

    @mmcore.hookimpl
    def register_encoders(register):
        register("my-encoder", MyEncoder.from_config, config=MyEncoderConfig,
                 tiny={"width": 16}, summary="what it does")

``register(name, factory, *, config, summary="", tiny=None, example=None, cost=None)``: ``factory``
is called as ``factory(params, ctx)`` with the validated ``config`` instance and a
:class:`mmcore.builder.BuildContext`. Presets register ``register(name, path_or_dict)``;
commands ``register(name, add_arguments, run, summary=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "mmcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_preprocessors(register: Register) -> None:
    """Register raw-data preprocessors (images, strings, audio -> tensors)."""


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers (tensors -> Tokens): patch, token, conv-stem embeddings."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders (Tokens -> Tokens)."""


@hookspec
def register_fusions(register: Register) -> None:
    """Register fusion strategies (per-modality Tokens -> FusionOutput)."""


@hookspec
def register_heads(register: Register) -> None:
    """Register heads (FusionOutput -> tensor, e.g. class logits)."""


@hookspec
def register_objectives(register: Register) -> None:
    """Register objectives ((ModelOutput, batch) -> losses and metrics)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: ``factory(params, ctx)`` returns a :class:`mmcore.data.Dataset`."""


@hookspec
def register_presets(register: Register) -> None:
    """Register named model specs: ``register(name, path_or_mapping, summary="")``."""


@hookspec
def register_converters(register: Register) -> None:
    """Register weight importers/exporters: ``factory()`` returns a
    :class:`mmcore.convert.Converter` (detect, to_mmcore, optionally from_mmcore)."""


@hookspec
def register_commands(register: Register) -> None:
    """Register CLI verbs: ``register(name, add_arguments, run, *, summary="")``.

    ``add_arguments(parser)`` adds the verb's options to its ``argparse`` parser;
    ``run(args)`` runs it and returns the exit code. ``mmcore --help`` lists the verb under
    the plugin; a name that a core command or another plugin already uses is skipped with
    a warning. Helpers for output and errors: :mod:`mmcore.commands`."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register metric loggers: ``register(name, factory, *, requires=None, summary="")``.

    ``factory()`` returns a :class:`mmcore.training.callbacks.Callback` (``on_log`` gets
    each metric row); it runs on rank 0 only. ``requires`` names a package the logger
    imports: when it is not installed the logger is left out, and a spec naming it in
    ``train.loggers`` is told to install it."""


@hookspec
def register_generators(register: Register) -> None:
    """Register how a model family generates: ``register(name, factory, *, summary="")``.

    ``factory()`` returns a :class:`mmcore.generation.command.Generator` (``accepts(model)``
    and ``run(model, args)``); ``mmcore generate`` uses the first that accepts the model."""


@hookspec
def register_queries(register: Register) -> None:
    """Register output-query builders (Perceiver IO decoders): ``factory(params, ctx)``
    returns a module with ``num_queries`` and ``out_width`` whose ``forward(batch_size)``
    gives the queries ``(B, Q, D)``."""


@hookspec
def register_eval_tasks(register: Register) -> None:
    """Register evaluation tasks for ``mmcore eval --task``: ``register(name, factory, *,
    summary="")``; ``factory()`` returns a :class:`mmcore.tasks.EvalTask`."""


@hookspec
def register_codecs(register: Register) -> None:
    """Register image codecs: ``factory(params, ctx)`` returns a module with
    ``encode(images (B, 3, H, W))`` and ``decode(latents)`` (a KL autoencoder's continuous
    latents, or a VQ-VAE's codes) and its ``downsampling`` factor."""


#: hook name -> registry kind it fills; the registry's kinds are derived from it.
HOOK_KINDS: dict[str, str] = {
    "register_preprocessors": "preprocessor",
    "register_tokenizers": "tokenizer",
    "register_encoders": "encoder",
    "register_fusions": "fusion",
    "register_heads": "head",
    "register_objectives": "objective",
    "register_datasets": "dataset",
    "register_presets": "preset",
    "register_converters": "converter",
    "register_commands": "command",
    "register_queries": "query",
    "register_loggers": "logger",
    "register_generators": "generator",
    "register_eval_tasks": "task",
    "register_codecs": "codec",
}


