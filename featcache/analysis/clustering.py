"""Per-image clustering of patch features: PCA projection and the faiss kMeans baseline that evaluation and the separability analysis score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import faiss
import numpy as np

from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError
from featcache.metrics.segmentation import BACKGROUND_LABEL, ari_batch, mean_skipping_nan


# ----------------------------------------------------------------------------- PCA
@dataclass(frozen=True)
class PCAProjection:
    """A linear projection fitted once per dataset so that every image's distances live in the same space.

    ``components`` is None when no reduction is asked for (or the features are already that small).
    """

    mean: np.ndarray | None
    components: np.ndarray | None  # (C, dims)

    @property
    def dims(self) -> int | None:
        return None if self.components is None else int(self.components.shape[1])

    def project(self, features: np.ndarray) -> np.ndarray:
        """(..., C) -> (..., dims) float64 (or the features as float64 without a projection)."""
        features = np.asarray(features, dtype=np.float64)
        if self.components is None:
            return features
        return (features - self.mean) @ self.components


def fit_pca(features: np.ndarray, dims: int | None = 32, max_patches: int = 200_000, seed: int = 0) -> PCAProjection:
    """Fit PCA on at most ``max_patches`` random patches of ``features`` (..., C), via the C x C covariance.

    ``dims`` None or 0, or >= C, gives the identity projection.
    """
    features = np.asarray(features)
    channels = features.shape[-1]
    if not dims or dims >= channels:
        return PCAProjection(mean=None, components=None)
    if dims < 0:
        raise FeatcacheError(f"pca_dims is {dims}; expected a positive number of dimensions or 0 for none")
    patches = features.reshape(-1, channels)  # (N*h*w, C)
    if patches.shape[0] < 2:
        raise FeatcacheError(f"PCA needs at least 2 patches, got {patches.shape[0]}")
    if patches.shape[0] > max_patches:
        chosen = np.sort(np.random.default_rng(seed).choice(patches.shape[0], size=max_patches, replace=False))
        patches = patches[chosen]
    patches = patches.astype(np.float64)
    mean = patches.mean(axis=0)
    centred = patches - mean
    covariance = centred.T @ centred / (patches.shape[0] - 1)  # (C, C)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1][:dims]
    return PCAProjection(mean=mean, components=eigenvectors[:, order])


# ----------------------------------------------------------------------------- labels per patch
def cell_index(size: int, cells: int) -> np.ndarray:
    """Patch row (or column) of each of ``size`` pixels when ``size`` pixels are split into ``cells`` patches."""
    return (np.arange(size) * cells) // size


# ----------------------------------------------------------------------------- distances
def check_features(features: np.ndarray, labels_shape: tuple[int, ...] | None = None) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 4 or not np.issubdtype(features.dtype, np.number):
        raise FeatcacheError(f"features have shape {features.shape} and dtype {features.dtype}; expected numeric (N, h, w, C)")
    if labels_shape is not None and tuple(labels_shape) != features.shape[:3]:
        raise FeatcacheError(
            f"labels have shape {tuple(labels_shape)} but features have grid {features.shape[:3]}; expected them equal"
        )
    return features


# ----------------------------------------------------------------------------- kMeans baseline
def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) by nearest neighbour, with the same pixel-to-patch map as :func:`patch_labels`."""
    rows = cell_index(size[0], labels.shape[1])
    columns = cell_index(size[1], labels.shape[2])
    return labels[:, rows[:, None], columns[None, :]]


def objects_per_image(masks: np.ndarray, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Number of ground-truth objects (labels other than background and ignore) in each mask (N,)."""
    counts = []
    for mask in np.asarray(masks):
        values = np.unique(mask)
        counts.append(int(((values != BACKGROUND_LABEL) & (values != ignore_label)).sum()))
    return np.array(counts, dtype=np.int64)


#: k-means++ seeding when this faiss build offers it, else faiss's random seeding.
_KMEANS_INIT: dict[str, Any] = (
    {"init_method": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS} if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS") else {}
)


def kmeans_baseline(
    features: np.ndarray,
    num_clusters: int | Sequence[int] | np.ndarray,
    output_size: tuple[int, int] | None = None,
    seed: int = 0,
    niter: int = 20,
    projection: PCAProjection | None = None,
    nredo: int = 10,
) -> np.ndarray:
    """Per-image faiss kMeans over patch features (N, h, w, C) -> cluster labels (N, h, w) or (N, *output_size).

    ``num_clusters``: one k for all images or one per image, clipped to [2, h*w] (at least two segments,
    at most one per patch). Labels are upsampled by nearest neighbour to ``output_size`` when given.
    Centroids start from faiss's k-means++ seeding where this faiss has it (1.15+, else random points), and
    the lowest-objective of ``nredo`` runs is kept: from a single seeding, a large background often takes
    two centroids while two small objects share one, a local minimum Lloyd iterations cannot leave
    (measured on constructed scenes: right in 40% of images with one run, 95% with ten).
    """
    features = check_features(features)
    count, height, width = features.shape[:3]
    clusters = np.broadcast_to(np.asarray(num_clusters, dtype=np.int64), (count,))
    clusters = np.clip(clusters, 2, height * width) if height * width >= 2 else np.ones(count, np.int64)
    result = np.zeros((count, height * width), dtype=np.int64)
    for image_index in range(count):
        points = features[image_index].reshape(height * width, -1)  # (h*w, C)
        if projection is not None:
            points = projection.project(points)
        points = np.ascontiguousarray(points, dtype=np.float32)
        k = int(clusters[image_index])
        if k < 2:
            continue
        # min_points_per_centroid=1: 256 patches for ~8 clusters is the expected regime, not a mistake to warn about.
        kmeans = faiss.Kmeans(
            points.shape[1], k, niter=niter, nredo=nredo, seed=seed, min_points_per_centroid=1, **_KMEANS_INIT
        )
        kmeans.train(points)
        _, assignment = kmeans.index.search(points, 1)  # (h*w, 1)
        result[image_index] = assignment[:, 0]
    labels = result.reshape(count, height, width)
    return labels if output_size is None else upsample_labels(labels, output_size)


def kmeans_segmentation(
    features: np.ndarray,
    masks: np.ndarray,
    seed: int = 0,
    niter: int = 20,
    projection: PCAProjection | None = None,
    ignore_label: int = IGNORE_LABEL,
    nredo: int = 10,
) -> dict[str, Any]:
    """kMeans with k = objects + 1 per image, scored by ARI and FG-ARI against ``masks`` (N, M, M).

    ``seed``, ``niter``, ``projection`` and ``nredo`` as in :func:`kmeans_baseline`. Returns mean ``ari`` /
    ``fg_ari`` (images without foreground skipped for FG-ARI), the per-image arrays and the k used per image.
    """
    features = check_features(features)
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] != features.shape[0]:
        count = features.shape[0]
        raise FeatcacheError(f"masks have shape {masks.shape}; expected ({count}, M, M) for {count} feature maps")
    clusters = objects_per_image(masks, ignore_label) + 1
    predicted = kmeans_baseline(features, clusters, masks.shape[1:], seed, niter, projection, nredo)
    ari = ari_batch(masks, predicted, ignore_background=False, ignore_label=ignore_label)
    fg_ari = ari_batch(masks, predicted, ignore_background=True, ignore_label=ignore_label)
    return {
        "ari": mean_skipping_nan(ari),
        "fg_ari": mean_skipping_nan(fg_ari),
        "images": int(features.shape[0]),
        "ari_per_image": ari,
        "fg_ari_per_image": fg_ari,
        "num_clusters": np.clip(clusters, 2, features.shape[1] * features.shape[2]),
    }
