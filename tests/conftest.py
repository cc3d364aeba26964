"""Shared tiny fixtures: a synthetic dataset and the extraction config every store test uses.

Sizes are chosen so extraction of the whole fixture takes about a second on 2 CPU cores:
12 images of 64 px, DINOv2 ViT-S/14 with random weights at 28 px (2 x 2 patches), 4 samples per unit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from featcache.datasets import write_synthetic
from featcache.extraction import ExtractConfig


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic images with masks, in the folder layout."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "shapes", images=12, seed=0, size=64)


@pytest.fixture()
def tiny_config() -> ExtractConfig:
    return ExtractConfig(
        vfm="dino2-s14",
        weights="random",
        resolution=28,
        image_size=32,
        mask_size=48,
        samples_per_chunk=4,
        batch_size=8,
    )
