"""Input checks shared by the encoders."""

from __future__ import annotations

import torch

from featcache.errors import FeatcacheError


def check_images(images: torch.Tensor, resolution: int, name: str) -> None:
    """Fail with one line when images are not (B, 3, resolution, resolution): the grid depends on it."""
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (resolution, resolution):
        raise FeatcacheError(
            f"encoder {name} got images of shape {tuple(images.shape)}; expected (B, 3, {resolution}, {resolution})"
        )
