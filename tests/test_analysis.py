"""Code statistics on constructed codebooks, separability on constructed feature maps, store-level drivers."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from rich.console import Console

from featcache.analysis import (
    analyze_codes,
    analyze_separability,
    code_statistics,
    feature_distances,
    fit_pca,
    kmeans_baseline,
    kmeans_segmentation,
    patch_labels,
    print_code_table,
    print_separability_table,
    quantized_features,
    write_code_plots,
    write_separability_csv,
    write_separability_json,
)
from featcache.console import RandomWeightsWarning
from featcache.datasets import open_dataset, write_synthetic
from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError, StoreError
from featcache.extraction import ExtractConfig, extract
from featcache.store.reader import FeatureStore
from featcache.store.tokens import create_token_set, write_token_unit

pytestmark = pytest.mark.filterwarnings("ignore::featcache.console.RandomWeightsWarning")

#: Corners of a square of side 2: every code's nearest other code is 2 away.
SQUARE_CODEBOOK = np.array([[0, 0, 1], [2, 0, 1], [0, 2, 1], [2, 2, 1]], dtype=np.float32)


# ----------------------------------------------------------------------------- code statistics
def test_code_statistics_on_a_constructed_histogram(tmp_path: Path) -> None:
    indices = np.array([[[0, 0], [0, 1]], [[1, 1], [1, 0]]], dtype=np.uint16)  # counts [4, 4, 0, 0]
    squared_errors = np.arange(8, dtype=np.float32).reshape(2, 2, 2) ** 2  # L2 errors 0..7
    stats = code_statistics(indices, SQUARE_CODEBOOK, squared_errors, use_gpu=False)
    np.testing.assert_array_equal(stats.usage, [4, 4, 0, 0])
    assert (stats.used_codes, stats.dead_codes) == (2, 2)
    assert stats.perplexity == pytest.approx(2.0)
    assert stats.usage_cv == pytest.approx(1.0)
    np.testing.assert_allclose(stats.nn_distances, [2.0, 2.0, 2.0, 2.0], atol=1e-6)
    assert stats.nn_distance_min == pytest.approx(2.0) and stats.nn_distance_median == pytest.approx(2.0)
    assert stats.nn_distance_mean == pytest.approx(2.0)
    np.testing.assert_array_equal(stats.codes_per_image, [2, 2])
    assert stats.quantization_error_mean == pytest.approx(3.5)
    assert stats.quantization_error_median == pytest.approx(3.5)
    assert stats.quantization_error_p90 == pytest.approx(6.3)
    assert stats.faiss_device == "cpu"
    summary = json.loads(json.dumps(stats.to_dict(include_arrays=True)))
    assert summary["dead_codes"] == 2 and summary["usage"] == [4, 4, 0, 0] and summary["codes_per_image"] == [2, 2]

    paths = write_code_plots(stats, tmp_path / "plots")
    assert [path.name for path in paths] == ["code_usage.png", "code_nn_distances.png", "codes_per_image.png", "quantization_error.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000

    recording = Console(record=True, width=120)
    print_code_table(stats, console=recording)
    text = recording.export_text()
    assert "dead codes" in text and "perplexity" in text and "quantization error" in text


def test_uniform_usage_and_codes_per_image() -> None:
    indices = np.array([[[0, 0], [0, 0]], [[0, 1], [2, 3]], [[3, 3], [1, 1]]])
    stats = code_statistics(indices, SQUARE_CODEBOOK)
    np.testing.assert_array_equal(stats.codes_per_image, [1, 4, 2])
    assert stats.codes_per_image_mean == pytest.approx(7 / 3)
    assert (stats.codes_per_image_min, stats.codes_per_image_max) == (1, 4)
    assert stats.quantization_errors is None and stats.quantization_error_mean is None
    uniform = code_statistics(np.arange(4).reshape(1, 2, 2), SQUARE_CODEBOOK)
    assert uniform.perplexity == pytest.approx(4.0) and uniform.usage_cv == pytest.approx(0.0)
    assert uniform.dead_codes == 0


def test_duplicate_codes_have_zero_nearest_distance_and_bad_inputs_fail(tmp_path: Path) -> None:
    codebook = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    stats = code_statistics(np.zeros((1, 2, 2), dtype=np.int64), codebook)
    np.testing.assert_allclose(stats.nn_distances, [0.0, 0.0, 5.0], atol=1e-6)
    assert len(write_code_plots(stats, tmp_path)) == 3
    with pytest.raises(FeatcacheError, match="0..2"):
        code_statistics(np.full((1, 2, 2), 3), codebook)
    with pytest.raises(FeatcacheError, match="token shape"):
        code_statistics(np.zeros((1, 2, 2), np.int64), codebook, np.zeros((1, 4)))
    if faiss.get_num_gpus() == 0:
        with pytest.raises(FeatcacheError, match="no GPU"):
            code_statistics(np.zeros((1, 2, 2), np.int64), codebook, use_gpu=True)


def test_faiss_gpu_that_cannot_run_falls_back_to_cpu_with_one_notice(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A GPU faiss build without kernels for the device (faiss-gpu-cu12 on Hopper) raises at search: CPU faiss answers."""
    from scipy.spatial.distance import cdist

    from featcache.analysis import codes

    def no_kernel(codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("Error in virtual void faiss::gpu::...: CUDA error 209 no kernel image is available for execution on the device")

    monkeypatch.setattr(codes, "_resolve_gpu", lambda use_gpu: True)  # as if faiss saw a GPU
    monkeypatch.setattr(codes, "_search_gpu", no_kernel)
    codebook = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    distances, device = codes.nearest_code_distances(codebook)
    pairwise = cdist(codebook.astype(np.float64), codebook.astype(np.float64))
    np.fill_diagonal(pairwise, np.inf)
    np.testing.assert_allclose(distances, pairwise.min(axis=1), rtol=1e-5)
    assert device == "cpu"
    stats = code_statistics(np.zeros((1, 2, 2), np.int64), codebook)
    assert stats.faiss_device == "cpu"
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == 2 and "no kernel image" in notices[0] and notices[0].endswith("using CPU faiss")
    with pytest.raises(FeatcacheError, match="faiss GPU search failed") as error:  # an explicit GPU request is not overridden
        codes.nearest_code_distances(codebook, use_gpu=True)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- separability on constructed maps
def _scene_labels(count: int, grid: int, seed: int) -> np.ndarray:
    """(count, grid, grid) label maps: background 0 and three rectangles 1..3 at random places."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((count, grid, grid), dtype=np.uint16)
    for image in labels:
        for object_label in (1, 2, 3):
            top, left = rng.integers(0, grid - 5, size=2)
            height, width = rng.integers(4, 7, size=2)
            image[top : top + height, left : left + width] = object_label
    return labels


def _clustered_features(labels: np.ndarray, separation: float, seed: int, channels: int = 48) -> np.ndarray:
    """Features (N, h, w, C) = per-image centre of the patch's segment * separation + unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((labels.shape[0], 4, channels)) * separation  # (N, segments, C)
    noise = rng.standard_normal(labels.shape + (channels,))
    image_index = np.arange(labels.shape[0])[:, None, None]
    return (centres[image_index, labels.astype(np.int64)] + noise).astype(np.float32)


def test_patch_labels_majority_vote() -> None:
    mask = np.array(
        [
            [1, 1, 2, 2],
            [1, 0, 2, IGNORE_LABEL],
            [0, 0, IGNORE_LABEL, IGNORE_LABEL],
            [0, 3, IGNORE_LABEL, IGNORE_LABEL],
        ],
        dtype=np.uint16,
    )
    tie = np.array([[1, 2, 0, 0], [2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint16)
    result = patch_labels(np.stack([mask, tie]), (2, 2))
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result[0], [[1, 2], [0, IGNORE_LABEL]])
    np.testing.assert_array_equal(result[1], [[1, 0], [0, 0]])  # 2-2 tie goes to the smaller label
    # Mask size not a multiple of the grid: rows 0-2 fall in patch row 0, rows 3-4 in patch row 1.
    uneven = np.zeros((1, 5, 5), dtype=np.uint16)
    uneven[0, 3:, :] = 7
    np.testing.assert_array_equal(patch_labels(uneven, (2, 2))[0], [[0, 0], [7, 7]])
    labels = _scene_labels(2, 8, seed=1)
    masks = np.kron(labels, np.ones((1, 4, 4), dtype=np.uint16))  # each patch = a 4 x 4 pixel block
    np.testing.assert_array_equal(patch_labels(masks, (8, 8)), labels)
    with pytest.raises(FeatcacheError, match="grid"):
        patch_labels(masks, (64, 64))


def test_separated_clusters_have_larger_inter_intra_ratio() -> None:
    labels = _scene_labels(6, 16, seed=0)
    separated = feature_distances(_clustered_features(labels, 4.0, seed=1), labels, pca_dims=16)
    blurred = feature_distances(_clustered_features(labels, 0.5, seed=1), labels, pca_dims=16)
    assert separated["intra"] < separated["inter"]
    assert blurred["intra"] < blurred["inter"]
    assert separated["ratio"] > blurred["ratio"] > 1.0
    assert separated["pca_dims"] == 16 and separated["images"] == 6
    assert separated["intra_per_image"].shape == (6,)
    random_features = np.random.default_rng(3).standard_normal((6, 16, 16, 48)).astype(np.float32)
    unrelated = feature_distances(random_features, labels, pca_dims=16)
    assert unrelated["ratio"] == pytest.approx(1.0, abs=0.05)
    # Without background the inter distances only compare objects with each other.
    objects_only = feature_distances(_clustered_features(labels, 4.0, seed=1), labels, pca_dims=None, ignore_background=True)
    assert objects_only["pca_dims"] is None and objects_only["ratio"] > 1.0


def test_kmeans_recovers_separated_objects_and_not_random_ones() -> None:
    labels = _scene_labels(4, 16, seed=2)
    masks = np.kron(labels, np.ones((1, 2, 2), dtype=np.uint16))  # (4, 32, 32)
    features = _clustered_features(labels, 4.0, seed=4)
    scores = kmeans_segmentation(features, masks, seed=0)
    assert scores["ari"] > 0.9 and scores["fg_ari"] > 0.9
    visible_segments = [len(np.unique(image)) for image in labels]  # a rectangle may hide another one
    np.testing.assert_array_equal(scores["num_clusters"], visible_segments)
    noise = kmeans_segmentation(np.random.default_rng(5).standard_normal(features.shape).astype(np.float32), masks)
    assert noise["ari"] < 0.3 and noise["fg_ari"] < 0.3
    projection = fit_pca(features, 8, seed=0)
    projected_scores = kmeans_segmentation(features, masks, projection=projection)
    assert projected_scores["ari"] > 0.9
    predicted = kmeans_baseline(features, 4, output_size=(32, 32))
    assert predicted.shape == (4, 32, 32) and predicted.max() < 4
    # k is clipped to [2, h*w]: one patch per cluster on a 2 x 2 grid.
    assert len(np.unique(kmeans_baseline(features[:1, :2, :2], 50)[0])) == 4


def test_quantized_features_look_up_the_codebook() -> None:
    indices = np.array([[[0, 3], [2, 1]]], dtype=np.uint16)
    quantized = quantized_features(indices, SQUARE_CODEBOOK)
    assert quantized.shape == (1, 2, 2, 3) and quantized.dtype == np.float32
    np.testing.assert_array_equal(quantized[0, 0, 1], SQUARE_CODEBOOK[3])
    with pytest.raises(FeatcacheError, match="0..3"):
        quantized_features(indices + 4, SQUARE_CODEBOOK)


# ----------------------------------------------------------------------------- store-level drivers
TOKENS = "test-codes"


def _tiny_config() -> ExtractConfig:
    return ExtractConfig(
        vfm="dino2-s14", weights="random", resolution=28, image_size=32, mask_size=48, samples_per_chunk=4, batch_size=8
    )


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic images through the real extraction, plus a complete token set of 16 codes."""
    root = tmp_path_factory.mktemp("separability")
    folder = write_synthetic(root / "shapes", images=8, seed=0, size=64)
    out = root / "store"
    extract(open_dataset(str(folder)), out, _tiny_config(), device="cpu", show_progress=False)
    store = FeatureStore(out, warn_random=False)
    layout = store.layout
    rng = np.random.default_rng(0)
    codebook = rng.standard_normal((16, 8)).astype(np.float32)
    create_token_set(out, TOKENS, layout, codebook, {"codebook_size": 16})
    height, width = layout.grid
    for unit in range(layout.num_units):
        start, stop = layout.unit_range(unit)
        shape = (stop - start, layout.num_views, height, width)
        write_token_unit(out, TOKENS, start, rng.integers(0, 12, size=shape), rng.random(shape).astype(np.float32), unit)
    return out


def test_analyze_separability_rows_for_every_kind(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.warns(RandomWeightsWarning):
        rows = analyze_separability([tiny_store], token_name=TOKENS, pca_dims=32)
    assert [row["kind"] for row in rows] == ["last_block", "final_norm", f"tokens:{TOKENS}"]
    for row in rows:
        assert row["store"] == str(tiny_store) and row["encoder"] == "dino2-s14"
        assert row["random_weights"] is True and row["weights"] == "random"
        assert row["images"] == 8 and row["view"] == "center"
        assert math.isfinite(row["intra"]) and math.isfinite(row["kmeans_ari"]) and math.isfinite(row["kmeans_fg_ari"])
    assert rows[0]["pca_dims"] == 32 and rows[2]["pca_dims"] is None  # 8-dim codes need no reduction

    recording = Console(record=True, width=200)
    print_separability_table(rows, console=recording)
    text = recording.export_text()
    assert "RANDOM" in text and "final_norm" in text and f"tokens:{TOKENS}" in text

    json_rows = json.loads(write_separability_json(rows, tmp_path / "sep.json").read_text())
    assert len(json_rows) == 3 and json_rows[0]["random_weights"] is True
    with (write_separability_csv(rows, tmp_path / "sep.csv")).open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [row["kind"] for row in csv_rows] == ["last_block", "final_norm", f"tokens:{TOKENS}"]
    assert float(csv_rows[0]["kmeans_ari"]) == pytest.approx(rows[0]["kmeans_ari"])

    limited = analyze_separability([tiny_store], limit=3, pca_dims=None)
    assert [row["images"] for row in limited] == [3, 3] and limited[0]["pca_dims"] is None


def test_analyze_separability_errors(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no token set 'missing'"):
        analyze_separability([tiny_store], token_name="missing")
    with pytest.raises(StoreError, match="does not exist"):
        analyze_separability([tmp_path / "nowhere"])
    # A dataset without masks makes a store without masks.
    folder = tmp_path / "unmasked"
    (folder / "images").mkdir(parents=True)
    for image in sorted((tiny_store.parent / "shapes" / "images").iterdir())[:2]:
        shutil.copy(image, folder / "images" / image.name)
    out = tmp_path / "unmasked-store"
    extract(open_dataset(str(folder)), out, _tiny_config(), device="cpu", show_progress=False)
    with pytest.raises(StoreError, match="has no masks") as error:
        analyze_separability([out])
    assert "\n" not in str(error.value)


def test_analyze_codes_writes_json_and_plots(tiny_store: Path, tmp_path: Path) -> None:
    stats = analyze_codes(tiny_store, TOKENS, tmp_path / "codes")
    store = FeatureStore(tiny_store, warn_random=False)
    indices = store.valid_indices()
    expected = code_statistics(store.tokens(TOKENS, indices, "center"), store.codebook(TOKENS))
    np.testing.assert_array_equal(stats.usage, expected.usage)
    assert stats.num_codes == 16 and stats.dead_codes >= 4  # tokens only use codes 0..11
    assert stats.quantization_error_mean is not None
    summary = json.loads((tmp_path / "codes" / "code_statistics.json").read_text())
    assert summary["token_set"] == TOKENS and summary["random_weights"] is True and summary["num_samples"] == 8
    pngs = sorted(path.name for path in (tmp_path / "codes").glob("*.png"))
    assert pngs == ["code_nn_distances.png", "code_usage.png", "codes_per_image.png", "quantization_error.png"]
