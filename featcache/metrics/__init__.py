"""Object-discovery metrics (ARI, FG-ARI, mBO, mIoU) with explicit protocol flags."""

from featcache.metrics.segmentation import (
    ARI_ARITHMETICS,
    BACKGROUND_LABEL,
    EMPTY_ARI_RULES,
    MetricInputError,
    adjusted_rand_index,
    ari_batch,
    labels_from_mask_scores,
    labels_from_masks,
    mean_best_overlap,
    mean_iou_hungarian,
    mean_of_batch_means,
    mean_skipping_nan,
    object_discovery_metrics,
    one_hot_masks_from_labels,
)

__all__ = [
    "ARI_ARITHMETICS",
    "BACKGROUND_LABEL",
    "EMPTY_ARI_RULES",
    "MetricInputError",
    "adjusted_rand_index",
    "ari_batch",
    "labels_from_mask_scores",
    "labels_from_masks",
    "mean_best_overlap",
    "mean_iou_hungarian",
    "mean_of_batch_means",
    "mean_skipping_nan",
    "object_discovery_metrics",
    "one_hot_masks_from_labels",
]
