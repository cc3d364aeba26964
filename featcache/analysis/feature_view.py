"""PCA views of patch features, the picture DINOv2 users look at first: the first three principal components of the
patches of a few images, fitted over those images together, as RGB.

With ``foreground_threshold`` the DINOv2 foreground trick is applied: the first component (min-max scaled to [0, 1]
over the shown patches) is thresholded to separate foreground from background, and the three components shown are
those of a second PCA fitted on the foreground patches only (background drawn black). The first component's sign is
arbitrary, so the side holding fewer patches is taken as the foreground (objects cover less than half an image in
the datasets featcache serves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featcache.analysis.clustering import fit_pca
from featcache.errors import FeatcacheError


@dataclass(frozen=True)
class FeatureView:
    rgb: np.ndarray  # (N, h, w, 3) float in [0, 1]
    foreground: np.ndarray  # (N, h, w) bool; all True without the foreground trick
    components: np.ndarray  # (C, 3) the principal directions the RGB channels project on


def _scaled(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Min-max scale each column of ``values`` (P, k) over the rows in ``mask`` to [0, 1]."""
    shown = values[mask]
    low, high = shown.min(axis=0), shown.max(axis=0)
    return np.clip((values - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)


def pca_rgb(features: np.ndarray, foreground_threshold: float | None = None) -> FeatureView:
    """RGB of the first three principal components of ``features`` (N, h, w, C), fitted over all N images."""
    if features.ndim != 4 or features.shape[-1] <= 3:
        raise FeatcacheError(f"PCA view needs features (N, h, w, C) with C > 3; got shape {tuple(features.shape)}")
    if foreground_threshold is not None and not 0.0 < foreground_threshold < 1.0:
        raise FeatcacheError(f"foreground threshold is {foreground_threshold}; expected a value in (0, 1)")
    n, height, width, channels = features.shape
    patches = features.reshape(-1, channels).astype(np.float64)  # (P, C)
    everything = np.ones(len(patches), dtype=bool)
    pca = fit_pca(patches, dims=3, max_patches=len(patches))
    foreground = everything
    if foreground_threshold is not None:
        first = _scaled(pca.project(patches)[:, :1], everything)[:, 0]  # (P,)
        above = first > foreground_threshold
        foreground = above if above.sum() <= len(above) / 2 else first < 1.0 - foreground_threshold
        if foreground.sum() < 3:
            raise FeatcacheError(f"foreground threshold {foreground_threshold} leaves {int(foreground.sum())} foreground patches; expected at least 3")
        pca = fit_pca(patches[foreground], dims=3, max_patches=int(foreground.sum()))
    rgb = _scaled(pca.project(patches), foreground)
    rgb[~foreground] = 0.0
    assert pca.components is not None
    return FeatureView(rgb.reshape(n, height, width, 3), foreground.reshape(n, height, width), pca.components)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 RGB."""
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


__all__ = ["FeatureView", "pca_rgb", "to_uint8"]
