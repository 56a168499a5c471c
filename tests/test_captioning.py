"""The captioning decoder: KV-cached generation, EOS handling, teacher forcing and padding."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mmcore.builder import BuildContext
from mmcore.contract import ModelOutput, Tokens
from mmcore.kernels import Hardware, select_kernels
from mmcore.plugins import get_registry
from mmcore_objectives.captioning import Captioning
from mmcore_objectives.decoder import CaptionDecoder

VOCAB, WIDTH, CONTEXT_WIDTH = 23, 16, 12


def _captioning(**params: Any) -> Captioning:
    entry = get_registry().get("objective", "captioning")
    cfg = entry.config.model_validate({"context": "image", "context_width": CONTEXT_WIDTH,
                                       "vocab_size": VOCAB, "width": WIDTH, "layers": 2,
                                       "heads": 2, "max_length": 16, **params})
    torch.manual_seed(0)
    module = entry.factory(cfg, BuildContext(kernels=select_kernels(None, Hardware())))
    assert isinstance(module, Captioning)
    # larger than default weights, so greedy choices are not near-ties and sequences vary
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5 if p.dim() > 1 else 0.2)
    return module.eval()


def _context(batch: int = 3, seed: int = 0) -> Tokens:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, CONTEXT_WIDTH, generator=generator)
    lengths = torch.tensor([5, 3, 1, 4, 2])[:batch]
    return Tokens(x, torch.arange(5)[None, :] < lengths[:, None])


@pytest.mark.parametrize("tie", [True, False])
def test_cached_generation_equals_full_recompute(tie: bool) -> None:
    decoder = _captioning(tie_embeddings=tie).decoder
    context = _context()
    kwargs = {"bos_id": 1, "eos_id": VOCAB, "max_new_tokens": 12}  # an EOS that never comes
    cached = decoder.generate(context, **kwargs)
    full = decoder.generate(context, use_cache=False, **kwargs)
    assert cached.ids.shape == (3, 13)
    assert torch.equal(cached.ids, full.ids)
    assert torch.allclose(cached.logits, full.logits, atol=1e-5, rtol=0)
    assert len(set(cached.ids[:, 1:].flatten().tolist())) >= 3  # not a constant sequence


def test_cached_sampling_equals_full_recompute() -> None:
    decoder = _captioning().decoder
    context = _context()
    runs = [decoder.generate(context, bos_id=1, eos_id=VOCAB, max_new_tokens=10, greedy=False,
                             use_cache=cache, generator=torch.Generator().manual_seed(5))
            for cache in (True, False)]
    assert torch.equal(runs[0].ids, runs[1].ids)


def test_prefill_and_steps_equal_teacher_forcing() -> None:
    decoder = _captioning().decoder
    context = _context()
    ids = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = decoder(ids, context)  # (B, 7, V)
        cache = decoder.start_cache(context)
        prefill = decoder.step(ids[:, :4], cache)  # four tokens at once, causal
        steps = [decoder.step(ids[:, t : t + 1], cache) for t in range(4, 7)]
    got = torch.cat([prefill, *steps], dim=1)
    assert cache.length == 7
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_greedy_decoding_stops_at_eos() -> None:
    decoder = _captioning(tie_embeddings=False).decoder
    same = _context(batch=1)
    context = Tokens(same.x.expand(3, -1, -1), same.valid().expand(3, -1))  # 3 equal rows
    free = decoder.generate(context, bos_id=1, eos_id=VOCAB, max_new_tokens=12).ids[0]
    eos = int(free[-1])
    stop = int((free[1:] == eos).nonzero()[0]) + 1  # the first time it is produced
    assert 2 < stop < 12
    out = decoder.generate(context, bos_id=1, eos_id=eos, max_new_tokens=12)
    assert out.ids.shape == (3, stop + 1)  # every row finished: decoding stopped early
    assert torch.equal(out.ids[0], free[: stop + 1]) and bool(out.finished.all())
    assert int(out.ids[0, -1]) == eos and out.logits.shape == (3, stop, VOCAB)


def test_finished_rows_are_padded_after_eos() -> None:
    decoder = _captioning(tie_embeddings=False).decoder
    context = _context()
    free = decoder.generate(context, bos_id=1, eos_id=VOCAB, max_new_tokens=12).ids
    eos = int(free[0, -1])  # row 0 produces it at some step; the others may not
    out = decoder.generate(context, bos_id=1, eos_id=eos, max_new_tokens=12, pad_id=0)
    assert bool(out.finished[0]) and not bool(out.finished.all())
    for row, ids in enumerate(out.ids.tolist()):
        if eos in ids[1:]:
            end = ids.index(eos, 1)
            assert ids[: end + 1] == free[row, : end + 1].tolist()
            assert all(t == 0 for t in ids[end + 1 :])
            assert bool(out.finished[row])
        else:
            assert not bool(out.finished[row]) and len(ids) == 13


def test_generation_checks_max_length() -> None:
    decoder = _captioning().decoder
    with pytest.raises(ValueError, match="max_length"):
        decoder.generate(_context(), bos_id=1, eos_id=2, max_new_tokens=16)


def _loss(objective: Captioning, context: Tokens, text: Any) -> torch.Tensor:
    output = ModelOutput(tokens={"image": context}, embeddings={})
    return objective(output, {"text": text})["loss"]


def test_teacher_forcing_ignores_padding() -> None:
    objective = _captioning()
    context = _context()
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (3, 6), generator=generator)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 2])[:, None]
    base = _loss(objective, context, {"ids": ids, "mask": mask})
    noisy = torch.where(mask, ids, torch.randint(0, VOCAB, ids.shape, generator=generator))
    assert not torch.equal(noisy, ids)
    assert torch.equal(_loss(objective, context, {"ids": noisy, "mask": mask}), base)
    # = the mean next-token cross-entropy over the 5 + 3 + 1 real targets
    with torch.no_grad():
        logits = objective.decoder(ids, context)
    per_row = [F.cross_entropy(logits[i, : n - 1], ids[i, 1:n], reduction="sum")
               for i, n in enumerate((6, 4, 2))]
    assert torch.allclose(base, torch.stack(per_row).sum() / 9, atol=1e-5)
    changed = ids.clone()
    changed[1, 3] = (changed[1, 3] + 1) % VOCAB  # the last real target of row 1
    assert not torch.allclose(_loss(objective, context, {"ids": changed, "mask": mask}), base)


def test_bare_ids_use_pad_id() -> None:
    objective = _captioning(pad_id=0)
    context = _context()
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 2, 0, 0, 0], [1, 3, 4, 9, 10, 2]])
    mask = ids != 0
    assert torch.equal(_loss(objective, context, ids),
                       _loss(objective, context, {"ids": ids, "mask": mask}))


def test_decoder_is_causal() -> None:
    decoder = _captioning().decoder
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % VOCAB
    context = _context(batch=2)
    with torch.no_grad():
        a, b = decoder(ids, context), decoder(changed, context)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_decoder_module_type() -> None:
    assert isinstance(_captioning().decoder, CaptionDecoder)
