"""Audio plugin: WAV reading, resampling, Whisper log-mel parity, conv stem and encoder."""

from __future__ import annotations

import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmcore.builder import BuildContext
from mmcore.contract import Tokens
from mmcore.cost import CostContext, Shape
from mmcore.kernels import KernelSet
from mmcore.layers import sinusoidal_positions
from mmcore.plugins import get_registry
from mmcore_audio.encoder import AudioTransformerConfig, build_audio_transformer
from mmcore_audio.features import log_mel
from mmcore_audio.preprocess import AudioPreprocessConfig, AudioPreprocessor
from mmcore_audio.resample import resample
from mmcore_audio.tokenizer import ConvStemConfig, build_conv_stem
from mmcore_audio.wav import decode_wav, read_wav

try:  # a test dependency: the reference implementation of Whisper
    import transformers
except ImportError:  # pragma: no cover
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="needs transformers")


def _tone(rate: int, seconds: float, freq: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(n: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _peak(signal: np.ndarray, rate: int) -> tuple[float, float]:
    """(frequency, amplitude) of the strongest FFT bin, Hann-windowed."""
    window = np.hanning(len(signal))
    spectrum = np.abs(np.fft.rfft(signal * window))
    k = int(np.argmax(spectrum))
    return k * rate / len(signal), 2 * spectrum[k] / window.sum()


# -- log-mel parity with Hugging Face's WhisperFeatureExtractor ---------------------------


@needs_transformers
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor_padded(n_mels: int) -> None:
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    items = [_noise(24_000, 0), _tone(16_000, 1.3, 440.0) + _noise(20_800, 1)]
    want = extractor(items, sampling_rate=16_000, return_tensors="np")["input_features"]
    got = AudioPreprocessor(AudioPreprocessConfig(n_mels=n_mels))([(x, 16_000) for x in items])
    assert got.shape == want.shape == (2, n_mels, 3000)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)


@needs_transformers
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor_unpadded(n_mels: int) -> None:
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    items = [_tone(16_000, 0.5, 1000.0), _noise(12_345, 2)]
    got = AudioPreprocessor(AudioPreprocessConfig(n_mels=n_mels, pad_to_seconds=None))(
        [(x, 16_000) for x in items])
    assert got["features"].shape == (2, n_mels, 77)  # 12,345 // 160
    assert got["mask"].sum(1).tolist() == [50, 77]
    for i, x in enumerate(items):
        out = extractor(x, sampling_rate=16_000, return_tensors="np", padding="longest",
                        return_attention_mask=True)
        frames = out["input_features"].shape[-1]
        assert out["attention_mask"].sum() == frames == got["mask"][i].sum()
        np.testing.assert_allclose(got["features"][i, :, :frames].numpy(),
                                   out["input_features"][0], atol=1e-4, rtol=0)
        assert torch.all(got["features"][i, :, frames:] == 0)


def test_log_mel_range_and_trimming() -> None:
    """Longer audio is trimmed to 30 s; values follow the clamp and (x + 4) / 4 scaling."""
    features = AudioPreprocessor(AudioPreprocessConfig())([(_noise(16_000 * 31, 3), 16_000)])
    assert features.shape == (1, 80, 3000)
    assert float(features.max() - features.min()) <= 2.0 + 1e-6  # 8 decades / 4


# -- resampling ---------------------------------------------------------------------------


def test_resample_44k_to_16k_keeps_frequency_and_amplitude() -> None:
    out = resample(torch.from_numpy(_tone(44_100, 1.0, 1000.0)), 44_100, 16_000).numpy()
    assert out.shape == (16_000,)
    freq, amp = _peak(out, 16_000)
    assert freq == pytest.approx(1000.0, abs=1.0)
    assert amp == pytest.approx(0.5, rel=0.01)
    expected = _tone(16_000, 1.0, 1000.0)
    assert np.abs(out - expected)[100:-100].max() < 2e-3  # exact phase, away from the edges


def test_resample_8k_to_16k_interpolates() -> None:
    out = resample(torch.from_numpy(_tone(8_000, 0.5, 440.0)), 8_000, 16_000).numpy()
    assert out.shape == (8_000,)
    freq, amp = _peak(out, 16_000)
    assert freq == pytest.approx(440.0, abs=2.0)
    assert amp == pytest.approx(0.5, rel=0.01)
    assert np.abs(out - _tone(16_000, 0.5, 440.0))[100:-100].max() < 2e-3


def test_resample_removes_what_the_new_rate_cannot_hold() -> None:
    """A 10 kHz tone is above 16 kHz's Nyquist: a band-limited resampler drops it."""
    out = resample(torch.from_numpy(_tone(44_100, 0.5, 10_000.0)), 44_100, 16_000).numpy()
    assert np.sqrt(np.mean(out[100:-100] ** 2)) < 0.005  # vs 0.35 for the tone itself


def test_preprocessing_44k_audio_matches_16k_audio() -> None:
    preprocess = AudioPreprocessor(AudioPreprocessConfig(pad_to_seconds=None))

    def tones(rate: int) -> np.ndarray:
        return _tone(rate, 1.0, 440.0, 0.3) + _tone(rate, 1.0, 2500.0, 0.2)

    high = preprocess([(tones(44_100), 44_100)])["features"]
    native = preprocess([(tones(16_000), 16_000)])["features"]
    assert high.shape == native.shape == (1, 80, 100)
    assert float((high - native)[:, :, 3:-3].abs().max()) < 1e-3


# -- WAV files ----------------------------------------------------------------------------


def _write_pcm(path: Path, ints: np.ndarray, width: int, rate: int) -> Path:
    """(L, C) integers -> a PCM WAV of ``width`` bytes per sample."""
    if width == 3:
        raw = ints.astype("<i4").reshape(-1).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = ints.astype({1: np.uint8, 2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(ints.shape[1])
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(raw)
    return path


def _write_float(path: Path, samples: np.ndarray, rate: int, extensible: bool = False) -> Path:
    """(L, C) float32 -> an IEEE-float WAV (format 3, or 0xFFFE with the float sub-format)."""
    channels = samples.shape[1]
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else 3, channels, rate,
                      rate * 4 * channels, 4 * channels, 32)
    if extensible:
        guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, 32, 0) + guid
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_reads_16_bit_mono(tmp_path: Path) -> None:
    ints = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int64)[:, None]
    samples, rate = read_wav(_write_pcm(tmp_path / "a.wav", ints, 2, 22_050))
    assert rate == 22_050
    np.testing.assert_allclose(samples, [0.0, 0.5, -0.5, 32767 / 32768, -1.0], atol=1e-7)


def test_reads_24_bit_stereo_as_the_channel_mean(tmp_path: Path) -> None:
    left = np.array([0, 2**22, -(2**22), 2**23 - 1, -(2**23)])
    right = np.array([2**21, 0, 2**22, -(2**23), 0])
    samples, rate = read_wav(_write_pcm(tmp_path / "b.wav", np.stack([left, right], 1), 3,
                                        48_000))
    assert rate == 48_000
    np.testing.assert_allclose(samples, (left + right) / 2 / 2**23, atol=1e-7)


def test_reads_8_and_32_bit_pcm(tmp_path: Path) -> None:
    u8 = np.array([128, 255, 0, 192])[:, None]
    samples, _ = read_wav(_write_pcm(tmp_path / "c.wav", u8, 1, 8_000))
    np.testing.assert_allclose(samples, [0.0, 127 / 128, -1.0, 0.5], atol=1e-7)
    i32 = np.array([0, 2**30, -(2**31)])[:, None]
    samples, _ = read_wav(_write_pcm(tmp_path / "d.wav", i32, 4, 8_000))
    np.testing.assert_allclose(samples, [0.0, 0.5, -1.0], atol=1e-7)


@pytest.mark.parametrize("extensible", [False, True])
def test_reads_32_bit_float(tmp_path: Path, extensible: bool) -> None:
    stereo = np.array([[0.25, -0.25], [0.5, 0.1], [-1.0, 1.0]], dtype=np.float32)
    samples, rate = read_wav(_write_float(tmp_path / "f.wav", stereo, 16_000, extensible))
    assert rate == 16_000
    np.testing.assert_allclose(samples, stereo.mean(1), atol=1e-7)


def test_decodes_bytes_as_files_read(tmp_path: Path) -> None:
    """decode_wav(bytes) is read_wav without the file: same samples, errors name the data."""
    stereo = np.array([[0.25, -0.75], [0.5, 0.1], [-1.0, 1.0]], dtype=np.float32)
    data = _write_float(tmp_path / "g.wav", stereo, 11_025, extensible=True).read_bytes()
    samples, rate = decode_wav(data, "shard/0001.wav")
    assert rate == 11_025
    np.testing.assert_allclose(samples, [-0.25, 0.3, 0.0], atol=1e-7, rtol=0)
    ints = np.array([0, 8192, -16384])[:, None]
    samples, rate = decode_wav(_write_pcm(tmp_path / "h.wav", ints, 2, 8_000).read_bytes())
    assert rate == 8_000
    np.testing.assert_allclose(samples, [0.0, 0.25, -0.5], atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match=r"shard/0001\.wav: the WAV header is truncated"):
        decode_wav(data[:20], "shard/0001.wav")
    with pytest.raises(ValueError, match=r"cannot read audio x\.wav: not a readable WAV file"):
        decode_wav(b"RIFX" + data[4:], "x.wav")


def test_wav_paths_go_through_the_preprocessor(tmp_path: Path) -> None:
    tone = _tone(44_100, 0.5, 440.0)
    path = _write_pcm(tmp_path / "tone.wav", np.round(tone * 32767).astype(np.int64)[:, None],
                      2, 44_100)
    preprocess = AudioPreprocessor(AudioPreprocessConfig(pad_to_seconds=None))
    from_file = preprocess([path])["features"]
    from_array = preprocess([(tone, 44_100)])["features"]
    assert from_file.shape == (1, 80, 50)
    assert float((from_file - from_array).abs().max()) < 1e-2  # 16-bit quantisation only


def test_clear_errors_for_bad_files(tmp_path: Path) -> None:
    preprocess = AudioPreprocessor(AudioPreprocessConfig())
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.wav.*empty \(0 bytes\)"):
        preprocess([empty])
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples")
    with pytest.raises(ValueError, match=r"notes\.wav.*not a readable WAV file"):
        preprocess([text])
    with pytest.raises(FileNotFoundError, match=r"no audio file at .*missing\.wav"):
        preprocess([tmp_path / "missing.wav"])
    silent = _write_pcm(tmp_path / "silent.wav", np.zeros((0, 1), dtype=np.int64), 2, 16_000)
    with pytest.raises(ValueError, match=r"silent\.wav.*no samples"):
        preprocess([silent])


def test_clear_errors_for_bad_waveforms() -> None:
    preprocess = AudioPreprocessor(AudioPreprocessConfig())
    with pytest.raises(ValueError, match="needs a sample rate"):
        preprocess([np.zeros(100, dtype=np.float32)])
    with pytest.raises(ValueError, match="must be 1-D"):
        preprocess([(np.zeros((2, 100), dtype=np.float32), 16_000)])
    with pytest.raises(ValueError, match="empty"):
        preprocess([(np.zeros(0, dtype=np.float32), 16_000)])
    unpadded = AudioPreprocessor(AudioPreprocessConfig(pad_to_seconds=None))
    with pytest.raises(ValueError, match="too short"):
        unpadded([(np.zeros(150, dtype=np.float32), 16_000)])
    with pytest.raises(ValueError, match="whole number of 10 ms"):
        AudioPreprocessConfig(pad_to_seconds=0.0123)


def test_bare_waveforms_use_the_configured_rate() -> None:
    tone = _tone(8_000, 0.5, 300.0)
    bare = AudioPreprocessor(AudioPreprocessConfig(sample_rate=8_000, pad_to_seconds=1.0))
    paired = AudioPreprocessor(AudioPreprocessConfig(pad_to_seconds=1.0))
    assert torch.equal(bare([torch.from_numpy(tone)]), paired([(tone, 8_000)]))


def test_log_mel_of_silence_is_finite() -> None:
    features = log_mel(torch.zeros(1600), 80)
    assert features.shape == (80, 10)
    assert torch.all(features == (-10.0 + 4.0) / 4.0)


# -- conv stem and encoder ----------------------------------------------------------------


def test_conv_stem_turns_3000_frames_into_1500_tokens() -> None:
    stem = build_conv_stem(ConvStemConfig(width=8, n_mels=80), None)  # type: ignore[arg-type]
    tokens = stem(torch.randn(2, 80, 3000))
    assert tokens.x.shape == (2, 1500, 8)
    assert tokens.mask is None
    with pytest.raises(ValueError, match="exceed"):
        stem(torch.randn(1, 80, 3002))


def test_conv_stem_mask_and_padding_invariance() -> None:
    torch.manual_seed(0)
    stem = build_conv_stem(ConvStemConfig(width=8, n_mels=4, frames=16), None)  # type: ignore[arg-type]
    short = torch.randn(1, 4, 7)
    padded = torch.cat([short, torch.randn(1, 4, 9)], dim=2)  # junk after the real frames
    mask = torch.arange(16)[None] < 7
    tokens = stem({"features": padded, "mask": mask})
    assert tokens.x.shape == (1, 8, 8)
    assert tokens.mask is not None and tokens.mask[0].tolist() == [True] * 4 + [False] * 4
    alone = stem(short)
    assert alone.x.shape == (1, 4, 8)
    torch.testing.assert_close(tokens.x[:, :4], alone.x, atol=1e-6, rtol=1e-6)


@needs_transformers
def test_sinusoidal_positions_equal_whispers() -> None:
    from transformers.models.whisper.modeling_whisper import sinusoids

    ours = sinusoidal_positions(1500, 384)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # Whisper's formula, without float32 rounding
    try:
        exact = sinusoids(1500, 384)
    finally:
        torch.set_default_dtype(default)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(ours, exact.float(), atol=1e-6, rtol=0)
    # Whisper's float32 angles drift by up to ~1e-4 at position 1500; checkpoints store
    # that table, and the conv stem keeps its positions as a saved buffer to load it
    torch.testing.assert_close(ours, sinusoids(1500, 384), atol=2e-4, rtol=0)
    stem = build_conv_stem(ConvStemConfig(width=8, n_mels=4, frames=12), None)  # type: ignore[arg-type]
    assert "fixed_positions" in stem.state_dict()


def _tiny_whisper() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """A random tiny WhisperEncoder and our conv stem + encoder holding the same weights."""
    config = transformers.WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2,
                                        encoder_ffn_dim=64, num_mel_bins=8,
                                        max_source_positions=6, decoder_layers=1,
                                        decoder_attention_heads=2, decoder_ffn_dim=64)
    torch.manual_seed(0)
    hf = transformers.WhisperModel(config).encoder.eval()
    ctx = BuildContext(kernels=KernelSet(), in_width=16)
    stem = build_conv_stem(ConvStemConfig(width=16, n_mels=8, frames=12), ctx)
    encoder = build_audio_transformer(AudioTransformerConfig(layers=2, heads=2), ctx)
    torch.testing.assert_close(stem.fixed_positions, hf.embed_positions.weight, atol=1e-6,
                               rtol=0)
    stem.load_state_dict({"fixed_positions": hf.embed_positions.weight,
                          **{f"conv{i}.{p}": getattr(getattr(hf, f"conv{i}"), p)
                             for i in (1, 2) for p in ("weight", "bias")}})
    state = {"stack.final_norm.weight": hf.layer_norm.weight,
             "stack.final_norm.bias": hf.layer_norm.bias}
    names = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm", "mlp.fc1": "fc1",
             "mlp.fc2": "fc2", **{f"attn.{p}": f"self_attn.{p}" for p in
                                  ("q_proj", "k_proj", "v_proj", "out_proj")}}
    for i, layer in enumerate(hf.layers):
        for ours, theirs in names.items():
            module = layer.get_submodule(theirs)
            state[f"stack.blocks.{i}.{ours}.weight"] = module.weight
            bias = module.bias if module.bias is not None else torch.zeros(16)  # k_proj
            state[f"stack.blocks.{i}.{ours}.bias"] = bias
    encoder.load_state_dict(state)
    return hf, stem.eval(), encoder.eval()


@needs_transformers
def test_conv_stem_and_encoder_equal_hugging_face_whisper_encoder() -> None:
    hf, stem, encoder = _tiny_whisper()
    features = torch.randn(2, 8, 12)
    with torch.no_grad():
        want = hf(features).last_hidden_state
        got = encoder(stem(features)).x
    assert got.shape == want.shape == (2, 6, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# -- costs --------------------------------------------------------------------------------


def _cost(kind: str, name: str, params: dict, ctx: CostContext | None = None) -> Any:
    entry = get_registry().get(kind, name)
    return entry.cost(entry.config.model_validate(params), ctx or CostContext())


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _counted_flops(module: torch.nn.Module, inputs: Any) -> int:
    """FLOPs torch's own counter sees in one forward pass."""
    with FlopCounterMode(display=False) as counter:
        module(inputs)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "none"])
def test_conv_stem_cost_counts_its_parameters(positions: str) -> None:
    params = {"width": 24, "n_mels": 80, "frames": 3000, "positions": positions}
    cost = _cost("tokenizer", "conv-stem", params)
    stem = build_conv_stem(ConvStemConfig(**params), None)  # type: ignore[arg-type]
    assert cost.params == _count(stem)
    assert cost.out == Shape(1500, 24)
    assert cost.flops == 2 * 3000 * 3 * 80 * 24 + 2 * 1500 * 3 * 24 * 24
    assert cost.flops == _counted_flops(stem, torch.randn(1, 80, 3000))


def test_audio_transformer_cost_counts_its_parameters() -> None:
    params = {"layers": 2, "heads": 4, "mlp_ratio": 2.0}
    cost = _cost("encoder", "audio-transformer", params, CostContext(in_shape=Shape(10, 32)))
    encoder = build_audio_transformer(AudioTransformerConfig(**params),
                                      BuildContext(kernels=KernelSet(), in_width=32))
    assert cost.params == _count(encoder)
    assert cost.out == Shape(10, 32)
    assert cost.flops == _counted_flops(encoder, Tokens(torch.randn(1, 10, 32)))
    assert _cost("preprocessor", "audio", {}).params == 0


@needs_transformers
def test_whisper_large_layer_parameter_counts() -> None:
    """One Whisper-large encoder layer (1024 wide, 16 heads, MLP 4096), counted three ways."""
    ours = _cost("encoder", "audio-transformer", {"layers": 1, "heads": 16, "final_norm": False},
                 CostContext(in_shape=Shape(1500, 1024))).params
    config = transformers.WhisperConfig(d_model=1024, encoder_attention_heads=16,
                                        encoder_ffn_dim=4096)
    with torch.device("meta"):
        hf = transformers.models.whisper.modeling_whisper.WhisperEncoderLayer(config)
    d = 1024
    assert ours == 12_596_224  # mmcore: bias on q, k, v, out and both MLP linears
    assert _count(hf) == ours - d == 12_595_200  # Whisper's k_proj has no bias
    assert ours - 9 * d == 12 * d * d + 4 * d == 12_587_008  # weights + LayerNorms only
