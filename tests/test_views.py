"""Views: crop geometry, determinism of random crops, masks following images."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.errors import FeatcacheError
from featcache.views import RANDOM_CROP_RATIO, crop_params, default_views, resize_crop_image, resize_crop_mask


def test_default_views_are_center_and_flip_then_crops() -> None:
    views = default_views(2)
    assert [v.name for v in views] == ["center", "center-flip", "crop0", "crop1"]
    with pytest.raises(FeatcacheError, match="--crops"):
        default_views(-1)


def test_center_crop_is_the_largest_centred_square() -> None:
    crop = crop_params(default_views()[0], 60, 100, seed=0, sample_index=0, view_index=0)
    assert (crop.top, crop.left, crop.height, crop.width, crop.flip) == (0, 20, 60, 60, False)


def test_random_crops_depend_only_on_seed_sample_and_view() -> None:
    view = default_views(1)[2]
    first = crop_params(view, 100, 120, seed=3, sample_index=7, view_index=2)
    assert first == crop_params(view, 100, 120, seed=3, sample_index=7, view_index=2)
    assert first != crop_params(view, 100, 120, seed=3, sample_index=8, view_index=2)
    crops = [crop_params(view, 100, 120, seed=0, sample_index=i, view_index=2) for i in range(200)]
    for crop in crops:
        assert 0 <= crop.top and crop.top + crop.height <= 100 + 1e-6
        assert 0 <= crop.left and crop.left + crop.width <= 120 + 1e-6
        assert RANDOM_CROP_RATIO[0] - 1e-6 <= crop.width / crop.height <= RANDOM_CROP_RATIO[1] + 1e-6
        assert 0.75 * 100 * 100 * 0.99 <= crop.width * crop.height <= 100 * 100 * 1.01
    assert 40 < sum(c.flip for c in crops) < 160


def test_mask_follows_the_image_through_crop_resize_and_flip() -> None:
    # Left half label 1, right half label 2; an image coloured the same way.
    mask = np.zeros((40, 80), np.uint16)
    mask[:, 20:40] = 1
    mask[:, 40:60] = 2
    image = np.zeros((40, 80, 3), np.uint8)
    image[mask == 1] = (255, 0, 0)
    image[mask == 2] = (0, 0, 255)
    crop = crop_params(default_views()[1], 40, 80, 0, 0, 1)  # centre square, flipped
    small_mask = resize_crop_mask(mask, crop, 8)
    small_image = resize_crop_image(image, crop, 8)
    # After the flip, label 2 (blue) is on the left half, label 1 (red) on the right.
    assert (small_mask[:, :4] == 2).all() and (small_mask[:, 4:] == 1).all()
    assert small_image[4, 1, 2] > 200 and small_image[4, 6, 0] > 200


def test_identity_crop_keeps_the_mask_exactly() -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, size=(16, 16)).astype(np.uint16)
    crop = crop_params(default_views()[0], 16, 16, 0, 0, 0)
    np.testing.assert_array_equal(resize_crop_mask(mask, crop, 16), mask)
