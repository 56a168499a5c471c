"""LLaVA as components: conformance, the llava-1.5-7b parameter counts (analytic and
meta-built), the chat preprocessor and its answer-only labels, the instruction-tuning
loss, splicing errors, the stage specs, and a few training steps of llava-tiny."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmcore
from mmcore.analysis import analyse
from mmcore.builder import build
from mmcore.plugins import get_registry
from mmcore.spec import load_spec
from mmcore.testing import check_component, conformance_params
from mmcore_llava.chat import (
    BYTE_EOS,
    BYTE_IMAGE,
    IGNORE_INDEX,
    LlavaChatConfig,
    LlavaChatPreprocessor,
)
from mmcore_llava.fusion import splice

VISION, PROJECTOR, LM, HEAD = 303_507_456, 20_979_712, 6_607_605_760, 131_334_144
TOTAL = 7_063_427_072


@pytest.mark.parametrize(("kind", "name"), conformance_params(plugin="mmcore_llava"))
def test_conformance(kind: str, name: str) -> None:
    check_component(get_registry(), kind, name)


def _parts(counts: dict[str, int]) -> tuple[int, int, int, int]:
    """(vision tower, projector, LM, LM head) from per-path parameter counts."""
    return (counts["modalities.image.tokenizer"] + counts["modalities.image.encoder"],
            counts["projector"], counts["modalities.text.tokenizer"] + counts["trunk"],
            counts["heads.lm"])


def test_llava_1_5_7b_parameters_analytic_and_meta_built() -> None:
    spec = load_spec("llava-1.5-7b")
    rows = {r.path: r.parameters for r in analyse(spec).components}
    projector = 1024 * 4096 + 4096 * 4096 + 2 * 4096  # two Linears with biases
    analytic = {**rows, "projector": projector, "trunk": rows["fusion"] - projector}
    assert _parts(analytic) == (VISION, PROJECTOR, LM, HEAD)
    assert sum(v for k, v in rows.items() if v is not None) == TOTAL

    model = build(spec, device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    built = {"modalities.image.tokenizer": count(model.tokenizers["image"]),
             "modalities.image.encoder": count(model.encoders["image"]),
             "modalities.text.tokenizer": count(model.tokenizers["text"]),
             "projector": count(model.fusion.projector), "trunk": count(model.fusion.stack),
             "heads.lm": count(model.heads["lm"])}
    assert _parts(built) == (VISION, PROJECTOR, LM, HEAD)
    assert count(model) == TOTAL


def test_chat_preprocessor_expands_images_and_labels_only_the_answer() -> None:
    chat = LlavaChatPreprocessor(LlavaChatConfig(image_tokens=3, context_length=40,
                                                 template="Q: {prompt} A:"))
    batch = chat([{"prompt": "<image>\nhue?", "answer": "red"}, "<image> hi"])
    ids, mask, labels = batch["ids"], batch["mask"], batch["labels"]
    row = ids[0, : int(mask[0].sum())].tolist()
    assert row == [256, *b"Q: ", *[BYTE_IMAGE] * 3, *b"\nhue? A:", *b" red", BYTE_EOS]
    answer = labels[0][labels[0] != IGNORE_INDEX].tolist()
    assert answer == [*b" red", BYTE_EOS]
    assert (labels[1] == IGNORE_INDEX).all()  # a bare prompt teaches nothing
    assert chat.decode(row[-5:]) == " red"
    with pytest.raises(ValueError, match="exceeds context_length 40"):
        chat([{"prompt": "<image>" * 20, "answer": "x"}])


def test_instruction_loss_is_the_cross_entropy_of_the_answer_tokens_only() -> None:
    model = mmcore.build("llava-tiny")
    chat = model.preprocessors["text"]
    text = chat([{"prompt": "<image>\nWhat shape is it?", "answer": "star"}])
    pixels = torch.randn(1, 3, 24, 24)
    out = model({"image": pixels, "chroma": pixels, "text": text})
    loss = model.objectives["answer"](out, {"text": text})["loss"]
    logits, labels = out.heads["lm"][0], text["labels"][0]
    picked = (labels[1:] != IGNORE_INDEX).nonzero().flatten()
    manual = F.cross_entropy(logits[picked], labels[1:][picked])
    assert len(picked) == len(b" star") + 1
    assert torch.allclose(loss, manual, atol=1e-6)


def test_splice_names_both_counts() -> None:
    embeds, ids = torch.zeros(1, 6, 4), torch.tensor([[1, 9, 9, 9, 9, 2]])
    with pytest.raises(ValueError, match=r"4 <image> token\(s\) \(2 placeholder\(s\)\) but 1 "
                                         r"image\(s\) were given, 2 tokens each"):
        splice(embeds, ids, torch.ones(1, 2, 4), 9)
    out = splice(embeds, ids, torch.arange(16.0).view(2, 2, 4), 9)
    assert torch.equal(out[0, 1:5], torch.arange(16.0).view(4, 4)) and out[0, 0].abs().sum() == 0


def test_a_few_training_steps_reduce_the_loss() -> None:
    from mmcore.data import Collator, spec_dataset

    torch.manual_seed(0)
    model = mmcore.build("llava-tiny")
    data = spec_dataset(model.spec)
    batch = Collator.for_model(model)([data[i] for i in range(16)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model.loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]  # 5.56 -> 3.13 here


def test_stage1_trains_the_projector_only() -> None:
    from mmcore.training.parts import freeze

    spec = load_spec("llava-1.5-7b-stage1")
    assert spec.fusion.params["freeze_lm"] is True
    assert set(spec.train.freeze) == {"modalities.image", "modalities.text", "heads.lm"}
    data = mmcore.load_spec("llava-tiny").model_dump(mode="json", exclude_none=True)
    data["fusion"]["freeze_lm"] = True
    model = mmcore.build(data)
    freeze(model, [*spec.train.freeze, "modalities.chroma"])  # llava-tiny's second tower
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()  # llava-tiny: one per view
                         if n.startswith(("fusion.projector.", "fusion.view_projectors."))}
    lora = load_spec("llava-1.5-7b-stage2-lora").train.lora
    assert lora is not None and lora.targets[0].path == "fusion"
    assert load_spec("llava-1.5-7b-stage2").train.freeze == ["modalities.image"]


def test_shapes_factors_split_the_label_and_leave_the_rest_alone() -> None:
    from mmcore_shapes import ShapesConfig, ShapesDataset

    plain = ShapesDataset(ShapesConfig(image_size=16, train_size=8))[5]
    item = ShapesDataset(ShapesConfig(image_size=16, train_size=8, factors=True))[5]
    assert (item["colour"], item["shape"]) == divmod(plain["label"], 6)
    assert item["text"] == plain["text"] and item["image"].tobytes() == plain["image"].tobytes()
    assert "colour" not in plain


def test_seen_checks_never_name_a_held_out_combination_in_training() -> None:
    from mmcore_llava.data import ShapesVQAConfig, ShapesVQADataset
    from mmcore_shapes.dataset import class_names, held_out

    unseen = {class_names()[i] for i in held_out()}
    cfg = ShapesVQAConfig(train_size=400, kind_weights=(0, 0, 1, 0), seen_checks=True)
    items = [ShapesVQADataset(cfg)[i] for i in range(400)]
    assert {it["kind"] for it in items} == {"check"}
    named = {" ".join(it["text"]["prompt"].rstrip("?").split()[-2:]) for it in items}
    assert not named & unseen and len(named) == 30
    assert {it["text"]["answer"] for it in items} == {"yes", "no"}
    default = [ShapesVQADataset(ShapesVQAConfig(train_size=400))[i] for i in range(400)]
    assert {" ".join(it["text"]["prompt"].rstrip("?").split()[-2:]) for it in default
            if it["kind"] == "check"} & unseen  # without it, "no" goes with held-out names


def test_recolour_gives_shape_questions_an_off_palette_hue_in_training_only() -> None:
    import colorsys

    import numpy as np

    from mmcore_llava.data import RECOLOUR_MARGIN, ShapesVQAConfig, ShapesVQADataset
    from mmcore_shapes import ShapesConfig, ShapesDataset
    from mmcore_shapes.render import COLOURS

    cfg = ShapesVQAConfig(image_size=24, train_size=12, eval_size=12, noise=0.0,
                          kind_weights=(0, 1, 0, 0), recolour=1.0)
    images = ShapesDataset(ShapesConfig(image_size=24, train_size=12, noise=0.0, masks=True))
    palette = [colorsys.rgb_to_hsv(*(v / 255 for v in c))[0] * 360 for c in COLOURS.values()]
    for i in range(12):
        item, plain = ShapesVQADataset(cfg)[i], images[i]
        inside = plain["mask"].numpy() > 0
        pixels = np.asarray(item["image"], dtype=np.float64)
        hue = colorsys.rgb_to_hsv(*(pixels[inside].mean(0) / 255))[0] * 360
        assert min(min(abs(hue - h), 360 - abs(hue - h)) for h in palette) > RECOLOUR_MARGIN - 8
        background = pixels[~inside].mean(0)
        assert np.ptp(background) < 30  # still grey (its own tint is up to 24)
        assert item["text"]["answer"] == images.class_names[plain["label"]].split()[1]
    held = ShapesVQADataset(cfg).split("eval")[3]
    assert held["image"].tobytes() == ShapesVQADataset(
        cfg.model_copy(update={"recolour": 0.0})).split("eval")[3]["image"].tobytes()
