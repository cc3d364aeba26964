"""Object-discovery metrics: ARI / FG-ARI against scikit-learn, mBO / mIoU on hand-computed cases, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError
from featcache.metrics import (
    MetricInputError,
    adjusted_rand_index,
    ari_batch,
    labels_from_mask_scores,
    labels_from_masks,
    mean_best_overlap,
    mean_iou_hungarian,
    mean_skipping_nan,
    object_discovery_metrics,
    one_hot_masks_from_labels,
)


def _random_maps(seed: int, size: int = 24, true_segments: int = 5, predicted_segments: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth map with blocky segments and a noisy prediction correlated with it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, true_segments, size=(size // 4, size // 4))
    true_labels = np.kron(coarse, np.ones((4, 4), dtype=np.int64)).astype(np.uint16)
    predicted = true_labels.astype(np.int64) % predicted_segments
    noise = rng.random(true_labels.shape) < 0.3
    predicted[noise] = rng.integers(0, predicted_segments, size=int(noise.sum()))
    return true_labels, predicted


# ----------------------------------------------------------------------------- ARI
@pytest.mark.parametrize("seed", range(6))
def test_ari_matches_sklearn(seed: int) -> None:
    true_labels, predicted = _random_maps(seed)
    expected = adjusted_rand_score(true_labels.ravel(), predicted.ravel())
    assert adjusted_rand_index(true_labels, predicted) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_fg_ari_matches_sklearn_without_background(seed: int) -> None:
    true_labels, predicted = _random_maps(seed)
    foreground = true_labels.ravel() != 0
    expected = adjusted_rand_score(true_labels.ravel()[foreground], predicted.ravel()[foreground])
    assert adjusted_rand_index(true_labels, predicted, ignore_background=True) == pytest.approx(expected, abs=1e-12)


def test_ari_on_uniform_random_labels_matches_sklearn() -> None:
    rng = np.random.default_rng(42)
    true_labels = rng.integers(0, 4, size=(32, 32))
    predicted = rng.integers(0, 6, size=(32, 32))
    expected = adjusted_rand_score(true_labels.ravel(), predicted.ravel())
    assert adjusted_rand_index(true_labels, predicted) == pytest.approx(expected, abs=1e-12)
    assert abs(expected) < 0.05  # independent labelings score about 0


def test_ari_is_invariant_to_relabelling() -> None:
    true_labels, predicted = _random_maps(3)
    permutation = np.random.default_rng(0).permutation(50)
    renamed_prediction = permutation[predicted]
    reference = adjusted_rand_index(true_labels, predicted)
    assert adjusted_rand_index(true_labels, renamed_prediction) == pytest.approx(reference, abs=1e-12)
    renamed_truth = np.array([0, 9, 4, 7, 2], dtype=np.uint16)[true_labels]
    assert adjusted_rand_index(renamed_truth, predicted) == pytest.approx(reference, abs=1e-12)
    assert mean_best_overlap(true_labels, renamed_prediction, True) == pytest.approx(
        mean_best_overlap(true_labels, predicted, True)
    )
    assert mean_iou_hungarian(true_labels, renamed_prediction, True) == pytest.approx(
        mean_iou_hungarian(true_labels, predicted, True)
    )


def test_ignore_pixels_drop_out_of_ari() -> None:
    true_labels, predicted = _random_maps(1)
    true_labels = true_labels.copy()
    ignored = np.zeros(true_labels.shape, dtype=bool)
    ignored[:, :6] = True
    true_labels[ignored] = IGNORE_LABEL
    kept = ~ignored
    expected = adjusted_rand_score(true_labels[kept], predicted[kept])
    assert adjusted_rand_index(true_labels, predicted) == pytest.approx(expected, abs=1e-12)
    scrambled = predicted.copy()
    scrambled[ignored] = np.random.default_rng(5).integers(0, 7, size=int(ignored.sum()))
    assert adjusted_rand_index(true_labels, scrambled) == pytest.approx(expected, abs=1e-12)
    assert mean_best_overlap(true_labels, scrambled, True) == pytest.approx(mean_best_overlap(true_labels, predicted, True))


def test_ari_edge_cases() -> None:
    one_segment = np.zeros((8, 8), dtype=np.uint16)
    assert adjusted_rand_index(one_segment, np.full((8, 8), 3)) == 1.0
    assert adjusted_rand_index(one_segment, one_segment) == 1.0
    # Every pixel its own segment in both: zero denominator -> 1.0, as scikit-learn.
    singletons = np.arange(16).reshape(4, 4)
    assert adjusted_rand_index(singletons, singletons[::-1]) == 1.0
    # No foreground at all: FG-ARI has nothing to score.
    assert math.isnan(adjusted_rand_index(one_segment, np.arange(64).reshape(8, 8), ignore_background=True))
    assert math.isnan(adjusted_rand_index(np.full((4, 4), IGNORE_LABEL, np.uint16), np.zeros((4, 4), np.int64)))
    # Flattened inputs work too.
    true_labels, predicted = _random_maps(2)
    assert adjusted_rand_index(true_labels.ravel(), predicted.ravel()) == pytest.approx(adjusted_rand_index(true_labels, predicted))


def test_ari_batch_and_nan_skipping_mean() -> None:
    maps = [_random_maps(seed) for seed in range(3)]
    true_batch = np.stack([t for t, _ in maps] + [np.zeros((24, 24), np.uint16)])
    predicted_batch = np.stack([p for _, p in maps] + [np.zeros((24, 24), np.int64)])
    scores = ari_batch(true_batch, predicted_batch, ignore_background=True)
    assert scores.shape == (4,)
    for index, (true_labels, predicted) in enumerate(maps):
        assert scores[index] == pytest.approx(adjusted_rand_index(true_labels, predicted, ignore_background=True))
    assert math.isnan(scores[3])
    assert mean_skipping_nan(scores) == pytest.approx(scores[:3].mean())
    assert math.isnan(mean_skipping_nan([float("nan")]))
    all_metrics = object_discovery_metrics(true_batch, predicted_batch, count_background=False)
    assert set(all_metrics) == {"ari", "fg_ari", "mbo", "miou"}
    np.testing.assert_allclose(all_metrics["fg_ari"], scores)
    assert math.isnan(all_metrics["mbo"][3]) and math.isnan(all_metrics["miou"][3])


# ----------------------------------------------------------------------------- mBO / mIoU
def _two_objects_and_background() -> np.ndarray:
    """4 x 4: background in columns 0-1 (8 px), object 1 in column 2, object 2 in column 3 (4 px each)."""
    return np.array([[0, 0, 1, 2]] * 4, dtype=np.uint16)


def test_perfect_prediction_scores_one() -> None:
    true_labels = _two_objects_and_background()
    predicted = np.array([5, 3, 8])[true_labels]  # same partition, different ids
    for count_background in (True, False):
        assert mean_best_overlap(true_labels, predicted, count_background) == 1.0
        assert mean_iou_hungarian(true_labels, predicted, count_background) == 1.0
    assert adjusted_rand_index(true_labels, predicted) == 1.0


def test_merged_objects_separate_mbo_from_miou() -> None:
    true_labels = _two_objects_and_background()
    predicted = np.array([[0, 0, 1, 1]] * 4)  # background right, both objects merged into one slot
    # Each object's best overlap is the merged slot: 4 / 8 = 0.5, and mBO may reuse it.
    assert mean_best_overlap(true_labels, predicted, count_background=False) == pytest.approx(0.5)
    # One-to-one: one object gets the merged slot (0.5), the other only the background slot (IoU 0).
    assert mean_iou_hungarian(true_labels, predicted, count_background=False) == pytest.approx(0.25)
    # Counting the background segment (VVO) adds a perfect match for it.
    assert mean_best_overlap(true_labels, predicted, count_background=True) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert mean_iou_hungarian(true_labels, predicted, count_background=True) == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_background_pixels_stay_in_predicted_segments_when_background_is_not_scored() -> None:
    true_labels = np.array([[0, 0, 1, 1]] * 2, dtype=np.uint16)
    predicted = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])  # the object's slot also covers 2 background pixels
    assert mean_best_overlap(true_labels, predicted, count_background=False) == pytest.approx(4 / 6)
    assert mean_iou_hungarian(true_labels, predicted, count_background=False) == pytest.approx(4 / 6)
    # Background scored: its best slot is slot 0 (2 px) or slot 1 (2 of 8 px): IoU 2/4 = 0.5.
    assert mean_best_overlap(true_labels, predicted, count_background=True) == pytest.approx((4 / 6 + 0.5) / 2)


def test_overlap_metrics_without_ground_truth_segments_are_nan() -> None:
    background_only = np.zeros((4, 4), dtype=np.uint16)
    predicted = np.zeros((4, 4), dtype=np.int64)
    assert math.isnan(mean_best_overlap(background_only, predicted, count_background=False))
    assert math.isnan(mean_iou_hungarian(background_only, predicted, count_background=False))
    assert mean_best_overlap(background_only, predicted, count_background=True) == 1.0


# ----------------------------------------------------------------------------- validation and masks
def test_invalid_inputs_give_one_line_errors() -> None:
    labels = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(MetricInputError, match="shape"):
        adjusted_rand_index(labels, np.zeros((4, 5), dtype=np.int64))
    with pytest.raises(MetricInputError, match="integer"):
        mean_best_overlap(labels, np.zeros((4, 4), dtype=np.float32), True)
    with pytest.raises(FeatcacheError, match="negative"):
        mean_iou_hungarian(labels, -np.ones((4, 4), dtype=np.int64), True)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        ari_batch(np.zeros(4, np.int64), np.zeros(4, np.int64))
    with pytest.raises(MetricInputError) as error:
        adjusted_rand_index(labels, labels.astype(bool))
    assert "\n" not in str(error.value)


def test_masks_and_labels_round_trip_and_validation() -> None:
    labels = np.array([[0, 1, 2], [2, 1, IGNORE_LABEL]], dtype=np.uint16)
    masks = one_hot_masks_from_labels(labels, num_segments=4)
    assert masks.shape == (4, 2, 3) and masks.dtype == bool
    assert not masks[:, 1, 2].any()  # ignore pixel is in no mask
    assert not masks[3].any()
    recovered = labels_from_masks(masks, require_one_hot=False)
    np.testing.assert_array_equal(recovered, labels.astype(np.int64))
    with pytest.raises(MetricInputError, match="one-hot"):
        labels_from_masks(masks)
    complete = one_hot_masks_from_labels(np.array([[0, 1], [1, 2]]))
    np.testing.assert_array_equal(labels_from_masks(complete.astype(np.uint8)), [[0, 1], [1, 2]])
    with pytest.raises(MetricInputError, match="0 and 1"):
        labels_from_masks(complete.astype(np.float32) * 0.5)
    overlapping = complete.copy()
    overlapping[0, 0, 1] = True
    assert labels_from_masks(overlapping, require_one_hot=False)[0, 1] == IGNORE_LABEL
    with pytest.raises(MetricInputError, match="num_segments"):
        one_hot_masks_from_labels(np.array([[0, 5]]), num_segments=3)
    scores = np.random.default_rng(0).random((2, 3, 4, 4))
    np.testing.assert_array_equal(labels_from_mask_scores(scores), scores.argmax(axis=1))
    with pytest.raises(MetricInputError, match="finite"):
        labels_from_mask_scores(np.full((2, 2, 2), np.nan))
