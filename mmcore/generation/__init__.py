"""The one generation loop of mmcore: every autoregressive model decodes through it.

The protocol
------------
A model generates by implementing :class:`Decoder` (three methods, the cache is opaque
to the loop and is whatever the model likes: per-layer keys/values, cross-attention
context, a position counter):

- ``prefill(input_ids (R, T), attention_mask (R, T) bool) -> (logits (R, V), cache)``
  runs the (left-padded) prompts and returns the logits of their last position;
- ``step(next_ids (R, 1), attention_mask (R, T + n) bool, cache) -> (logits (R, V), cache)``
  feeds the tokens just chosen; the mask has grown by one True column per step;
- ``reorder_cache(cache, rows (R,)) -> cache`` keeps cache row ``rows[i]`` as row ``i``
  (beam search only).

Position ids and attention masking from the mask are the decoder's job. With beam search
or ``num_return_sequences`` each prompt's row is repeated (``repeat_interleave``) before
``prefill``; a decoder holding per-prompt context repeats it by ``R // B``. The LLaMA-family
LM, Whisper's decoder (its audio context lives in the cache, built in ``prefill``), the
captioning decoder, LLaVA (image tokens spliced in during ``prefill``), Flamingo and
DALL-E's image-token prior all implement it.

The loop
--------
``generate(decoder, input_ids, attention_mask=..., config=GenerationConfig(...))``:
greedy search, sampling (temperature, top-k, top-p; reproducible from ``config.seed`` or
a ``torch.Generator``), beam search (``num_beams``, ``length_penalty``, ``early_stopping``,
``num_return_sequences``), repetition penalty, stop tokens and stop strings,
``max_new_tokens``/``min_new_tokens``, suppressed and forced tokens. Model rules are logit
processors (``processor(input_ids (R, T), scores (R, V)) -> scores``) passed as
``processors=[...]``. ``stream(...)`` yields each step's tokens through the same code.
Semantics are those of transformers' ``generate`` (5.x); tests/test_generation*.py check
token equality against it.
"""

from mmcore.generation.config import MAX_BEAMS, GenerationConfig
from mmcore.generation.loop import generate, stream
from mmcore.generation.processors import (
    ForceTokens,
    MinNewTokens,
    Processor,
    RepetitionPenalty,
    SuppressAtBegin,
    SuppressTokens,
    Temperature,
    TopK,
    TopP,
    build_processors,
)
from mmcore.generation.protocol import Decoder, GenerationOutput
from mmcore.generation.stopping import StopCriteria

__all__ = [
    "MAX_BEAMS",
    "Decoder",
    "ForceTokens",
    "GenerationConfig",
    "GenerationOutput",
    "MinNewTokens",
    "Processor",
    "RepetitionPenalty",
    "StopCriteria",
    "SuppressAtBegin",
    "SuppressTokens",
    "Temperature",
    "TopK",
    "TopP",
    "build_processors",
    "generate",
    "stream",
]
