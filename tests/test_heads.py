"""open_clip zero-shot heads built once (rule prepare_model; ModelSource.preparation in
kt/plugins/open_clip_source.py): the second extraction reuses the stored head without a single
text-tower forward and gives the same logits; other templates rebuild it; a head built from
something else is refused; synset folders get ImageNet's readable names, other folder ids a clear
error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml

from kt.artifacts import read_logits
from kt.errors import KtError
from kt.models import ModelSpec
from kt.plugins.open_clip_source import head_attrs, read_head, readable_classes, write_head

REPO = Path(__file__).resolve().parents[1]
TINY = "kt-test-tiny-clip"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# A plugin module (loaded by Snakemake and by every kt job) that registers the tiny architecture and
# counts text-tower forwards in the file $KT_TEXT_CALLS, across processes.
PLUGIN = f'''
import os
from pathlib import Path

import open_clip

open_clip.add_model_config(Path(__file__).with_name("{TINY}.json"))
_encode_text = open_clip.CLIP.encode_text


def _counted(self, *args, **kwargs):
    with open(os.environ["KT_TEXT_CALLS"], "a") as f:
        f.write("1\\n")
    return _encode_text(self, *args, **kwargs)


open_clip.CLIP.encode_text = _counted
'''


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the plugin, the architecture's config and random weights in a local file."""
    folder = tmp_path_factory.mktemp("clip")
    (folder / "plugins").mkdir()
    (folder / "plugins" / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    (folder / "plugins" / "tiny_clip.py").write_text(PLUGIN)
    open_clip.add_model_config(folder / "plugins" / f"{TINY}.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY).state_dict(), folder / "clip.pt")
    return folder


def _run(workdir: Path, templates: str) -> tuple[subprocess.CompletedProcess, int]:
    config = {"results": "out", "plugin_dirs": [str(workdir / "plugins")], "zoo": {"models": []},
              "dataset": {"name": "fashion_mnist", "subset": {"train": 100, "eval": 100}},
              "models": [{"id": f"open_clip:{TINY}", "name": name, "weights": str(workdir / "clip.pt"),
                          "args": {"templates": templates if name == "clip" else "simple"}}
                         for name in ("clip", "other")]}  # a config names two models at least
    (workdir / "my.yaml").write_text(yaml.safe_dump(config))
    calls = workdir / "text_calls"
    cmd = [sys.executable, "-m", "snakemake", "out/logits/eval/clip.h5", "--cores", "1", "--directory", str(workdir),
           "--configfile", str(workdir / "my.yaml")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KT_TEXT_CALLS": str(calls)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done, len(calls.read_text().splitlines()) if calls.exists() else 0


def test_the_head_is_built_once_and_reused_without_the_text_tower(tiny_clip: Path) -> None:
    first, calls = _run(tiny_clip, "simple")
    assert "rule prepare_model:" in first.stderr and "rule extract:" in first.stderr
    assert calls == 1  # 10 classes x 3 templates: one text batch, in the head job only
    head = tiny_clip / "out/prepared/clip.h5"
    logits = read_logits(tiny_clip / "out/logits/eval/clip.h5")
    assert logits.attrs["model_spec"]["args"]["prepared"] == "out/prepared/clip.h5"

    (tiny_clip / "out/logits/eval/clip.h5").unlink()
    second, calls = _run(tiny_clip, "simple")
    assert "rule prepare_model:" not in second.stderr and "rule extract:" in second.stderr
    assert calls == 1  # the second extraction ran no text forward
    np.testing.assert_array_equal(read_logits(tiny_clip / "out/logits/eval/clip.h5").logits, logits.logits)

    built = head.stat().st_mtime_ns
    third, calls = _run(tiny_clip, "openai")  # other templates: the head is built again
    assert "rule prepare_model:" in third.stderr and head.stat().st_mtime_ns != built
    assert calls > 1


def test_a_head_built_from_something_else_is_refused(tmp_path: Path, tiny_clip: Path) -> None:
    spec = ModelSpec(id=f"open_clip:{TINY}", weights=str(tiny_clip / "clip.pt"), args={"templates": "simple"})
    write_head(spec, ["cat", "dog"], tmp_path / "head.h5", torch.device("cpu"))
    assert read_head(tmp_path / "head.h5", head_attrs(spec, ["cat", "dog"], "simple")).shape == (2, 32)
    for classes, templates in ((["cat", "car"], "simple"), (["cat", "dog"], "openai")):
        with pytest.raises(KtError, match=r"head\.h5 was built from something else.*delete it"):
            read_head(tmp_path / "head.h5", head_attrs(spec, classes, templates))


def test_synset_folders_get_readable_names_or_a_clear_error() -> None:
    from timm.data import ImageNetInfo

    spec = ModelSpec(id=f"open_clip:{TINY}")
    synsets = ImageNetInfo().label_names()
    names = readable_classes(spec, synsets)
    assert names[0] == "tench" and names[1] == "goldfish" and len(names) == 1000
    assert readable_classes(spec, ["T-shirt/top", "Trouser"]) == ["T-shirt/top", "Trouser"]
    with pytest.raises(KtError, match=r"folder ids \(n01440764, n01443537.*dataset\.classes_file"):
        readable_classes(spec, synsets[:10])
