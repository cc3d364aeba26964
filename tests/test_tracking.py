"""Tracking per-frame clusters over a clip (featcache.analysis.tracking) and grouping store samples by clip.

References: brute force over every matching for the Hungarian step, scikit-learn's adjusted_rand_score on the
pooled (t h w) pixels of a clip for what tracking buys.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from featcache.analysis.tracking import iou_distance, match_clusters, track_clusters, tracked_kmeans
from featcache.errors import FeatcacheError
from featcache.metrics.protocols import get_protocol, score_masks
from featcache.store import group_by_clip


def brute_force_matching(cost: np.ndarray) -> tuple[float, dict[int, int]]:
    """Minimum total cost over every one-to-one matching of min(P, Q) pairs, and that matching (row -> column)."""
    rows, columns = cost.shape
    best: tuple[float, dict[int, int]] = (np.inf, {})
    if rows <= columns:
        for chosen in itertools.permutations(range(columns), rows):
            total = sum(cost[r, c] for r, c in enumerate(chosen))
            if total < best[0]:
                best = (total, dict(enumerate(chosen)))
    else:
        for chosen in itertools.permutations(range(rows), columns):
            total = sum(cost[r, c] for c, r in enumerate(chosen))
            if total < best[0]:
                best = (total, {r: c for c, r in enumerate(chosen)})
    return best


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 4), (4, 2), (5, 5), (3, 5)])
@pytest.mark.parametrize("seed", range(4))
def test_hungarian_matching_equals_brute_force(shape: tuple[int, int], seed: int) -> None:
    cost = np.random.default_rng(seed).uniform(0, 2, size=shape)
    matched = match_clusters(cost)
    total, expected = brute_force_matching(cost)
    assert {r: int(c) for r, c in enumerate(matched) if c >= 0} == expected
    assert sum(cost[r, c] for r, c in enumerate(matched) if c >= 0) == pytest.approx(total)
    assert (matched >= 0).sum() == min(shape)


def test_matches_costlier_than_max_cost_are_left_unmatched() -> None:
    cost = np.array([[0.1, 0.9], [0.8, 0.7]])
    np.testing.assert_array_equal(match_clusters(cost), [0, 1])
    np.testing.assert_array_equal(match_clusters(cost, max_cost=0.5), [0, -1])
    with pytest.raises(FeatcacheError, match="matching cost"):
        match_clusters(np.array([[np.nan]]))


def moving_clip(frames: int = 5, size: int = 16, channels: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth (T, size, size): background 0, a 4 x 4 square 1 moving right, a 3 x 5 block 2 moving down (1 px per
    frame), and features (T, size, size, C): one random vector per segment plus small noise."""
    rng = np.random.default_rng(seed)
    true = np.zeros((frames, size, size), dtype=np.int64)
    for t in range(frames):
        true[t, 2:6, 1 + t : 5 + t] = 1
        true[t, 8 + t : 11 + t, 9:14] = 2
    prototypes = rng.normal(size=(3, channels))
    features = prototypes[true] + 0.01 * rng.normal(size=(*true.shape, channels))
    return true, features


def pooled_ari(true: np.ndarray, predicted: np.ndarray, foreground: bool = False) -> float:
    """sklearn ARI of all pixels of a clip (t h w) pooled; ``foreground`` drops ground-truth background."""
    keep = true.reshape(-1) != 0 if foreground else np.ones(true.size, dtype=bool)
    return float(adjusted_rand_score(true.reshape(-1)[keep], predicted.reshape(-1)[keep]))


@pytest.mark.parametrize("cost", ["centroid", "iou"])
def test_tracking_undoes_per_frame_permutations(cost: str) -> None:
    true, features = moving_clip()
    permutations = [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0]]
    per_frame = np.stack([np.array(p)[frame] for p, frame in zip(permutations, true)]) + 3  # ids 3..5 as kMeans might give
    for frame in range(len(true)):  # each frame alone is a perfect segmentation
        assert adjusted_rand_score(true[frame].reshape(-1), per_frame[frame].reshape(-1)) == 1.0
    assert pooled_ari(true, per_frame) < 0.3 and pooled_ari(true, per_frame, foreground=True) < 0.3
    tracked = track_clusters(per_frame, features, cost=cost)
    assert pooled_ari(true, tracked) == 1.0 and pooled_ari(true, tracked, foreground=True) == 1.0
    np.testing.assert_array_equal(tracked[0], per_frame[0])  # the first frame keeps its ids
    assert set(np.unique(tracked)) == {3, 4, 5}
    # featcache's clip pooling (the eval path) agrees with sklearn on both.
    protocol = get_protocol("videosaur")
    for labels in (per_frame, tracked):
        scores = score_masks(true[None], labels[None], protocol)
        assert scores["ari"][0] == pytest.approx(pooled_ari(true, labels), abs=1e-12)
        assert scores["fg_ari"][0] == pytest.approx(pooled_ari(true, labels, foreground=True), abs=1e-12)


def test_centroid_cost_follows_objects_that_jump_where_iou_cannot() -> None:
    """Two objects swap places between frames: features follow them, overlap follows the places."""
    true, features = moving_clip(frames=2)
    rng = np.random.default_rng(1)
    prototypes = rng.normal(size=(3, 8))
    true[1] = 0
    true[1, 2:6, 1:5] = 2  # object 2 where object 1 was
    true[1, 8:11, 9:14] = 1
    features = prototypes[true]
    per_frame = np.stack([true[0], np.array([0, 1, 2])[true[1]]])
    assert pooled_ari(true, track_clusters(per_frame, features, "centroid")) == 1.0
    assert pooled_ari(true, track_clusters(per_frame, features, "iou")) < 1.0


def test_clusters_appearing_get_fresh_ids_and_disappearing_ids_are_not_reused() -> None:
    size = 12
    true = np.zeros((5, size, size), dtype=np.int64)
    true[:, 1:4, 1:4] = 1  # object 1 in every frame
    true[1, 6:9, 6:9] = 2  # object 2 only in frame 1
    true[3:, 7:10, 1:4] = 3  # object 3 appears in frame 3
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 6))[true] + 0.01 * rng.normal(size=(*true.shape, 6))
    per_frame = np.stack([np.unique(frame, return_inverse=True)[1].reshape(frame.shape) for frame in true])
    per_frame[2] = 1 - per_frame[2]  # frame 2: background and object 1 swap ids
    for cost in ("centroid", "iou"):
        tracked = track_clusters(per_frame, features, cost=cost)
        ids = [set(np.unique(frame)) for frame in tracked]
        assert ids[0] == {0, 1}
        new_in_1 = ids[1] - ids[0]
        assert len(ids[1]) == 3 and len(new_in_1) == 1 and new_in_1.pop() == 2  # fresh: the next id after frame 0's
        assert ids[2] == {0, 1}
        assert ids[3] - {0, 1} == {3}  # object 3 does not inherit object 2's id, gone since frame 1
        assert pooled_ari(true, tracked) == 1.0


def test_tracked_kmeans_recovers_a_consistent_clip() -> None:
    true, features = moving_clip(frames=4)
    per_frame, tracked = tracked_kmeans(features, 3, output_size=(32, 32))
    assert per_frame.shape == tracked.shape == (4, 32, 32)
    upsampled = np.repeat(np.repeat(true, 2, axis=1), 2, axis=2)
    for frame in range(4):
        assert adjusted_rand_score(upsampled[frame].reshape(-1), per_frame[frame].reshape(-1)) == 1.0
        assert adjusted_rand_score(upsampled[frame].reshape(-1), tracked[frame].reshape(-1)) == 1.0
    assert pooled_ari(upsampled, tracked) == 1.0


def test_iou_distance_and_bad_inputs() -> None:
    current = np.array([[0, 0, 1, 1]])
    previous = np.array([[0, 1, 1, 1]])
    distance = iou_distance(current, np.array([0, 1]), previous, np.array([0, 1]))
    np.testing.assert_allclose(distance, 1 - np.array([[1 / 2, 1 / 4], [0, 2 / 3]]))
    with pytest.raises(FeatcacheError, match="centroid tracking needs features"):
        track_clusters(np.zeros((2, 3, 3), dtype=np.int64))
    with pytest.raises(FeatcacheError, match="tracking cost is 'nearest'"):
        track_clusters(np.zeros((2, 3, 3), dtype=np.int64), cost="nearest")
    with pytest.raises(FeatcacheError, match=r"expected integer \(T, h, w\)"):
        track_clusters(np.zeros((3, 3)), cost="iou")


def test_group_by_clip_orders_frames_and_keeps_first_appearance() -> None:
    clip_ids = ["b", "a", "b", "a", "b", "c"]
    frames = [2, 1, 0, 0, 1, 0]
    grouped = group_by_clip(clip_ids, frames, np.arange(6))
    assert list(grouped) == ["b", "a", "c"]
    assert [list(v) for v in grouped.values()] == [[2, 4, 0], [3, 1], [5]]
    limited = group_by_clip(clip_ids, frames, np.array([4, 0, 3]))
    assert {k: list(v) for k, v in limited.items()} == {"b": [4, 0], "a": [3]}
