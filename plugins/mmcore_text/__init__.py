"""mmcore's text modality: byte-level and tokenizer.json preprocessors, token embedding,
and a transformer encoder with an optional causal mask."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.cost import zero_cost
from mmcore.hookspecs import Register
from mmcore_text.embedding import (
    TokenEmbeddingConfig,
    build_token_embedding,
    example_ids,
    token_embedding_cost,
)
from mmcore_text.encoder import (
    TextTransformerConfig,
    build_text_transformer,
    text_transformer_cost,
)
from mmcore_text.preprocess import (
    ByteTextConfig,
    ByteTextPreprocessor,
    HFTokenizerConfig,
    HFTokenizerPreprocessor,
)

__version__ = "0.1.0"


def example_texts(preprocessor: object, batch_size: int, generator: object) -> list[str]:
    """Captions of differing lengths (one over a tiny context), for the conformance suite."""
    texts = ["a red square", "Ünïcode ✓", "a much longer caption than sixteen bytes of context"]
    return [texts[i % len(texts)] for i in range(batch_size)]


@hookimpl
def register_preprocessors(register: Register) -> None:
    register("byte-text", ByteTextPreprocessor.from_config, config=ByteTextConfig,
             tiny={"context_length": 16}, example=example_texts, cost=zero_cost,
             summary="UTF-8 bytes + BOS/EOS, no files needed")
    register("hf-tokenizer", HFTokenizerPreprocessor.from_config, config=HFTokenizerConfig,
             cost=zero_cost,
             summary="a Hugging Face tokenizers tokenizer.json")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("token-embedding", build_token_embedding, config=TokenEmbeddingConfig,
             tiny={"vocab_size": 300, "width": 16, "context_length": 16}, example=example_ids,
             cost=token_embedding_cost,
             summary="token ids -> embeddings + positions")


@hookimpl
def register_encoders(register: Register) -> None:
    register("text-transformer", build_text_transformer, config=TextTransformerConfig,
             tiny={"layers": 1, "heads": 2}, cost=text_transformer_cost,
             summary="transformer encoder, causal by default")
