"""Random Hugging Face Whisper checkpoints for tests and benchmarks (needs transformers).

:func:`write_random_whisper` saves a complete folder (config.json, model.safetensors,
generation_config.json, tokenizer.json) laid out as Whisper's: text tokens, then
``<|endoftext|>``, ``<|startoftranscript|>``, the language tokens, ``<|translate|>``,
``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``, ``<|nospeech|>``,
``<|notimestamps|>`` and 1501 timestamps ``<|0.00|>`` ... ``<|30.00|>``. With 50257 text
tokens and 99 languages the vocabulary is whisper-tiny's 51865. The weights are drawn so
that greedy decoding is varied and depends on the audio (Hugging Face's own small
initialisation makes a random model repeat one token whatever it hears).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: OpenAI Whisper's 99 language codes, in token order
LANGUAGES = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv",
    "it", "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no",
    "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr",
    "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw",
    "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu",
    "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl",
    "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su",
)
SPECIALS_AFTER_LANGUAGES = ("translate", "transcribe", "startoflm", "startofprev", "nospeech",
                            "notimestamps")


@dataclass(frozen=True)
class Layout:
    """Token ids of a generated checkpoint."""

    text_tokens: int
    languages: tuple[str, ...]

    @property
    def eos(self) -> int:
        return self.text_tokens

    @property
    def start(self) -> int:
        return self.text_tokens + 1

    def language(self, code: str) -> int:
        return self.start + 1 + self.languages.index(code)

    def special(self, name: str) -> int:
        """translate, transcribe, startoflm, startofprev, nospeech or notimestamps."""
        return self.start + 1 + len(self.languages) + SPECIALS_AFTER_LANGUAGES.index(name)

    @property
    def timestamp_begin(self) -> int:
        return self.special("notimestamps") + 1

    @property
    def vocab_size(self) -> int:
        return self.timestamp_begin + 1501


def write_tokenizer(path: Path, layout: Layout) -> None:
    """A byte-level BPE tokenizer.json with Whisper's special tokens at the layout's ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if layout.text_tokens < len(alphabet):
        raise ValueError(f"need at least {len(alphabet)} text tokens")
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({f"tok{i}": i for i in range(len(alphabet), layout.text_tokens)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|startoftranscript|>",
                *[f"<|{c}|>" for c in layout.languages],
                *[f"<|{s}|>" for s in SPECIALS_AFTER_LANGUAGES]]
    tokenizer.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False)
                          for i in range(1501)])
    if tokenizer.get_vocab_size() != layout.vocab_size:
        raise AssertionError("tokenizer layout mismatch")
    tokenizer.save(str(path))


def generation_config(layout: Layout, *, english_only: bool, max_length: int,
                      max_initial_timestamp_index: int | None) -> Any:
    """Whisper's generation settings for the layout."""
    from transformers import GenerationConfig

    suppress = [1, 2, 7, 8, 9, layout.start, *(layout.special(s) for s in
                SPECIALS_AFTER_LANGUAGES[:-1])]
    multilingual: dict[str, Any] = {} if english_only else {
        "lang_to_id": {f"<|{c}|>": layout.language(c) for c in layout.languages},
        "task_to_id": {"transcribe": layout.special("transcribe"),
                       "translate": layout.special("translate")}}
    return GenerationConfig(
        decoder_start_token_id=layout.start, eos_token_id=layout.eos, pad_token_id=layout.eos,
        bos_token_id=layout.eos, max_length=max_length,
        no_timestamps_token_id=layout.special("notimestamps"), is_multilingual=not english_only,
        suppress_tokens=suppress, begin_suppress_tokens=[220, layout.eos],
        max_initial_timestamp_index=max_initial_timestamp_index, return_timestamps=False,
        **multilingual)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights that make decoding varied: linear weights of gain 2, small embeddings."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "embed_tokens" in name or "decoder.embed_positions" in name:
                p.copy_(0.05 * noise)
            elif p.dim() >= 2 and "embed" not in name:
                p.copy_(noise * (2.0 if p.dim() == 2 else 1.0) * (p[0].numel() ** -0.5))
            elif "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)


def write_random_whisper(folder: str | Path, *, d_model: int = 64, layers: int = 2,
                         heads: int = 4, n_mels: int = 80, text_tokens: int = 256,
                         languages: tuple[str, ...] = ("en", "de", "fr"),
                         english_only: bool = False, max_target_positions: int = 64,
                         max_length: int = 24, max_initial_timestamp_index: int | None = 50,
                         source_positions: int = 1500, seed: int = 0) -> Any:
    """Save a random ``WhisperForConditionalGeneration`` with a consistent tokenizer and
    generation config to ``folder``; returns the transformers model (eval mode)."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = Layout(text_tokens, tuple(languages))
    write_tokenizer(folder / "tokenizer.json", layout)
    config = transformers.WhisperConfig(
        vocab_size=layout.vocab_size, d_model=d_model, encoder_layers=layers,
        decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, num_mel_bins=n_mels,
        max_source_positions=source_positions, max_target_positions=max_target_positions,
        decoder_start_token_id=layout.start, eos_token_id=layout.eos, pad_token_id=layout.eos,
        bos_token_id=layout.eos, begin_suppress_tokens=[220, layout.eos])
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    randomise(model, seed)
    model.generation_config = generation_config(
        layout, english_only=english_only, max_length=max_length,
        max_initial_timestamp_index=max_initial_timestamp_index)
    model.save_pretrained(folder)
    return model


def audio_features(count: int, *, n_mels: int = 80, frames: int = 3000,
                   seed: int = 0) -> torch.Tensor:
    """Log-mel-like features (count, n_mels, frames): a per-clip spectral shape plus noise,
    so that each clip decodes differently."""
    generator = torch.Generator().manual_seed(seed)
    shape = 2.0 * torch.randn(count, n_mels, 1, generator=generator)
    return shape + 0.5 * torch.randn(count, n_mels, frames, generator=generator)
