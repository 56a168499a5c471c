"""Views: the image preprocessor's grey and chroma channels, modalities that read another
item key (``source``), and the llava / flamingo fusions joining an image's views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmcore
from mmcore.data import Collator
from mmcore.errors import CheckpointError
from mmcore_image.preprocess import ImagePreprocessConfig, ImagePreprocessor
from mmcore_shapes.render import COLOURS, render

PLAIN = {"size": 8, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _pre(channels: str, **kw: object) -> ImagePreprocessor:
    return ImagePreprocessor(ImagePreprocessConfig(**{**PLAIN, **kw}, channels=channels))


def _random_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")


def test_grey_and_chroma_match_a_float64_reference() -> None:
    image = _random_image(0)
    rgb = np.asarray(image, dtype=np.float64) / 255.0  # (8, 8, 3)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    chroma = rgb.max(-1) - rgb.min(-1)
    chroma = chroma / chroma.max()
    for channels, want in (("grey", luma), ("chroma", chroma)):
        got = _pre(channels)([image])[0].double().numpy()  # (3, 8, 8)
        assert got.shape == (3, 8, 8)
        for c in range(3):
            np.testing.assert_allclose(got[c], want, atol=1e-6)


def test_views_are_normalised_with_mean_and_std() -> None:
    image = _random_image(1)
    raw = _pre("chroma")([image])[0]
    scaled = _pre("chroma", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))([image])[0]
    torch.testing.assert_close(scaled, (raw - 0.5) / 0.25)


def test_a_colourless_image_has_zero_chroma() -> None:
    grey = Image.new("RGB", (8, 8), (90, 90, 90))
    assert torch.count_nonzero(_pre("chroma")([grey])) == 0


def test_chroma_hides_the_palette_colour_and_keeps_the_shape() -> None:
    """One RNG state draws the same place, size, ground and noise whatever the colour and
    shape: the chroma silhouettes (> 0.5) of a star in the six palette colours overlap
    closely (IoU about 0.9), those of a star and a cross or diamond do not (about 0.57)."""
    def silhouette(colour: str, shape: str, seed: int) -> torch.Tensor:
        image = render(colour, shape, 24, np.random.default_rng(seed))
        return _pre("chroma", size=24)([image])[0, 0] > 0.5

    def iou(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a & b).sum() / (a | b).sum())

    same_shape, other_shape = [], []
    for seed in range(6):
        star = silhouette("red", "star", seed)
        same_shape += [iou(star, silhouette(c, "star", seed)) for c in COLOURS if c != "red"]
        other_shape += [iou(star, silhouette("red", s, seed)) for s in ("cross", "diamond")]
    assert np.mean(same_shape) > 0.8 and np.mean(other_shape) < 0.7


def test_unknown_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="channels"):
        ImagePreprocessConfig(channels="hsv")  # type: ignore[arg-type]


def test_a_modality_reads_its_source_key() -> None:
    image = _random_image(2)
    collate = Collator({"image": _pre("rgb"), "chroma": _pre("chroma")}, {"chroma": "image",
                                                                         "image": "image"})
    batch = collate([{"image": image, "label": 3}, {"image": image, "label": 4}])
    assert sorted(batch) == ["chroma", "image", "label"]
    torch.testing.assert_close(batch["chroma"][0], _pre("chroma")([image])[0])
    torch.testing.assert_close(batch["image"][0], _pre("rgb")([image])[0])


def test_a_view_named_like_another_item_key_is_refused() -> None:
    collate = Collator({"shape": _pre("chroma")}, {"shape": "image"})
    with pytest.raises(ValueError, match=r"reads the items' 'image'.*also hold a key 'shape'"):
        collate([{"image": _random_image(3), "shape": 1}])


def _llava_inputs(model: mmcore.MultimodalModel) -> dict[str, object]:
    text = model.preprocessors["text"]([{"prompt": "<image>\nWhat shape is it?",
                                         "answer": "star"}])
    pixels = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    return {"image": pixels, "chroma": pixels.flip(-1), "text": text}


def test_llava_joins_the_views_before_the_projector() -> None:
    spec = mmcore.load_spec("llava-tiny").model_dump(mode="json", exclude_none=True)
    spec["fusion"]["join"] = "concat"
    model = mmcore.build(spec).eval()
    fusion = model.fusion
    assert fusion.image_widths == {"image": 64, "chroma": 64}
    assert fusion.projector.linear_1.in_features == 128 and not fusion.view_projectors
    inputs = _llava_inputs(model)
    tokens = model.encode(inputs)
    joined = fusion.image_features(tokens)
    assert joined is not None and joined.shape == (1, 36, 128)
    torch.testing.assert_close(joined[..., 64:], tokens["chroma"].x)
    with torch.no_grad():
        base = model(inputs).heads["lm"]
        other = model({**inputs, "chroma": torch.zeros(1, 3, 24, 24)}).heads["lm"]
    assert not torch.allclose(base, other)  # the chroma tower reaches the answer
    with pytest.raises(ValueError, match=r"views \['image', 'chroma'\] come together"):
        model({"image": inputs["image"], "text": inputs["text"]})


def test_llava_with_views_cannot_be_exported_to_hf(tmp_path: Path) -> None:
    from mmcore_llava.export import export_folder

    with pytest.raises(CheckpointError, match="views"):
        export_folder(mmcore.build("llava-tiny"), tmp_path)


def test_flamingo_joins_the_views_before_the_resampler() -> None:
    model = mmcore.build("flamingo-tiny").eval()
    if not model.fusion.cfg.views:
        pytest.skip("flamingo-tiny has no views")
    widths = model.fusion.image_widths
    assert list(widths) == ["image", *model.fusion.cfg.views]
    resampler = model.fusion.resampler
    assert resampler is not None
    pre = model.preprocessors["text"]
    text = pre(["<image>red<|endofchunk|>"])
    pixels = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    inputs = {"image": pixels, "text": text, **{v: pixels for v in model.fusion.cfg.views}}
    features = model.fusion.encode_media(model.encode(inputs))
    assert features is not None and features.shape[-1] == sum(widths.values())


def test_classification_reports_every_classification_head() -> None:
    from mmcore.data import spec_dataset
    from mmcore.evaluate import classification

    torch.manual_seed(0)
    model = mmcore.build("shapes-views").eval()
    data = spec_dataset(model.spec, "eval")
    items = [data[i] for i in range(12)]
    collate = Collator.for_model(model)
    with torch.no_grad():
        result = classification(model, items, batch_size=5, progress=False)
        # the same batches (5, 5, 2), so the same arithmetic as the task's
        outs = [model(collate(items[i : i + 5])).heads for i in range(0, 12, 5)]
    want = {name: float((torch.cat([o[name] for o in outs]).argmax(1)
                         == torch.tensor([it[name] for it in items])).float().mean())
            for name in ("colour", "shape")}
    assert result["head"] == "colour" and result["top1"] == pytest.approx(want["colour"])
    assert result["shape/top1"] == pytest.approx(want["shape"])


def test_preprocess_with_views_gives_every_modality_reading_the_key() -> None:
    model = mmcore.build("blip-tiny")
    images = [_random_image(4).resize((24, 24)), _random_image(5).resize((24, 24))]
    inputs = model.preprocess_with_views("image", images)
    assert sorted(inputs) == ["chroma", "image"]
    torch.testing.assert_close(inputs["chroma"], model.preprocess("chroma", images))
    assert sorted(model.preprocess_with_views("text", ["a red star"])) == ["text"]


def test_validate_names_a_source_key_the_data_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    from mmcore.cli import main

    assert main(["validate", "llava-tiny", "modalities.chroma.source=picture"]) != 0
    err = capsys.readouterr().err
    assert "['chroma', 'image', 'text'] (chroma reads 'picture'); no item has 'picture'" in err


def test_llava_join_sum_gives_each_view_its_own_projector() -> None:
    torch.manual_seed(0)
    fusion = mmcore.build("llava-tiny").fusion  # the preset joins by sum
    assert fusion.projector.linear_1.in_features == 64
    assert "view_projectors.chroma.linear_1.weight" in dict(fusion.named_parameters())
    x = torch.randn(2, 36, 128, generator=torch.Generator().manual_seed(2))
    want = fusion.projector(x[..., :64]) + fusion.view_projectors["chroma"](x[..., 64:])
    torch.testing.assert_close(fusion.project(x), want)
    rgb_only = x.clone()
    rgb_only[..., 64:] = 0  # the RGB part's contribution does not depend on the chroma part
    zero = fusion.view_projectors["chroma"](torch.zeros(2, 36, 64))
    torch.testing.assert_close(fusion.project(rgb_only) - zero, fusion.projector(x[..., :64]))
