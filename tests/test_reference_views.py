"""Evaluation views identical to each library's own: kt's logits against the library's pipeline run by
hand (PIL decode, its eval transform, its normalisation) on real photos of several sizes, a PNG and a
greyscale JPEG, on the CPU in float32. Target: the same argmax on every image, max |logit diff| <= 1e-3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kt.artifacts import read_logits
from kt.data import load_split
from kt.extract import extract
from kt.models import Classifier, ModelSpec, create_model
from kt.preprocess import Preprocessing, fast_view

TOLERANCE = 1e-3


def by_hand(model: Classifier, root: Path, transform, split: str = "val") -> np.ndarray:
    """Logits of ``model`` on every file of the split, in kt's sample order, through ``transform``
    (the library's own eval transform, PIL image -> normalised float tensor)."""
    data = load_split({"name": "imagefolder", "root": str(root)}, "eval" if split == "val" else split)
    with torch.no_grad():
        x = torch.stack([transform(Image.open(root / split / str(i)).convert("RGB")) for i in data.ids])
        return model.eval()(x).numpy()


def kt_logits(spec: ModelSpec, root: Path, tmp_path: Path, decode: str = "reference", **dataset) -> np.ndarray:
    out = tmp_path / f"{spec.slug}-{decode}.h5"
    extract(spec, {"name": "imagefolder", "root": str(root), **dataset}, "eval", out, batch_size=8, device="cpu",
            workers=0, decode=decode)
    return read_logits(out).logits


def assert_parity(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert np.abs(ours - theirs).max() <= TOLERANCE, np.abs(ours - theirs).max()


def test_photo_folder_has_the_sizes_the_target_names(photo_root: Path) -> None:
    files = sorted((photo_root / "val").rglob("*.*"))
    sizes = [Image.open(f).size for f in files]
    assert len(files) == 24 and {f.suffix for f in files} == {".jpg", ".png"}
    assert any(min(s) > 2 * 224 for s in sizes) and any(min(s) < 224 for s in sizes)
    assert any(s[1] > s[0] for s in sizes) and any(s[0] > s[1] for s in sizes)  # portrait and landscape
    assert any(Image.open(f).mode == "L" for f in files)


def test_timm_lite0_matches_timms_own_evaluation_and_the_fast_path_does_not(lite_file, photo_root: Path,
                                                                             tmp_path: Path) -> None:
    """EfficientNet-Lite0 with its ImageNet weights: 224 px, crop 0.875, bicubic."""
    import timm.data

    spec = ModelSpec(id="timm:tf_efficientnet_lite0", weights=str(lite_file("lite0")), name="lite0")
    model = create_model(spec)
    cfg = timm.data.resolve_data_config({}, model=model.body)
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ((3, 224, 224), 0.875, "bicubic")
    theirs = by_hand(model, photo_root, timm.data.create_transform(**cfg))
    ours = kt_logits(spec, photo_root, tmp_path)
    assert_parity(ours, theirs)
    # the photos are ImageNet classes (synset folders: ImageNet-1k's label space): the weights are real
    labels = load_split({"name": "imagefolder", "root": str(photo_root)}, "eval").labels
    assert (theirs.argmax(1) == labels).mean() >= 0.5
    # the fast path is a different pipeline (draft decoding, tensor resize): measurably off
    fast = kt_logits(spec, photo_root, tmp_path, decode="fast")
    assert np.abs(fast - theirs).max() > 10 * TOLERANCE


@pytest.mark.parametrize("data_cfg", [
    {"input_size": (3, 160, 160), "crop_pct": 0.95, "crop_mode": "squash", "interpolation": "bilinear"},
    {"input_size": (3, 96, 96), "crop_pct": 1.0, "crop_mode": "border", "interpolation": "bicubic"},
    {"input_size": (3, 128, 128), "crop_pct": 0.9, "crop_mode": "center", "interpolation": "nearest"},
])
def test_another_timm_config_matches_timms_transform(data_cfg: dict, photo_root: Path, tmp_path: Path) -> None:
    """Another size, crop fraction, crop mode and interpolation (random weights, set through ``preprocess``)."""
    import timm.data

    size = data_cfg["input_size"][-1]
    torch.manual_seed(0)
    spec = ModelSpec(id="timm:resnet18", pretrained=False, args={"layers": [1, 1, 1, 1]},
                     preprocess={"size": size, "crop_pct": data_cfg["crop_pct"], "crop_mode": data_cfg["crop_mode"],
                                 "interpolation": data_cfg["interpolation"]})
    model = create_model(spec)
    weights = tmp_path / "resnet.pth"
    torch.save(model.body.state_dict(), weights)
    spec = ModelSpec(**{**spec.__dict__, "weights": str(weights), "pretrained": True})
    cfg = timm.data.resolve_data_config(data_cfg, model=model.body)
    theirs = by_hand(model, photo_root, timm.data.create_transform(**cfg))
    assert_parity(kt_logits(spec, photo_root, tmp_path), theirs)


def test_torchvision_matches_its_weights_transforms(photo_root: Path, tmp_path: Path) -> None:
    """ResNet-18 with the IMAGENET1K_V1 tag (its transforms: resize 256 bilinear, crop 224), local random weights."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(tvm.resnet18().state_dict(), weights)
    spec = ModelSpec(id="torchvision:resnet18/IMAGENET1K_V1", weights=str(weights))
    model = create_model(spec)
    theirs = by_hand(model, photo_root, tvm.ResNet18_Weights.IMAGENET1K_V1.transforms())
    assert_parity(kt_logits(spec, photo_root, tmp_path), theirs)


def test_open_clip_matches_its_own_preprocess(tiny_clip_config: str, photo_root: Path, tmp_path: Path) -> None:
    """open_clip's ``create_model_and_transforms`` eval preprocess (resize shortest side, bicubic, crop)."""
    import open_clip

    torch.manual_seed(0)
    clip, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_config)
    weights = tmp_path / "clip.pth"
    torch.save(clip.state_dict(), weights)
    classes = tmp_path / "classes.txt"  # readable names: a 4-class head, not ImageNet's 1000 prompts
    folders = sorted(p.name for p in (photo_root / "train").iterdir())
    classes.write_text("".join(f"{f}\t{name}\n" for f, name in zip(folders, ["moped", "tabby cat", "espresso",
                                                                            "missile"], strict=True)))
    spec = ModelSpec(id=f"open_clip:{tiny_clip_config}", weights=str(weights), args={"templates": "simple"})
    model = create_model(spec, ["moped", "tabby cat", "espresso", "missile"])
    theirs = by_hand(model, photo_root, preprocess)
    assert_parity(kt_logits(spec, photo_root, tmp_path, classes_file=str(classes)), theirs)


def test_fast_view_crop_modes_keep_the_geometry() -> None:
    """The fast path's squash and border modes: sizes, and the border padded with the mean colour."""
    wide = torch.full((3, 40, 80), 200, dtype=torch.uint8)
    prep = Preprocessing(size=32, crop_pct=1.0, crop_mode="border", mean=(0.5, 0.25, 0.0))
    out = fast_view(wide, prep)
    assert out.shape == (3, 32, 32)
    assert out[:, 0, 0].tolist() == [128, 64, 0]  # top rows: padding in the mean colour
    assert out[:, 16, 16].tolist() == [200, 200, 200]  # the image itself
    assert fast_view(wide, Preprocessing(size=32, crop_pct=0.8, crop_mode="squash")).shape == (3, 32, 32)


def test_transfer_views_are_the_reference_views(lite_file, photo_root: Path, tmp_path: Path) -> None:
    """On un-augmented passes every model sees its own reference view, from one decode: the frozen-output
    cache holds what each model's extraction gives (teacher 224 px, student 96 px squash), and a transfer's
    evaluation before training equals the student's extraction."""
    import h5py

    from kt.transfer import TransferSettings, build_cache, eval_logits

    dataset = {"name": "imagefolder", "root": str(photo_root)}
    teacher = ModelSpec(id="timm:tf_efficientnet_lite0", weights=str(lite_file("lite0")), name="lite0")
    torch.manual_seed(0)
    student = ModelSpec(id="timm:resnet18", pretrained=False, args={"layers": [1, 1, 1, 1]}, name="small",
                        preprocess={"size": 96, "crop_pct": 0.9, "crop_mode": "squash"})
    weights = tmp_path / "small.pth"
    torch.save(create_model(student).body.state_dict(), weights)
    student = ModelSpec(**{**student.__dict__, "weights": str(weights), "pretrained": True})
    settings = TransferSettings(cache_views=1, augment="none", workers=0, device="cpu", eval_batch_size=7)
    build_cache(teacher, student, dataset, settings, tmp_path / "cache.h5")
    for spec, name in ((teacher, "teacher"), (student, "initial")):
        out = tmp_path / f"{spec.slug}-train.h5"
        extract(spec, dataset, "train", out, batch_size=8, device="cpu", workers=0)
        with h5py.File(tmp_path / "cache.h5") as f:
            np.testing.assert_allclose(f[name][0], read_logits(out).logits, atol=1e-5)
    model = create_model(student)
    evald = load_split(dataset, "eval")
    np.testing.assert_allclose(eval_logits(model, evald, settings, torch.device("cpu")),
                               kt_logits(student, photo_root, tmp_path), atol=1e-5)


def test_imagenet_synset_folders_get_imagenets_label_space(photo_root: Path, tmp_path: Path, caplog) -> None:
    """Four synset folders: ImageNet-1k's 1000 classes in their standard order (said in the log), so that
    an ImageNet model's outputs are the labels; a classes_file keeps the folders alone; other folder names
    keep the sorted folders; a class-count mismatch names dataset.classes_file."""
    import logging

    from kt.errors import KtError
    from kt.plugins.datasets import ImageFolder

    with caplog.at_level(logging.INFO, logger="kt"):
        split = load_split({"name": "imagefolder", "root": str(photo_root)}, "eval")
    assert len(split.classes) == 1000 and split.classes[281] == "n02123045"
    assert sorted(set(split.labels)) == [281, 665, 744, 967]  # tabby, moped, missile, espresso
    assert "are ImageNet-1k synsets" in caplog.text and "dataset.classes_file" in caplog.text
    folders = sorted(p.name for p in (photo_root / "train").iterdir())
    (tmp_path / "classes.txt").write_text("\n".join(folders) + "\n")
    own = load_split({"name": "imagefolder", "root": str(photo_root), "classes_file": str(tmp_path / "classes.txt")},
                     "eval")
    assert own.classes == folders and sorted(set(own.labels)) == [0, 1, 2, 3]
    for name in ("cat", "n0212345"):  # not synsets: the folders as they are
        (tmp_path / "other" / "train" / name).mkdir(parents=True)
    assert ImageFolder(root=str(tmp_path / "other")).classes == ["cat", "n0212345"]
    with pytest.raises(KtError, match=r"predicts 1000 classes but the dataset has 4\..*dataset\.classes_file"):
        create_model(ModelSpec(id="timm:resnet18", pretrained=False), own.classes)
