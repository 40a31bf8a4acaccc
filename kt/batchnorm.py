"""Batch-norm statistics re-estimated on the final weights: for the zoo after its short training, and
for a soup whose averaged running statistics are only an approximation (``soup_batchnorm: recalibrate``)."""

from __future__ import annotations

import torch

from kt.data import Loader, Split
from kt.preprocess import normalize


def recalibrate_batchnorm(model: torch.nn.Module, data: Split, batch_size: int, gen: torch.Generator,
                          batches: int = 50) -> None:
    """Re-estimate batch-norm statistics on the final weights (cumulative average, no augmentation).

    Short schedules move the weights faster than the running averages follow (torchvision's
    MobileNetV3 uses momentum 0.01), which can ruin eval-mode accuracy; this fixes it for free.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    order = torch.randperm(len(data), generator=gen).numpy()[: batches * batch_size]
    device = next(model.parameters()).device  # the batches go where the model is (a GPU for a soup)
    model.train()
    with torch.no_grad():
        for images, _labels, _pos in Loader(data, model.preprocess, batch_size, device=device).batches(order):
            model(normalize(images.to(device, non_blocking=True), model.preprocess))
    model.eval()
