"""Tracking per-frame clusters over a clip: each frame's cluster ids are relabelled to the previous frame's by
Hungarian matching, so one id names one segment over the whole clip and clip-pooled metrics (``b t h w ->
b (t h w)``) can score a per-frame method. Used for the tracked kMeans baseline of video stores.

Two matching costs:

- ``centroid`` (default): cosine distance between the clusters' mean features. A segment's features change
  little from frame to frame whatever distance it moved, so matching holds under fast motion, on coarse patch
  grids (a 2-patch object moving by one patch keeps IoU 1/3) and for small objects; it is the space kMeans
  clustered in.
- ``iou``: 1 - mask IoU with the previous frame's segments. Needs no features, but only works while segments
  overlap from one frame to the next (slow motion relative to their size).

Clusters left unmatched (more clusters than in the previous frame, or a match costlier than ``max_cost``) get
fresh ids never used earlier in the clip.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from featcache.analysis.clustering import kmeans_baseline, upsample_labels
from featcache.errors import FeatcacheError

TRACKING_COSTS = ("centroid", "iou")


def match_clusters(cost: np.ndarray, max_cost: float | None = None) -> np.ndarray:
    """Minimum-total-cost one-to-one matching of current clusters (rows) to previous ones (columns).

    ``cost`` (P, Q) -> (P,) int64: the column each row is matched to, -1 where unmatched (rows beyond
    min(P, Q), or a matched pair whose cost exceeds ``max_cost``).
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or not np.isfinite(cost).all():
        raise FeatcacheError(f"matching cost has shape {cost.shape} or non-finite values; expected a finite (current, previous) matrix")
    matched = np.full(cost.shape[0], -1, dtype=np.int64)
    if cost.size == 0:
        return matched
    rows, columns = linear_sum_assignment(cost)
    keep = np.ones(len(rows), dtype=bool) if max_cost is None else cost[rows, columns] <= max_cost
    matched[rows[keep]] = columns[keep]
    return matched


def cluster_centroids(labels: np.ndarray, features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean feature (K, C) float64 of the pixels of ``labels`` (h, w) equal to each of ``values`` (K,); features (h, w, C)."""
    flat_labels = labels.reshape(-1)
    flat_features = features.reshape(flat_labels.size, -1).astype(np.float64)  # (h*w, C)
    return np.stack([flat_features[flat_labels == value].mean(axis=0) for value in values])


def cosine_distance(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """1 - cosine similarity (P, Q) of rows of ``current`` (P, C) and ``previous`` (Q, C); zero vectors are at distance 1."""
    def normalise(vectors: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    return 1.0 - normalise(current) @ normalise(previous).T


def iou_distance(current: np.ndarray, current_values: np.ndarray, previous: np.ndarray, previous_values: np.ndarray) -> np.ndarray:
    """1 - IoU (P, Q) of the segments ``current == current_values[p]`` and ``previous == previous_values[q]`` (label maps of one shape)."""
    current_masks = current.reshape(1, -1) == current_values.reshape(-1, 1)  # (P, h*w)
    previous_masks = previous.reshape(1, -1) == previous_values.reshape(-1, 1)  # (Q, h*w)
    intersection = current_masks.astype(np.float64) @ previous_masks.T.astype(np.float64)  # (P, Q)
    union = current_masks.sum(1)[:, None] + previous_masks.sum(1)[None, :] - intersection
    return 1.0 - intersection / np.maximum(union, 1.0)


def track_clusters(
    labels: np.ndarray, features: np.ndarray | None = None, cost: str = "centroid", max_cost: float | None = None
) -> np.ndarray:
    """Relabel per-frame cluster ids (T, h, w) so that each frame's clusters carry the ids of the previous frame's
    clusters they match (Hungarian, minimum total ``cost``); unmatched clusters get fresh ids.

    ``features`` (T, h, w, C) on the same grid as ``labels`` are needed for ``cost="centroid"``. The first frame
    keeps its ids. Returns int64 (T, h, w); within a frame the partition is unchanged, only ids move.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise FeatcacheError(f"cluster labels have shape {labels.shape} and dtype {labels.dtype}; expected integer (T, h, w)")
    if cost not in TRACKING_COSTS:
        raise FeatcacheError(f"tracking cost is {cost!r}; expected one of {', '.join(TRACKING_COSTS)}")
    if cost == "centroid":
        if features is None or np.asarray(features).shape[:3] != labels.shape:
            shape = None if features is None else np.asarray(features).shape
            raise FeatcacheError(f"centroid tracking needs features (T, h, w, C) on the labels' grid {labels.shape}; got {shape}")
        features = np.asarray(features)
    tracked = np.empty(labels.shape, dtype=np.int64)
    if len(labels) == 0:
        return tracked
    tracked[0] = labels[0]
    next_id = int(labels[0].max()) + 1
    for frame in range(1, len(labels)):
        current_values = np.unique(labels[frame])
        previous_ids = np.unique(tracked[frame - 1])
        if cost == "centroid":
            assert features is not None
            distance = cosine_distance(
                cluster_centroids(labels[frame], features[frame], current_values),
                cluster_centroids(tracked[frame - 1], features[frame - 1], previous_ids),
            )
        else:
            distance = iou_distance(labels[frame], current_values, tracked[frame - 1], previous_ids)
        matched = match_clusters(distance, max_cost)
        new_ids = np.empty(len(current_values), dtype=np.int64)
        for row, column in enumerate(matched):
            if column >= 0:
                new_ids[row] = previous_ids[column]
            else:
                new_ids[row] = next_id
                next_id += 1
        tracked[frame] = new_ids[np.searchsorted(current_values, labels[frame])]
    return tracked


def tracked_kmeans(
    features: np.ndarray,
    num_clusters: int | np.ndarray,
    output_size: tuple[int, int] | None = None,
    cost: str = "centroid",
    max_cost: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame kMeans of one clip's features (T, h, w, C) (:func:`kmeans_baseline`, k per frame or one k), then
    :func:`track_clusters` on the patch grid -> (per-frame labels, tracked labels), each (T, h, w) or (T, *output_size)."""
    labels = kmeans_baseline(features, num_clusters, seed=seed)  # (T, h, w)
    tracked = track_clusters(labels, features, cost, max_cost)
    if output_size is None:
        return labels, tracked
    return upsample_labels(labels, output_size), upsample_labels(tracked, output_size)


__all__ = ["TRACKING_COSTS", "cluster_centroids", "cosine_distance", "iou_distance", "match_clusters", "track_clusters", "tracked_kmeans"]
