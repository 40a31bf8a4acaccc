"""Model sources: local weight files load exactly, ids are validated early, and a real pretrained
ImageNet model loaded from a local file classifies real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
from conftest import TINY_CLIP, TINY_CLIP_CFG
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
from torch import nn

from kt.checkpoints import map_state_dict_in_order
from kt.errors import KtError
from kt.models import ModelSpec, create_model
from kt.plugins.datasets import FASHION_MNIST_CLASSES
from kt.preprocess import Preprocessing, normalize, resize_uint8
from kt.spec import slugify


def _random_input(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Sets BatchNorm running statistics from one batch, so that a randomly initialised network gives
    logits of order one in eval mode (with the default statistics MobileNetV3's vanish to ~1e-10)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    model.train()(x)
    model.eval()


# --------------------------------------------------------------------------------------------- timm


def test_timm_local_weight_file_gives_identical_logits(tmp_path: Path, tiny_resnet_spec: ModelSpec) -> None:
    args = tiny_resnet_spec.args
    torch.manual_seed(1)
    ref = create_model(ModelSpec(id="timm:resnet18", num_classes=10, args=args, preprocess={"size": 28},
                                 pretrained=False))
    assert ref.origin == "random init"
    path = tmp_path / "resnet18_tiny.pth"
    torch.save(ref.body.state_dict(), path)

    loaded = create_model(ModelSpec(id="timm:resnet18", weights=str(path), num_classes=10, args=args,
                                    preprocess={"size": 28}))
    assert loaded.origin == f"file:{path.resolve()}"
    assert loaded.num_classes == 10
    assert not loaded.training
    assert loaded.preprocess.size == 28
    # timm's own config for resnet18, only the size overridden
    assert loaded.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert loaded.preprocess.interpolation == "bicubic"

    x = _random_input(4, 28)
    with torch.no_grad():
        expected = ref(x)
        got = loaded(x)
        logits, features = loaded.logits_and_features(x)
        # a fresh random model differs: the equality above comes from loading the file
        torch.manual_seed(2)
        other = create_model(ModelSpec(id="timm:resnet18", num_classes=10, args=args, pretrained=False))(x)
    assert got.shape == (4, 10)
    assert expected.abs().max() > 1e-2  # non-trivial logits
    assert torch.equal(got, expected)
    assert torch.equal(logits, expected)
    assert not torch.allclose(other, expected)
    # features are the pooled input of the final linear layer (channels[-1] wide)
    assert features.shape == (4, 128)
    assert torch.allclose(loaded.body.fc(features), logits, atol=1e-6)


def test_timm_weight_file_with_wrong_class_count_is_a_kt_error(tmp_path: Path,
                                                               tiny_resnet_weights: Path) -> None:
    with pytest.raises(KtError, match="timm could not build 'resnet18'") as err:
        create_model(ModelSpec(id="timm:resnet18", weights=str(tiny_resnet_weights), num_classes=7,
                               args={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16,
                                     "stem_type": "deep"}))
    assert "num_classes" in str(err.value)


# -------------------------------------------------------------------------------------- torchvision


def test_torchvision_local_weight_file_gives_identical_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    ref = create_model(ModelSpec(id="torchvision:mobilenet_v3_small", num_classes=10, pretrained=False))
    assert ref.origin == "random init"
    _calibrate_batchnorm(ref, _random_input(8, 64, seed=7))
    path = tmp_path / "mnv3.pth"
    torch.save(ref.body.state_dict(), path)

    loaded = create_model(ModelSpec(id="torchvision:mobilenet_v3_small", weights=str(path), num_classes=10),
                          classes=FASHION_MNIST_CLASSES)
    assert loaded.origin == f"file:{path.resolve()}"
    assert loaded.num_classes == 10
    assert loaded.classes == FASHION_MNIST_CLASSES

    x = _random_input(3, 64, seed=1)
    with torch.no_grad():
        expected = ref(x)
        logits, features = loaded.logits_and_features(x)
        torch.manual_seed(4)
        other = create_model(ModelSpec(id="torchvision:mobilenet_v3_small", num_classes=10,
                                       pretrained=False))(x)
    assert expected.abs().max() > 1e-2  # non-trivial logits
    assert torch.equal(loaded(x), expected)
    assert torch.equal(logits, expected)
    assert not torch.allclose(other, expected)
    # the head is the last Linear (1024 -> 10) of the classifier
    assert features.shape == (3, 1024)
    assert torch.allclose(loaded.body.classifier[-1](features), logits, atol=1e-6)


def test_torchvision_weight_file_that_does_not_fit_is_a_kt_error(tmp_path: Path) -> None:
    model = create_model(ModelSpec(id="torchvision:mobilenet_v3_small", num_classes=10, pretrained=False))
    path = tmp_path / "mnv3_10.pth"
    torch.save({"state_dict": model.body.state_dict()}, path)  # nested form is unwrapped
    with pytest.raises(KtError, match="does not fit torchvision mobilenet_v3_small"):
        create_model(ModelSpec(id="torchvision:mobilenet_v3_small", weights=str(path), num_classes=5))


def test_torchvision_model_without_a_linear_head_is_a_kt_error() -> None:
    """SqueezeNet classifies with a 1x1 convolution: kt names the model and what it needs instead of
    failing on an empty list."""
    with pytest.raises(KtError, match=r"torchvision squeezenet1_1 has no nn.Linear classifier"):
        create_model(ModelSpec(id="torchvision:squeezenet1_1", num_classes=10, pretrained=False))


# ---------------------------------------------------------------------------------------- open_clip

def _class_embeddings(clip: nn.Module, classes: list[str]) -> torch.Tensor:
    """Zero-shot class embeddings computed by hand: mean of normalised prompt embeddings, normalised."""
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    rows = []
    for name in classes:
        emb = clip.encode_text(tokenizer([t(name) for t in SIMPLE_IMAGENET_TEMPLATES]), normalize=True)
        rows.append(nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def test_open_clip_local_weight_file_and_zero_shot_head(tmp_path: Path, tiny_clip_config: str) -> None:
    torch.manual_seed(5)
    ref = open_clip.create_model(tiny_clip_config).eval()
    path = tmp_path / "tiny_clip.pt"
    torch.save(ref.state_dict(), path)  # a full CLIP state dict: visual + text towers + logit_scale

    classes = FASHION_MNIST_CLASSES
    spec = ModelSpec(id=f"open_clip:{tiny_clip_config}", weights=str(path), args={"templates": "simple"})
    model = create_model(spec, classes)
    assert model.origin == f"file:{path.resolve()}"
    assert model.num_classes == len(classes) == 10
    assert model.classes == classes
    assert model.preprocess == Preprocessing(size=32, mean=open_clip.OPENAI_DATASET_MEAN,
                                             std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic",
                                             crop_pct=1.0)

    head = model.body.head.weight  # (C, D): one row per class
    assert head.shape == (len(classes), TINY_CLIP_CFG["embed_dim"])
    scale = ref.logit_scale.exp().item()
    assert scale == pytest.approx(1 / 0.07)
    x = _random_input(5, 32, seed=2)
    with torch.no_grad():
        expected_head = scale * _class_embeddings(ref, classes)
        assert torch.allclose(head, expected_head, atol=1e-5)
        assert torch.allclose(head.norm(dim=1), torch.full((10,), scale), atol=1e-4)

        # the image tower carries the file's weights exactly
        assert torch.equal(model.body.visual(x), ref.encode_image(x))
        image = ref.encode_image(x, normalize=True)
        expected = image @ expected_head.T
        logits, features = model.logits_and_features(x)
        # loading the same file again gives bit-identical logits
        again = create_model(spec, classes)(x)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.equal(again, logits)
    assert features.shape == (5, TINY_CLIP_CFG["embed_dim"])
    assert torch.allclose(features.norm(dim=1), torch.ones(5), atol=1e-5)


def test_open_clip_zero_shot_head_follows_the_classes_and_bad_templates_fail(tmp_path: Path,
                                                                             tiny_clip_config: str) -> None:
    torch.manual_seed(6)
    path = tmp_path / "tiny_clip.pt"
    torch.save(open_clip.create_model(tiny_clip_config).state_dict(), path)
    model = create_model(ModelSpec(id=f"open_clip:{tiny_clip_config}", weights=str(path),
                                   args={"templates": "simple"}), ["cat", "dog", "car"])
    assert model.body.head.weight.shape == (3, 32)
    with torch.no_grad():
        assert model(_random_input(2, 32)).shape == (2, 3)
    with pytest.raises(KtError, match=r"args\.templates must be one of"):
        create_model(ModelSpec(id=f"open_clip:{tiny_clip_config}", weights=str(path),
                               args={"templates": "fancy"}), ["cat"])


# ------------------------------------------------------------------------------------ id validation


@pytest.fixture
def no_model_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes any attempt to build a model fail the test: validation must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the id/weights were validated")

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr(open_clip, "create_model", refuse)


@pytest.mark.parametrize(("model_id", "expected"), [
    ("timm:resnet5O", ["timm has no model 'resnet5O'", "Did you mean: resnet50"]),
    ("timm:resnet5O.a1_in1k", ["timm has no model 'resnet5O'", "resnet50"]),
    ("timmm:resnet18", ["unknown model source 'timmm'", "Did you mean: timm?",
                        "Known: open_clip, timm, torchvision."]),
    ("open_clip:ViT-B-3/openai", ["open_clip has no model 'ViT-B-3'", "ViT-B-32"]),
    ("torchvision:resnet5O/IMAGENET1K_V2", ["torchvision has no model 'resnet5O'", "resnet50"]),
])
def test_unknown_model_ids_fail_at_once_with_close_names(model_id: str, expected: list[str],
                                                         no_model_building: None) -> None:
    with pytest.raises(KtError) as err:
        create_model(ModelSpec(id=model_id))
    for text in expected:
        assert text in str(err.value)


def test_unknown_torchvision_weights_tag_lists_known_tags() -> None:
    with pytest.raises(KtError, match=r"no weights 'IMAGENET1K_V9' for resnet18\. Did you mean: IMAGENET1K_V1\?"):
        create_model(ModelSpec(id="torchvision:resnet18/IMAGENET1K_V9"))


def test_missing_weight_file_names_the_path(tmp_path: Path, no_model_building: None) -> None:
    missing = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(KtError, match="does not exist") as err:
        create_model(ModelSpec(id="timm:resnet18", weights=str(missing), name="mine"))
    assert str(missing) in str(err.value)
    assert "'mine'" in str(err.value)


def test_model_id_without_source_prefix_is_rejected() -> None:
    with pytest.raises(KtError, match="no source prefix"):
        ModelSpec(id="resnet18")
    with pytest.raises(KtError, match="no source prefix"):
        ModelSpec.parse({"id": "resnet18", "num_classes": 10})


def test_spec_slug_and_dict() -> None:
    spec = ModelSpec.parse({"id": "timm:resnet50.a1_in1k", "num_classes": 10, "pretrained": False})
    assert (spec.source, spec.arch, spec.slug) == ("timm", "resnet50.a1_in1k", "timm__resnet50_a1_in1k")
    assert spec.to_dict() == {"id": "timm:resnet50.a1_in1k", "num_classes": 10, "pretrained": False}
    assert slugify("open_clip:ViT-B-32/laion2b_s34b_b79k") == "open_clip__ViT-B-32_laion2b_s34b_b79k"


# ------------------------------------------------------------------- a real pretrained ImageNet model


def test_state_dict_mapping_skips_unpaired_batch_counters() -> None:
    bn_src, bn_tgt = nn.BatchNorm1d(3).state_dict(), nn.BatchNorm1d(3).state_dict()
    src = {"_fc.weight": torch.ones(4, 3),
           **{f"_bn.{k}": v for k, v in bn_src.items() if k != "num_batches_tracked"}}
    tgt = {"fc.weight": torch.zeros(4, 3), **{f"bn.{k}": v for k, v in bn_tgt.items()}}
    mapped = map_state_dict_in_order(src, tgt)
    assert list(mapped) != [] and set(mapped) == set(tgt)
    assert torch.equal(mapped["fc.weight"], torch.ones(4, 3))
    assert mapped["bn.num_batches_tracked"] is tgt["bn.num_batches_tracked"]  # the target keeps its own
    with pytest.raises(KtError, match=r"tensor 0 differs: checkpoint 'a.weight' \(2, 2\) vs model 'b.weight'"):
        map_state_dict_in_order({"a.weight": torch.ones(2, 2)}, {"b.weight": torch.ones(3, 2)})
    with pytest.raises(KtError, match="the checkpoint has 1 tensors and the model 2"):
        map_state_dict_in_order({"a.weight": torch.ones(2, 2)}, {"b.weight": torch.ones(2, 2), "b.bias": torch.ones(2)})


def _photo(name: str) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    image = getattr(skimage_data, name)()  # (H, W, 3) uint8
    assert image.dtype == np.uint8 and image.ndim == 3
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).contiguous()


def test_pretrained_efficientnet_lite0_from_a_local_file_classifies_real_photos(lite_file) -> None:
    lite0_file = lite_file("lite0")
    model = create_model(ModelSpec(id="timm:tf_efficientnet_lite0", weights=str(lite0_file),
                                   num_classes=1000))
    assert model.origin == f"file:{lite0_file.resolve()}"
    prep = model.preprocess
    # TF-ported EfficientNet-Lite models expect inputs in [-1, 1]
    assert prep == Preprocessing(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
                                 crop_pct=0.875)

    photos = torch.cat([resize_uint8(_photo(name), prep.size, prep.crop_pct, prep.interpolation)
                        for name in ("chelsea", "coffee")])
    assert photos.shape == (2, 3, 224, 224) and photos.dtype == torch.uint8
    with torch.no_grad():
        probs = model(normalize(photos, prep)).softmax(dim=1)
    top1 = probs.argmax(dim=1).tolist()
    cats = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    cups = {967, 968, 504}  # espresso, cup, coffee mug
    assert top1[0] in cats, top1
    assert top1[1] in cups, top1
    # confident, not lucky: most of the mass lies on the right group of classes
    assert probs[0, sorted(cats)].sum() > 0.8
    assert probs[1, sorted(cups)].sum() > 0.8


def test_family_is_inferred_from_the_modules_and_a_spec_overrides_it(tmp_path: Path) -> None:
    from timm.models.mlp_mixer import MlpMixer
    from timm.models.vision_transformer import VisionTransformer

    from kt.models import infer_family

    assert infer_family(MlpMixer(num_blocks=1, embed_dim=32)) == "mlp"  # a patchifying stem only
    assert infer_family(VisionTransformer(depth=1, embed_dim=32, num_heads=2)) == "transformer"
    assert infer_family(timm.create_model("convnext_atto", depths=(1, 1, 1, 1))) == "cnn"  # 4x4/4 stem + 7x7 dw
    assert infer_family(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MultiheadAttention(4, 1))) == "transformer"  # hybrid
    # attention known by its projections, not its name; channel attention is not self-attention
    for name, family in (("xcit_nano_12_p8_224", "transformer"), ("twins_svt_small", "transformer"),
                         ("coat_lite_mini", "transformer"), ("resnest14d", "cnn"), ("ecaresnet26t", "cnn"),
                         ("gmlp_s16_224", "mlp")):
        with torch.device("meta"):  # no memory, no weights: the module tree only
            assert infer_family(timm.create_model(name)) == family, name
    spec = ModelSpec(id="timm:resnet18", args={"layers": [1, 1, 1, 1]}, num_classes=3, pretrained=False)
    model = create_model(spec)
    from kt.artifacts import logits_attrs
    from kt.data import Split

    data = Split("eval", np.array(["x0", "x1"]), np.array([0, 1]), ["a", "b", "c"])
    attrs = logits_attrs(spec, model, data, {"name": "x"})
    assert attrs["family"] == "cnn" and attrs["params"] == sum(p.numel() for p in model.body.parameters())
    override = ModelSpec(**{**spec.__dict__, "family": "mlp"})
    assert logits_attrs(override, model, data, {"name": "x"})["family"] == "mlp"
