"""The imported LLaMA LM through the one generation loop: greedy and beam search equal
transformers' ``generate`` token for token (single prompt, batched left-padded prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.convert import import_model
from mmcore.generation import Decoder, GenerationConfig, generate
from mmcore_llama import CausalLMRunner

transformers = pytest.importorskip("transformers")

VOCAB = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, CausalLMRunner]:
    """(transformers model, the mmcore runner of its import); GQA, tied, eos/pad unset."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 0.15)
    reference.generation_config.eos_token_id = None
    reference.generation_config.pad_token_id = None
    folder: Path = tmp_path_factory.mktemp("llama")
    reference.save_pretrained(folder, safe_serialization=True)
    runner = CausalLMRunner.from_model(import_model(folder, "hf-llama").eval())
    return reference, runner


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[5, 17, 3, 29, 11, 8], [0, 0, 0, 40, 22, 9], [0, 33, 12, 7, 7, 50]])
    mask = ids != 0
    mask[0, 0] = True
    return ids, mask


def hf_generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, **kw: Any) -> Any:
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask.long(), do_sample=False, **kw)


def test_runner_is_a_decoder(models: tuple[Any, CausalLMRunner]) -> None:
    assert isinstance(models[1], Decoder)


def test_greedy_equals_transformers(models: tuple[Any, CausalLMRunner]) -> None:
    reference, runner = models
    ids, mask = left_padded()
    ours = generate(runner, ids, attention_mask=mask, config=GenerationConfig(max_new_tokens=12))
    ref = hf_generate(reference, ids, mask, max_new_tokens=12)
    assert torch.equal(ours.sequences, ref)
    alone = generate(runner, ids[1:2, 3:], config=GenerationConfig(max_new_tokens=12))
    assert torch.equal(alone.new_tokens, ours.new_tokens[1:2])


def test_greedy_stops_at_eos_like_transformers(models: tuple[Any, CausalLMRunner]) -> None:
    reference, runner = models
    ids, mask = left_padded()
    first = generate(runner, ids, attention_mask=mask, config=GenerationConfig(max_new_tokens=4))
    eos = int(first.new_tokens[0, 2])
    cfg = GenerationConfig(max_new_tokens=10, eos_token_id=eos, pad_token_id=VOCAB - 1)
    ours = generate(runner, ids, attention_mask=mask, config=cfg)
    ref = hf_generate(reference, ids, mask, max_new_tokens=10, eos_token_id=eos,
                      pad_token_id=VOCAB - 1)
    assert torch.equal(ours.sequences, ref)


@pytest.mark.parametrize(("beams", "ret"), [(2, 1), (4, 3)])
def test_beam_search_equals_transformers(models: tuple[Any, CausalLMRunner], beams: int,
                                         ret: int) -> None:
    reference, runner = models
    ids, mask = left_padded()
    cfg = GenerationConfig(max_new_tokens=8, num_beams=beams, num_return_sequences=ret,
                           pad_token_id=VOCAB - 1)
    ours = generate(runner, ids, attention_mask=mask, config=cfg)
    ref = hf_generate(reference, ids, mask, max_new_tokens=8, num_beams=beams,
                      num_return_sequences=ret, pad_token_id=VOCAB - 1,
                      return_dict_in_generate=True, output_scores=True)
    assert torch.equal(ours.sequences, ref.sequences)
    assert ours.sequence_scores is not None
    torch.testing.assert_close(ours.sequence_scores, ref.sequences_scores, rtol=0, atol=1e-4)
