"""Helpers the synthetic-scene benchmark scripts share (msf_vs_vvo.py, spot_distill.py): the held-out store pair and
mean +- std over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featcache.datasets import open_dataset
from featcache.datasets.synth import write_synthetic
from featcache.extraction import ExtractConfig, extract


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and population std of per-seed values, with the values."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "values": [float(v) for v in array]}


def prepare_stores(work: Path, train_images: int, val_images: int) -> tuple[Path, Path]:
    """Synthetic shapes (train seed 0, held-out seed 1) extracted with RANDOM-weight DINOv2 ViT-S/14 at 112 px (8 x 8)."""
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=112, image_size=64, mask_size=64, samples_per_chunk=32, batch_size=32)
    stores = []
    for name, images, seed in (("train", train_images, 0), ("val", val_images, 1)):
        data = write_synthetic(work / f"shapes-{name}", images=images, seed=seed, size=128)
        store = work / f"{name}.zarr"
        extract(open_dataset(str(data)), store, config, device="cpu", show_progress=False)
        stores.append(store)
    return stores[0], stores[1]
