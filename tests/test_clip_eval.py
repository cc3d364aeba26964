"""Evaluation on clip (video) stores: clip-pooled metrics against scikit-learn and brute force on hand-made clips,
the tracked kMeans baseline and the clip pictures of `featcache eval`, and the image path left as it was."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from featcache.analysis.tracking import tracked_kmeans
from featcache.datasets import open_dataset, write_synthetic
from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError, StoreError
from featcache.extraction import extract
from featcache.metrics.protocols import METRIC_NAMES, Protocol, score_clips
from featcache.stages.evaluate import evaluate_run
from featcache.store import FeatureStore
from featcache.training.ocl import train_ocl
from tests.test_metric_protocols import _evaluate
from tests.test_ocl_stage import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_made_clips(count: int = 4, frames: int = 3, size: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) (B, T, size, size) int64: up to 3 objects + background with a few ignore pixels, and
    predictions of up to 4 segments agreeing with the truth on about 70% of pixels."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 4, size=(count, frames, size, size))
    true[rng.uniform(size=true.shape) < 0.05] = IGNORE_LABEL
    predicted = np.where(rng.uniform(size=true.shape) < 0.7, true % 4, rng.integers(0, 4, size=true.shape))
    return true.astype(np.int64), predicted.astype(np.int64)


def reference_overlaps(true: np.ndarray, predicted: np.ndarray, count_background: bool) -> tuple[float, float]:
    """mBO and mIoU of all pixels of a clip pooled, by brute force: IoU from boolean masks, the best one-to-one
    matching of ground-truth segments to predicted ones by trying every matching. Ignore pixels leave both sides."""
    keep = true != IGNORE_LABEL
    t, p = true[keep], predicted[keep]
    segments = [g for g in np.unique(t) if count_background or g != 0]
    predictions = list(np.unique(p))
    iou = np.array([[((t == g) & (p == q)).sum() / ((t == g) | (p == q)).sum() for q in predictions] for g in segments])
    mbo = float(iou.max(axis=1).mean())
    best = 0.0
    if len(segments) <= len(predictions):
        for chosen in itertools.permutations(range(len(predictions)), len(segments)):
            best = max(best, sum(iou[g, q] for g, q in enumerate(chosen)))
    else:
        for chosen in itertools.permutations(range(len(segments)), len(predictions)):
            best = max(best, sum(iou[g, q] for q, g in enumerate(chosen)))
    return mbo, best / len(segments)


def sklearn_ari(true: np.ndarray, predicted: np.ndarray, foreground: bool) -> float:
    keep = (true != IGNORE_LABEL) & ((true != 0) if foreground else True)
    return float(adjusted_rand_score(true[keep], predicted[keep]))


@pytest.mark.parametrize("count_background", [True, False])
def test_clip_pooled_metrics_match_sklearn_and_brute_force(count_background: bool) -> None:
    true, predicted = hand_made_clips()
    protocol = Protocol("pooled", count_background=count_background, clip_metrics=METRIC_NAMES)
    names = [f"clip{c}" for c in range(len(true))]
    scores = score_clips({n: list(t) for n, t in zip(names, true)}, {n: list(p) for n, p in zip(names, predicted)}, protocol)
    for name, clip_true, clip_predicted in zip(names, true, predicted):
        # ARI / FG-ARI of a clip = sklearn on the concatenated (t h w) pixels (FG: background pixels dropped).
        assert scores["clip_ari"][name] == pytest.approx(sklearn_ari(clip_true, clip_predicted, False), abs=1e-12)
        assert scores["clip_fg_ari"][name] == pytest.approx(sklearn_ari(clip_true, clip_predicted, True), abs=1e-12)
        mbo, miou = reference_overlaps(clip_true, clip_predicted, count_background)
        assert scores["clip_mbo"][name] == pytest.approx(mbo, abs=1e-12)
        assert scores["clip_miou"][name] == pytest.approx(miou, abs=1e-12)
    # Through featcache eval's scoring loop: per-frame metrics are the mean over all frames, clip ones over clips.
    summary = _evaluate(true, predicted, protocol)
    frames = [(t, p) for clip_true, clip_predicted in zip(true, predicted) for t, p in zip(clip_true, clip_predicted)]
    assert summary["ari"] == pytest.approx(np.mean([sklearn_ari(t, p, False) for t, p in frames]), abs=1e-12)
    assert summary["fg_ari"] == pytest.approx(np.mean([sklearn_ari(t, p, True) for t, p in frames]), abs=1e-12)
    assert summary["mbo"] == pytest.approx(np.mean([reference_overlaps(t, p, count_background)[0] for t, p in frames]), abs=1e-12)
    assert summary["miou"] == pytest.approx(np.mean([reference_overlaps(t, p, count_background)[1] for t, p in frames]), abs=1e-12)
    for name in METRIC_NAMES:
        assert summary[f"clip_{name}"] == pytest.approx(np.mean(list(scores[f"clip_{name}"].values())), abs=1e-12)
    assert summary["images"] == true.shape[0] * true.shape[1] and summary["clips"] == true.shape[0]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-clip x 3-frame synthetic video store and a 2-step image run trained on its frames."""
    from tests.conftest import OCL_EXTRACT

    root = tmp_path_factory.mktemp("clip-eval")
    data = write_synthetic(root / "clips", images=2, seed=2, size=48, video=True, frames=3)
    store = root / "video.zarr"
    extract(open_dataset(str(data)), store, OCL_EXTRACT, device="cpu", show_progress=False)
    run = root / "run"
    train_ocl(store, tiny_config(steps=2, validate_every=0), run, device="cpu", show_progress=False)
    return store, run


def test_eval_on_clips_scores_tracked_kmeans_and_draws_clips(clip_run: tuple[Path, Path], tmp_path: Path) -> None:
    store_path, run = clip_run
    result = evaluate_run(run, device="cpu", baseline=True, out=tmp_path / "eval", show_progress=False, clip_pictures=1)
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    untracked, tracked = written["kmeans_baseline"], written["tracked_kmeans_baseline"]
    assert written["kmeans_tracking"]["cost"] == "centroid"
    assert untracked["clips"] == tracked["clips"] == result["metrics"]["clips"] == 2 and untracked["images"] == 6
    for name in METRIC_NAMES:  # per frame, tracking only renames clusters
        assert untracked[name] == pytest.approx(tracked[name], abs=1e-12)
    # Independent check of both clip ARIs: the same kMeans, pooled per clip and scored with scikit-learn.
    store = FeatureStore(store_path, warn_random=False)
    pooled: dict[str, list[float]] = {"untracked": [], "tracked": []}
    for frames in store.clips().values():
        true = store.masks(frames, view="center").astype(np.int64)
        objects = np.array([len(set(np.unique(mask)) - {0, IGNORE_LABEL}) for mask in true])
        features = store.features(frames, view="center").astype(np.float32)
        labels = tracked_kmeans(features, objects + 1, output_size=true.shape[1:])
        for key, predicted in zip(pooled, labels):
            pooled[key].append(sklearn_ari(true, predicted, False))
    assert untracked["clip_ari"] == pytest.approx(np.mean(pooled["untracked"]), abs=1e-12)
    assert tracked["clip_ari"] == pytest.approx(np.mean(pooled["tracked"]), abs=1e-12)
    # One clip drawn (clip_pictures=1): rows = 3 frames, columns image | ground truth | model | tracked kMeans.
    first = next(iter(store.clips()))
    assert written["clip_pictures"] == [f"clips/{first}.png", f"clips/{first}.gif"]
    assert sorted(p.name for p in (tmp_path / "eval" / "clips").iterdir()) == [f"{first}.gif", f"{first}.png"]
    with Image.open(tmp_path / "eval" / "clips" / f"{first}.png") as grid:
        assert grid.size == (4 * 96, 14 + 3 * 96)
    with Image.open(tmp_path / "eval" / "clips" / f"{first}.gif") as animation:
        assert animation.n_frames == 3 and animation.size == (4 * 96, 14 + 96)
    # The ground-truth column of the first frame shows the stored mask in the palette.
    from featcache.plotting import label_palette

    mask = store.masks(store.clips()[first][:1], view="center")[0]
    expected = np.asarray(Image.fromarray(label_palette()[mask.astype(np.int64) % 256]).resize((96, 96), Image.Resampling.NEAREST))
    with Image.open(tmp_path / "eval" / "clips" / f"{first}.png") as grid:
        np.testing.assert_array_equal(np.asarray(grid.convert("RGB"))[14 : 14 + 96, 96:192], expected)


def test_eval_on_clips_without_baseline_or_pictures_and_bad_options(clip_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = clip_run
    result = evaluate_run(run, device="cpu", out=tmp_path / "plain", show_progress=False, clip_pictures=0, tracking="iou")
    assert not {"kmeans_baseline", "tracked_kmeans_baseline", "clip_pictures"} & set(result) and not (tmp_path / "plain" / "clips").exists()
    with pytest.raises(FeatcacheError, match="tracking is 'hungarian'; expected one of centroid, iou"):
        evaluate_run(run, device="cpu", show_progress=False, tracking="hungarian")
    with pytest.raises(FeatcacheError, match="clip_pictures is -1"):
        evaluate_run(run, device="cpu", show_progress=False, clip_pictures=-1)


def test_image_stores_keep_their_eval_keys(ocl_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_ocl(ocl_store, tiny_config(steps=1, validate_every=0), run, device="cpu", show_progress=False)
    evaluate_run(run, device="cpu", baseline=True, out=tmp_path / "eval", show_progress=False, limit=8)
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(written) == {"run", "store", "random_weights", "view", "protocol", "metrics", "kmeans_baseline", "evaluated", "versions"}
    assert set(written["kmeans_baseline"]) == set(written["metrics"]) == {*METRIC_NAMES, "images"}
    assert not (tmp_path / "eval" / "clips").exists()
    with pytest.raises(StoreError, match="is not a video store"):
        FeatureStore(ocl_store, warn_random=False).clips()

