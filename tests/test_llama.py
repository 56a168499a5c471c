"""The LLaMA-family LM: conformance, costs, the preset, and parity with transformers
(LLaMA, Mistral, Qwen2; tied/untied; RoPE scaling; sharded; left padding; KV cache; export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.builder import build
from mmcore.convert import export_model, import_model
from mmcore.errors import CheckpointError
from mmcore.plugins import get_registry
from mmcore.spec import load_spec
from mmcore.testing import check_component, conformance_params
from mmcore_llama import CausalLMRunner
from mmcore_llama.convert import spec_from_config

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2)
FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
            "mistral": ("MistralConfig", "MistralForCausalLM"),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
ATOL = 1e-4


def hf_model(family: str = "llama", **overrides: Any) -> Any:
    """A tiny random transformers model with weights large enough to make logits differ."""
    config_cls, model_cls = (getattr(transformers, n) for n in FAMILIES[family])
    config = config_cls(**{**TINY, **overrides})
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model


def save(model: Any, folder: Path, **kwargs: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def ids_batch(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, TINY["vocab_size"], (batch, length), generator=g)


def mm_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    text = {"ids": ids} if mask is None else {"ids": ids, "mask": mask}
    with torch.no_grad():
        return model({"text": text}).heads["lm"]


def hf_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    kwargs: dict[str, Any] = {}
    if mask is not None:
        kwargs = {"attention_mask": mask.long(),
                  "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        return model(ids, **kwargs).logits


# -- components --------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), conformance_params(plugin="mmcore_llama"))
def test_conformance(kind: str, name: str) -> None:
    check_component(get_registry(), kind, name)


def test_preset_cost_matches_built_parameters() -> None:
    from mmcore.analysis import analyse

    spec = load_spec("llama-tiny")
    model = build(spec, device="meta")
    built = sum(p.numel() for p in model.parameters())
    summary = analyse(spec)
    assert not summary.partial and summary.parameters == built


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True},
                                       {"attention_bias": True, "mlp_bias": True,
                                        "head_dim": 16}])
def test_imported_spec_cost_matches_built_parameters(tmp_path: Path,
                                                     overrides: dict[str, Any]) -> None:
    from mmcore.analysis import analyse

    config = transformers.LlamaConfig(**{**TINY, **overrides}).to_dict()
    spec = load_spec(spec_from_config(config, tmp_path))
    model = build(spec, device="meta")
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, **overrides}))
    expected = sum(p.numel() for p in reference.parameters())
    assert sum(p.numel() for p in model.parameters()) == expected
    assert analyse(spec).parameters == expected


def test_preset_trains_one_step() -> None:
    spec = load_spec("llama-tiny")
    model = build(spec)
    batch = {"text": model.preprocess("text", ["hello world", "a longer line of text"])}
    losses = model.loss(batch)
    losses["loss"].backward()
    loss = float(losses["loss"].detach())
    assert 4.0 < loss < 7.0  # about log(259) = 5.56 at initialisation
    assert model.tokenizers["text"].embed_tokens.weight.grad is not None


def test_causal_lm_ignores_padding_and_minus_100_labels() -> None:
    from mmcore.contract import ModelOutput
    from mmcore_llama.components import CausalLM, CausalLMConfig

    logits = torch.randn(1, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4]])
    objective = CausalLM(CausalLMConfig())
    out = ModelOutput(tokens={}, embeddings={}, heads={"lm": logits})
    masked = objective(out, {"text": {"ids": ids, "mask": torch.tensor([[1, 1, 1, 0]]).bool()}})
    labels = objective(out, {"text": ids, "labels": torch.tensor([[1, 2, 3, -100]])})
    expected = torch.nn.functional.cross_entropy(logits[0, :2], ids[0, 1:3])
    torch.testing.assert_close(masked["loss"], expected)
    torch.testing.assert_close(labels["loss"], expected)


# -- parity with transformers ------------------------------------------------------------

CASES = {
    "llama-gqa": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-mqa-bias": ("llama", {"num_key_value_heads": 1, "attention_bias": True,
                                 "mlp_bias": True}),
    "llama-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-dynamic": ("llama", {"max_position_embeddings": 4,
                                "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    "llama3": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8}}),
    "llama-yarn": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": 16}}),
    "mistral": ("mistral", {"sliding_window": 16}),
    "qwen2": ("qwen2", {}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case: str, tmp_path: Path) -> None:
    family, overrides = CASES[case]
    reference = hf_model(family, **overrides)
    model = import_model(save(reference, tmp_path / "hf"), "hf-llama").eval()
    ids = ids_batch()
    expected = hf_logits(reference, ids)
    assert expected.abs().max() > 1.0  # the comparison is not of near-zero numbers
    torch.testing.assert_close(mm_logits(model, ids), expected, atol=ATOL, rtol=0)


def test_sharded_folder_imports(tmp_path: Path) -> None:
    reference = hf_model()
    folder = save(reference, tmp_path / "hf", max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    model = import_model(folder).eval()  # detected: no --format
    ids = ids_batch()
    torch.testing.assert_close(mm_logits(model, ids), hf_logits(reference, ids),
                               atol=ATOL, rtol=0)


def left_padded(length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = ids_batch(3, length)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :3] = False
    mask[2, :5] = False
    return ids.masked_fill(~mask, 0), mask


def test_left_padded_batch_matches_transformers(tmp_path: Path) -> None:
    reference = hf_model()
    model = import_model(save(reference, tmp_path / "hf")).eval()
    ids, mask = left_padded()
    got, expected = mm_logits(model, ids, mask), hf_logits(reference, ids, mask)
    torch.testing.assert_close(got[mask], expected[mask], atol=ATOL, rtol=0)
    alone = mm_logits(model, ids[2:, 5:])  # the short prompt without its padding
    torch.testing.assert_close(got[2, 5:], alone[0], atol=1e-5, rtol=0)


def test_kv_cache_matches_full_recomputation(tmp_path: Path) -> None:
    model = import_model(save(hf_model(), tmp_path / "hf")).eval()
    runner = CausalLMRunner.from_model(model)
    ids, mask = left_padded(10)
    full = mm_logits(model, ids, mask)  # (B, T, V)
    logits, cache = runner.prefill(ids[:, :6], mask[:, :6])  # every row has a real token
    torch.testing.assert_close(logits, full[:, 5], atol=1e-5, rtol=0)
    for t in range(6, ids.shape[1]):
        logits, cache = runner.step(ids[:, t : t + 1], mask[:, : t + 1], cache)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
    row2 = cache.keys[0][2].clone()
    reordered = runner.reorder_cache(cache, torch.tensor([2, 0]))
    assert reordered.mask is not None and reordered.mask.shape == (2, 10)
    assert torch.equal(reordered.keys[0][0], row2)


@pytest.mark.parametrize("case", ["llama-gqa", "llama-tied", "llama3", "mistral", "qwen2"])
def test_export_round_trip_loads_in_transformers(case: str, tmp_path: Path) -> None:
    family, overrides = CASES[case]
    reference = hf_model(family, **overrides)
    model = import_model(save(reference, tmp_path / "hf")).eval()
    out = export_model(model, tmp_path / "out", "hf-llama")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    reloaded = getattr(transformers, FAMILIES[family][1]).from_pretrained(out).eval()
    ids = ids_batch()
    torch.testing.assert_close(hf_logits(reloaded, ids), hf_logits(reference, ids),
                               atol=1e-5, rtol=0)


def test_mistral_refuses_sequences_beyond_its_sliding_window(tmp_path: Path) -> None:
    model = import_model(save(hf_model("mistral", sliding_window=8), tmp_path / "hf")).eval()
    mm_logits(model, ids_batch(1, 8))
    with pytest.raises(ValueError, match="sliding_window of 8"):
        mm_logits(model, ids_batch(1, 9))


@pytest.mark.parametrize(("field", "value"), [
    ("hidden_act", "gelu"), ("pretraining_tp", 2),
    ("rope_scaling", {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0, "unheard_of": 1}),
    ("quantization_config", {"quant_method": "gptq"}), ("partial_rotary_factor", 0.5),
])
def test_unsupported_config_fields_are_refused_by_name(tmp_path: Path, field: str,
                                                       value: Any) -> None:
    config = {**TINY, "model_type": "llama", field: value}
    (tmp_path / "config.json").write_text(json.dumps(config))
    name = "longrope" if "longrope" in str(value) else "unheard_of" if "unheard" in str(
        value) else field
    with pytest.raises(CheckpointError, match=name):
        import_model(tmp_path, "hf-llama")


def test_qwen2_sliding_window_is_refused(tmp_path: Path) -> None:
    config = {**TINY, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8}
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        spec_from_config(config, tmp_path)


# -- tokenizer ----------------------------------------------------------------------------


def tiny_llama_tokenizer(path: Path) -> Path:
    """A word-level tokenizer.json with LLaMA's special tokens and BOS template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(
        ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(str(path))
    return path


def test_hf_tokenizer_feeds_the_imported_model(tmp_path: Path) -> None:
    folder = save(hf_model(), tmp_path / "hf")
    tiny_llama_tokenizer(folder / "tokenizer.json")
    model = import_model(folder).eval()
    text = model.preprocess("text", ["the cat sat", "a dog ran on the mat"])
    assert text["ids"][0, :4].tolist() == [1, 3, 4, 5]
    with torch.no_grad():
        logits = model({"text": text}).heads["lm"]
    assert logits.shape[-1] == TINY["vocab_size"]
    out = export_model(model, tmp_path / "out", "hf-llama")
    assert (out / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
