"""Analytic cost of a spec: parameters, forward FLOPs and activation memory, computed from
the params alone (nothing is built). Convention: 2 FLOPs per multiply-add; FLOPs and
activations are per sample (batch size 1) and scale linearly with the batch.

A component registers ``cost=fn`` beside its factory: ``fn(params, ctx: CostContext) -> Cost``.
The helpers below (linear, attention, transformer_block, ...) let plugins compose costs.
``params`` must equal the built module's parameter count exactly (tests/test_cost.py checks
every registered cost function); FLOPs count matrix products, convolutions and attention
(q k^T and p v) and leave out softmax, norms, activations and other element-wise work, as
``torch.utils.flop_counter.FlopCounterMode`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Shape:
    """A per-sample token sequence: ``tokens`` x ``width``."""

    tokens: int
    width: int


@dataclass(frozen=True)
class GenerationCost:
    """What one autoregressively generated token costs (optional, for decoders): FLOPs
    ``flops + flops_per_key * keys`` for a token attending ``keys`` cached positions, and
    ``kv_elements`` cached key/value elements per position (all layers). ``max_context``:
    the longest context the component takes (None: no limit)."""

    flops: int = 0
    flops_per_key: int = 0
    kv_elements: int = 0
    max_context: int | None = None

    def __add__(self, other: GenerationCost) -> GenerationCost:
        limits = [c for c in (self.max_context, other.max_context) if c is not None]
        return GenerationCost(self.flops + other.flops,
                              self.flops_per_key + other.flops_per_key,
                              self.kv_elements + other.kv_elements,
                              min(limits) if limits else None)

    def times(self, n: int) -> GenerationCost:
        return GenerationCost(self.flops * n, self.flops_per_key * n, self.kv_elements * n,
                              self.max_context)


@dataclass(frozen=True)
class Figure:
    """An extra named figure a cost function offers ``mmcore inspect`` (printed under the
    cost table, e.g. the FLOPs of one denoising step or the memory of sampling): ``value``
    in ``unit`` ("FLOP", "B" or ""), plus ``per_parameter`` times the whole model's
    parameter count (e.g. 4 for a memory figure that holds every fp32 weight)."""

    name: str
    value: int
    unit: str = ""
    per_parameter: int = 0


def _add_generation(a: GenerationCost | None, b: GenerationCost | None
                    ) -> GenerationCost | None:
    return a if b is None else b if a is None else a + b


@dataclass
class Cost:
    """Cost of one component for one sample.

    ``activations``: elements saved for the backward pass (what training memory needs).
    ``attention_scores``: query-key scores per head of the component's largest attention
    pattern, for one layer (e.g. 196 x 128 = 25,088 for image->text cross-attention).
    ``out``: the Shape the component emits (tokenizers, encoders), ``Shape(1, out_features)``
    for a head (objectives read it as ``CostContext.heads``), or None.
    ``embeddings``: pooled embedding widths by name (fusions; heads and objectives read them
    as ``CostContext.embedding_widths``).
    ``generation``: per generated token, for components that decode (``mmcore inspect``
    sums them into FLOPs per token and KV-cache memory); None for the others.
    ``figures``: extra named figures for ``mmcore inspect`` (:class:`Figure`).
    """

    params: int = 0
    flops: int = 0
    activations: int = 0
    attention_scores: int = 0
    out: Shape | None = None
    embeddings: dict[str, int] = field(default_factory=dict)
    generation: GenerationCost | None = None
    figures: tuple[Figure, ...] = ()

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.flops + other.flops,
                    self.activations + other.activations,
                    max(self.attention_scores, other.attention_scores),
                    other.out or self.out, {**self.embeddings, **other.embeddings},
                    _add_generation(self.generation, other.generation),
                    self.figures + other.figures)

    def times(self, n: int) -> Cost:
        """``n`` identical copies (e.g. n layers)."""
        return Cost(self.params * n, self.flops * n, self.activations * n,
                    self.attention_scores, self.out, dict(self.embeddings),
                    None if self.generation is None else self.generation.times(n),
                    self.figures)


@dataclass
class CostContext:
    """What a cost function knows of its neighbours (mirrors BuildContext)."""

    in_shape: Shape | None = None  # encoders: the tokens they receive
    shapes: dict[str, Shape] = field(default_factory=dict)  # fusions: per modality
    embedding_widths: dict[str, int] = field(default_factory=dict)  # heads, objectives
    heads: dict[str, int] = field(default_factory=dict)


def linear(tokens: int, d_in: int, d_out: int, bias: bool = True) -> Cost:
    """A Linear over ``tokens`` rows: (tokens, d_in) -> (tokens, d_out)."""
    return Cost(params=d_in * d_out + (d_out if bias else 0), flops=2 * tokens * d_in * d_out,
                activations=tokens * d_in)


def norm(tokens: int, width: int, affine_params: int = 2) -> Cost:
    """LayerNorm (2 params per channel) or RMSNorm (1); FLOPs are negligible and ignored."""
    return Cost(params=affine_params * width, activations=tokens * width)


def attention(nq: int, nk: int, width: int, heads: int, kv_width: int | None = None,
              bias: bool = True) -> Cost:
    """Multi-head attention: q/k/v/out projections + scores (nq x nk per head) + weighted sum."""
    kv_width = kv_width or width
    proj = (linear(nq, width, width, bias) + linear(nk, kv_width, width, bias)
            + linear(nk, kv_width, width, bias) + linear(nq, width, width, bias))
    core = Cost(flops=2 * 2 * nq * nk * width,  # q k^T and p v, over all heads
                activations=heads * nq * nk + 3 * nq * width, attention_scores=nq * nk)
    return proj + core


def mlp(tokens: int, width: int, hidden: int, bias: bool = True) -> Cost:
    """Linear -> activation -> Linear."""
    return linear(tokens, width, hidden, bias) + linear(tokens, hidden, width, bias) + Cost(
        activations=tokens * hidden)


def transformer_block(tokens: int, width: int, heads: int, mlp_ratio: float = 4.0,
                      cross: Shape | None = None) -> Cost:
    """Pre-norm block as in :class:`mmcore.layers.TransformerBlock` (optional cross-attn)."""
    cost = norm(tokens, width) + attention(tokens, tokens, width, heads)
    if cross is not None:
        cost = cost + norm(tokens, width) + attention(tokens, cross.tokens, width, heads,
                                                      kv_width=cross.width)
    cost = cost + norm(tokens, width) + mlp(tokens, width, int(width * mlp_ratio))
    return Cost(cost.params, cost.flops, cost.activations, cost.attention_scores,
                Shape(tokens, width))


def embedding(rows: int, width: int) -> Cost:
    """A learned table ``(rows, width)`` (token embeddings, positions, special tokens): only
    parameters; a lookup or an addition is no multiply-add."""
    return Cost(params=rows * width)


def transformer_stack(tokens: int, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                      *, pre_norm: bool = False, final_norm: bool = True,
                      cross: Shape | None = None) -> Cost:
    """:class:`mmcore.layers.TransformerStack`: optional input norm, ``layers`` blocks,
    optional final norm. (tokens, width) -> (tokens, width)."""
    cost = transformer_block(tokens, width, heads, mlp_ratio, cross).times(layers)
    if pre_norm:
        cost = norm(tokens, width) + cost
    if final_norm:
        cost = cost + norm(tokens, width)
    return replace(cost, out=Shape(tokens, width))


def with_out(cost: Cost, out: Shape | None) -> Cost:
    """``cost`` emitting ``out``; a head reports ``Shape(1, out_features)``."""
    return replace(cost, out=out)

# ----------------------------------------------------------------------------- memory

#: Bytes per element of each training dtype ``mmcore inspect --dtype`` accepts.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

#: What :func:`training_memory` assumes, in words (``mmcore inspect`` prints these).
MEMORY_ASSUMPTIONS = {
    "fp32": "fp32 training: weights 4 B + gradients 4 B + AdamW moments 2 x 4 B = 16 B per "
            "parameter; activations 4 B per element",
    "bf16": "mixed precision: fp32 master weights 4 B + a bf16 working copy 2 B + bf16 "
            "gradients 2 B + fp32 AdamW moments 2 x 4 B = 16 B per parameter; activations "
            "2 B per element",
    "fp16": "mixed precision: fp32 master weights 4 B + an fp16 working copy 2 B + fp16 "
            "gradients 2 B + fp32 AdamW moments 2 x 4 B = 16 B per parameter; activations "
            "2 B per element",
}


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one AdamW training step holds at ``batch_size`` in ``dtype`` (no activation
    checkpointing, no sharding; framework workspace and fragmentation left out)."""

    dtype: str
    batch_size: int
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def training_memory(params: int, activations: int, *, batch_size: int,
                    dtype: str = "fp32") -> TrainingMemory:
    """Training memory of a model with ``params`` parameters that saves ``activations``
    elements per sample for the backward pass (see :data:`MEMORY_ASSUMPTIONS`)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}")
    half = DTYPE_BYTES[dtype]
    weights = params * (4 + (half if half != 4 else 0))  # fp32 master (+ working copy)
    return TrainingMemory(dtype, batch_size, weights=weights, gradients=params * half,
                          optimizer=params * 8, activations=activations * batch_size * half)


def zero_cost(params: object, ctx: CostContext) -> Cost:
    """The cost of a component with no parameters and no model FLOPs (a preprocessor runs
    in the data loader, outside the model)."""
    return Cost()
