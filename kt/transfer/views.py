"""What each model of a transfer sees of a batch: one augmented view for all (README "Strategies").

Images are decoded once at the student's resolution (uint8) by a :class:`~kt.data.Loader` (its workers
decode and apply sample augmentations; batch augmentations run on the device), resized for a model of
another input size, and normalised per model with its own mean/std.
"""

from __future__ import annotations

import torch

from kt.data import Views
from kt.models import Classifier
from kt.preprocess import normalize, resize_uint8
from kt.settings import TransferSettings


def view_for(model: Classifier, images: torch.Tensor | Views) -> torch.Tensor:
    """The model's own view where the loader made one (un-augmented reference views), else the
    student-resolution view, resized for a model of another input size; normalised for the model."""
    prep = model.preprocess
    if isinstance(images, Views):
        own = images.get(model.view_key)
        images = own if own is not None else images.primary
    if images.shape[-1] != prep.size:
        images = resize_uint8(images, prep.size, 1.0, prep.interpolation)
    x = normalize(images, prep)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x  # as the model (kt.extract.prepare)


def reference_models(settings: TransferSettings, models: list[Classifier]) -> list[Classifier] | None:
    """The models that see their own reference views of the transfer set: all of them on un-augmented
    passes with ``decode: reference`` (so a frozen-output cache holds what their extraction would);
    augmented passes share the student's view."""
    return models if settings.decode == "reference" and settings.augment == "none" else None
