"""Object-discovery metrics on integer label maps: ARI / FG-ARI, mBO and Hungarian mIoU.

Conventions (OCLF-style, every protocol choice is an explicit argument):

* Label maps are integer arrays of equal shape, (H, W) per image (any shape works: a video clip's
  (T, H, W) pools all frames, as video ARI does). Ground truth follows the store's masks: 0 =
  background, 1..K = instances, ``ignore_label`` (65535) = pixels dropped from every metric.
* Predicted labels are arbitrary non-negative segment ids (slot indices after the argmax).
* A metric with nothing left to score (no pixel, or no ground-truth segment) returns ``nan``;
  :func:`mean_skipping_nan` averages per-image values without them. The anchors differ on ARI here, so
  :func:`object_discovery_metrics` takes the rule (``empty_ari``), and :func:`mean_of_batch_means` gives
  VVO's average of per-batch means.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError

#: Ground-truth label of the background segment.
BACKGROUND_LABEL = 0
#: What ARI / FG-ARI score when no pixel is left to score (FG-ARI of an image without foreground):
#: ``skip`` (nan, left out of the mean), ``one`` (1.0, counted), ``one-if-any-pixel`` (1.0 when the image has
#: any non-ignored pixel, background included; nan otherwise).
EMPTY_ARI_RULES = ("skip", "one", "one-if-any-pixel")
#: ``float64``: exact pair counts. ``vvo-int64-float32``: VVO's arithmetic, pair-count products in int64 (they
#: wrap past 2**63, e.g. on pooled video clips of ~1e5 pixels) and the divisions in float32.
ARI_ARITHMETICS = ("float64", "vvo-int64-float32")


class MetricInputError(FeatcacheError, ValueError):
    """Label maps or masks given to a metric have the wrong shape, dtype or values."""


# ----------------------------------------------------------------------------- validation
def _check_label_map(labels: np.ndarray, name: str) -> np.ndarray:
    """``labels`` as an array, rejecting non-integer dtypes and negative values."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise MetricInputError(f"{name} has dtype {labels.dtype}; expected an integer label map (argmax soft masks first)")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise MetricInputError(f"{name} holds negative label {int(labels.min())}; expected labels >= 0")
    return labels


def _check_label_pair(true_labels: np.ndarray, predicted_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true_labels = _check_label_map(true_labels, "true_labels")
    predicted_labels = _check_label_map(predicted_labels, "predicted_labels")
    if true_labels.shape != predicted_labels.shape:
        raise MetricInputError(
            f"true_labels has shape {true_labels.shape} but predicted_labels has shape {predicted_labels.shape}; "
            "expected equal shapes (resize predictions to the mask size first)"
        )
    return true_labels, predicted_labels


def _check_batch(true_labels: np.ndarray, predicted_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true_labels, predicted_labels = _check_label_pair(true_labels, predicted_labels)
    if true_labels.ndim < 2:
        raise MetricInputError(f"batched label maps have shape {true_labels.shape}; expected (B, H, W)")
    return true_labels, predicted_labels


def _kept_pixels(
    true_labels: np.ndarray, predicted_labels: np.ndarray, ignore_label: int | None, drop_background: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened labels of the pixels that take part in a metric."""
    true_flat = true_labels.reshape(-1)
    predicted_flat = predicted_labels.reshape(-1)
    keep = np.ones(true_flat.shape, dtype=bool)
    if ignore_label is not None:
        keep &= true_flat != ignore_label
    if drop_background:
        keep &= true_flat != BACKGROUND_LABEL
    return true_flat[keep], predicted_flat[keep]


def _contingency(true_flat: np.ndarray, predicted_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table (T, P) of pixel counts with the true and predicted segment ids of its rows/columns."""
    true_values, true_index = np.unique(true_flat, return_inverse=True)
    predicted_values, predicted_index = np.unique(predicted_flat, return_inverse=True)
    cells = true_index.reshape(-1) * predicted_values.size + predicted_index.reshape(-1)
    table = np.bincount(cells, minlength=true_values.size * predicted_values.size)
    return table.reshape(true_values.size, predicted_values.size), true_values, predicted_values


# ----------------------------------------------------------------------------- ARI
def _pairs(counts: np.ndarray) -> np.ndarray | float:
    """n choose 2, in float64 so 256 x 256 images (4e9 pairs) do not overflow products."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts * (counts - 1.0) / 2.0


def _ari_vvo_int64_float32(table: np.ndarray) -> float:
    """ARI as VVO computes it: ordered pair counts n(n-1) in int64, whose product wraps around past 2**63
    as torch's int64 does, then float32 division and subtraction."""
    counts = table.astype(np.int64)
    true_sizes, predicted_sizes = counts.sum(axis=1), counts.sum(axis=0)
    total = true_sizes.sum()
    index = (counts * (counts - 1)).sum()
    true_index = (true_sizes * (true_sizes - 1)).sum()
    predicted_index = (predicted_sizes * (predicted_sizes - 1)).sum()
    with np.errstate(over="ignore"):
        product = np.multiply(np.array([true_index]), np.array([predicted_index]))[0]  # int64, wraps
    expected = np.float32(product) / np.float32(max(total * (total - 1), 1))
    maximum = np.float32(true_index + predicted_index) / np.float32(2)
    denominator = maximum - expected
    if denominator == 0:
        return 1.0
    return float((np.float32(index) - expected) / denominator)


def adjusted_rand_index(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    ignore_background: bool = False,
    ignore_label: int | None = IGNORE_LABEL,
    arithmetic: str = "float64",
) -> float:
    """Adjusted Rand index between two label maps of equal shape (contingency-table formula).

    Ground-truth ``ignore_label`` pixels are dropped; ``ignore_background=True`` also drops ground-truth
    background (0) pixels, which gives FG-ARI. Returns 1.0 when the index is undefined because both
    partitions are trivial (zero denominator, e.g. one segment in both), and ``nan`` when no pixel remains
    (e.g. FG-ARI of an image without foreground). ``arithmetic`` is one of :data:`ARI_ARITHMETICS`.
    """
    if arithmetic not in ARI_ARITHMETICS:
        raise MetricInputError(f"arithmetic is {arithmetic!r}; expected one of {', '.join(ARI_ARITHMETICS)}")
    true_labels, predicted_labels = _check_label_pair(true_labels, predicted_labels)
    true_flat, predicted_flat = _kept_pixels(true_labels, predicted_labels, ignore_label, ignore_background)
    if true_flat.size == 0:
        return float("nan")
    table, _, _ = _contingency(true_flat, predicted_flat)
    if arithmetic == "vvo-int64-float32":
        return _ari_vvo_int64_float32(table)
    index = float(_pairs(table).sum())
    true_pairs = float(_pairs(table.sum(axis=1)).sum())
    predicted_pairs = float(_pairs(table.sum(axis=0)).sum())
    total_pairs = float(_pairs(np.array(true_flat.size)))
    if total_pairs == 0.0:
        return 1.0
    expected = true_pairs * predicted_pairs / total_pairs
    maximum = (true_pairs + predicted_pairs) / 2.0
    denominator = maximum - expected
    if denominator == 0.0:
        return 1.0
    return (index - expected) / denominator


def ari_batch(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    ignore_background: bool = False,
    ignore_label: int | None = IGNORE_LABEL,
    arithmetic: str = "float64",
) -> np.ndarray:
    """ARI (or FG-ARI) of each image of a batch (B, H, W) -> (B,) float64, ``nan`` where nothing remains."""
    true_labels, predicted_labels = _check_batch(true_labels, predicted_labels)
    return np.array(
        [
            adjusted_rand_index(true_image, predicted_image, ignore_background, ignore_label, arithmetic)
            for true_image, predicted_image in zip(true_labels, predicted_labels)
        ],
        dtype=np.float64,
    )


# ----------------------------------------------------------------------------- overlap metrics
def _iou_matrix(
    true_labels: np.ndarray, predicted_labels: np.ndarray, count_background: bool, ignore_label: int | None
) -> np.ndarray:
    """IoU (G, P) of each scored ground-truth segment with each predicted segment.

    Ignore pixels leave both sides; background pixels stay (a slot covering background and an object is
    penalised for it) and only the background *segment* leaves the rows when ``count_background`` is False.
    """
    true_labels, predicted_labels = _check_label_pair(true_labels, predicted_labels)
    true_flat, predicted_flat = _kept_pixels(true_labels, predicted_labels, ignore_label, drop_background=False)
    if true_flat.size == 0:
        return np.zeros((0, 0), dtype=np.float64)
    counts, true_values, _ = _contingency(true_flat, predicted_flat)
    counts = counts.astype(np.float64)
    predicted_sizes = counts.sum(axis=0)  # (P,) over all kept pixels, background included
    intersection = counts if count_background else counts[true_values != BACKGROUND_LABEL]  # (G, P)
    true_sizes = intersection.sum(axis=1, keepdims=True)  # (G, 1)
    union = true_sizes + predicted_sizes[None, :] - intersection
    return intersection / union


def mean_best_overlap(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    count_background: bool,
    ignore_label: int | None = IGNORE_LABEL,
) -> float:
    """mBO: mean over ground-truth segments of the best IoU with any predicted segment (segments may be reused).

    ``count_background=True`` scores the background as a segment (VVO); False skips it (DINOSAUR, SPOT).
    ``nan`` when there is no ground-truth segment to score.
    """
    iou = _iou_matrix(true_labels, predicted_labels, count_background, ignore_label)
    if iou.shape[0] == 0:
        return float("nan")
    return float(iou.max(axis=1).mean())


def mean_iou_hungarian(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    count_background: bool,
    ignore_label: int | None = IGNORE_LABEL,
) -> float:
    """mIoU: one-to-one matching maximising total IoU; unmatched ground-truth segments score 0.

    Averaged over ground-truth segments; ``count_background`` as in :func:`mean_best_overlap`; ``nan`` when
    there is no ground-truth segment.
    """
    iou = _iou_matrix(true_labels, predicted_labels, count_background, ignore_label)
    if iou.shape[0] == 0:
        return float("nan")
    rows, columns = linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, columns].sum() / iou.shape[0])


def _apply_empty_ari_rule(scores: np.ndarray, true_labels: np.ndarray, ignore_label: int | None, rule: str) -> np.ndarray:
    """Replace the ``nan`` of images with nothing left to score by 1.0 where ``rule`` counts them."""
    undefined = np.isnan(scores)
    if rule == "one":
        scores[undefined] = 1.0
    elif rule == "one-if-any-pixel":
        flat = true_labels.reshape(len(true_labels), -1)
        has_pixels = (flat != ignore_label).any(axis=1) if ignore_label is not None else np.full(len(flat), flat.shape[1] > 0)
        scores[undefined & has_pixels] = 1.0
    return scores


def object_discovery_metrics(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    count_background: bool,
    ignore_label: int | None = IGNORE_LABEL,
    empty_ari: str = "skip",
    ari_arithmetic: str = "float64",
) -> dict[str, np.ndarray]:
    """ARI, FG-ARI, mBO and mIoU of every item of a batch: each a (B,) float64 array (nan = skipped).

    An item is an image (B, H, W) or a whole clip (B, T, H, W), whose frames are pooled into one score.
    ``empty_ari`` (one of :data:`EMPTY_ARI_RULES`) scores ARI / FG-ARI where no pixel is left; mBO / mIoU
    without a ground-truth segment are always ``nan`` (every anchor skips them).
    """
    if empty_ari not in EMPTY_ARI_RULES:
        raise MetricInputError(f"empty_ari is {empty_ari!r}; expected one of {', '.join(EMPTY_ARI_RULES)}")
    true_labels, predicted_labels = _check_batch(true_labels, predicted_labels)
    pairs = list(zip(true_labels, predicted_labels))
    ari = ari_batch(true_labels, predicted_labels, False, ignore_label, ari_arithmetic)
    fg_ari = ari_batch(true_labels, predicted_labels, True, ignore_label, ari_arithmetic)
    return {
        "ari": _apply_empty_ari_rule(ari, true_labels, ignore_label, empty_ari),
        "fg_ari": _apply_empty_ari_rule(fg_ari, true_labels, ignore_label, empty_ari),
        "mbo": np.array([mean_best_overlap(t, p, count_background, ignore_label) for t, p in pairs], dtype=np.float64),
        "miou": np.array([mean_iou_hungarian(t, p, count_background, ignore_label) for t, p in pairs], dtype=np.float64),
    }


def mean_skipping_nan(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the non-nan values (images a metric could not score drop out); ``nan`` if none is left."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = array[~np.isnan(array)]
    return float(finite.mean()) if finite.size else float("nan")


def mean_of_batch_means(values: Sequence[float] | np.ndarray, batch_size: int) -> float:
    """Mean over consecutive batches of ``batch_size`` values (the last may be smaller) of each batch's
    :func:`mean_skipping_nan`: every batch weighs the same, as when a loop averages per-batch means. A batch
    with nothing to score is ``nan`` and so is the result."""
    if batch_size < 1:
        raise MetricInputError(f"batch_size is {batch_size}; expected >= 1")
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        return float("nan")
    return float(np.mean([mean_skipping_nan(array[start : start + batch_size]) for start in range(0, array.size, batch_size)]))


# ----------------------------------------------------------------------------- masks <-> labels
def one_hot_masks_from_labels(
    labels: np.ndarray, num_segments: int | None = None, ignore_label: int | None = IGNORE_LABEL
) -> np.ndarray:
    """Label map (H, W) -> boolean masks (K, H, W), mask k = pixels labelled k.

    K = ``num_segments`` or max label + 1; ``ignore_label`` pixels belong to no mask.
    """
    labels = _check_label_map(labels, "labels")
    valid = labels != ignore_label if ignore_label is not None else np.ones(labels.shape, dtype=bool)
    largest = int(labels[valid].max()) if valid.any() else -1
    if num_segments is None:
        num_segments = largest + 1
    elif largest >= num_segments:
        raise MetricInputError(f"labels hold segment {largest} but num_segments is {num_segments}; expected labels < num_segments")
    segment_ids = np.arange(num_segments).reshape((num_segments,) + (1,) * labels.ndim)  # (K, 1, ..., 1)
    return (labels[None] == segment_ids) & valid[None]


def labels_from_masks(
    masks: np.ndarray, require_one_hot: bool = True, ignore_label: int = IGNORE_LABEL
) -> np.ndarray:
    """Binary masks (K, H, W) -> label map (H, W) int64 holding each pixel's mask index.

    Masks must be bool or hold only 0/1. With ``require_one_hot`` every pixel must be in exactly one mask;
    otherwise pixels in no mask or in several (overlapping instances) get ``ignore_label``.
    """
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise MetricInputError(f"masks have shape {masks.shape}; expected (K, H, W) with one binary mask per segment")
    if masks.dtype != np.bool_:
        if not (np.issubdtype(masks.dtype, np.number)) or not np.isin(masks, (0, 1)).all():
            raise MetricInputError(
                f"masks of dtype {masks.dtype} hold values other than 0 and 1; expected binary masks "
                "(take the argmax of soft masks with labels_from_mask_scores)"
            )
        masks = masks.astype(bool)
    coverage = masks.sum(axis=0)
    if require_one_hot and masks.shape[0] and not (coverage == 1).all():
        uncovered = int((coverage == 0).sum())
        overlapped = int((coverage > 1).sum())
        raise MetricInputError(
            f"masks are not one-hot: {uncovered} pixels in no mask and {overlapped} in several; expected exactly one mask per pixel"
        )
    labels = masks.argmax(axis=0).astype(np.int64) if masks.shape[0] else np.full(masks.shape[1:], ignore_label, np.int64)
    labels[coverage != 1] = ignore_label
    return labels


def labels_from_mask_scores(scores: np.ndarray) -> np.ndarray:
    """Soft masks / logits (K, H, W) or (B, K, H, W) -> argmax label map over the K axis (int64)."""
    scores = np.asarray(scores)
    if scores.ndim not in (3, 4) or not np.issubdtype(scores.dtype, np.number):
        raise MetricInputError(
            f"mask scores have shape {scores.shape} and dtype {scores.dtype}; expected numeric (K, H, W) or (B, K, H, W)"
        )
    if np.issubdtype(scores.dtype, np.floating) and not np.isfinite(scores).all():
        raise MetricInputError("mask scores hold nan or inf; expected finite values")
    return scores.argmax(axis=scores.ndim - 3).astype(np.int64)
