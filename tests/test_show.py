"""`featcache show`: PCA views of patch features against scikit-learn, and the picture's panels for image and clip stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from featcache.analysis.feature_view import pca_rgb
from featcache.datasets import open_dataset, write_synthetic
from featcache.errors import FeatcacheError
from featcache.extraction import extract
from featcache.stages.show import write_show
from featcache.store import FeatureStore
from featcache.store.tokens import create_token_set, write_token_unit
from featcache.training.ocl import train_ocl
from tests.conftest import OCL_EXTRACT
from tests.test_ocl_stage import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pca_components_and_colours_match_sklearn() -> None:
    features = np.random.default_rng(0).normal(size=(3, 4, 5, 16)) * np.linspace(3, 0.1, 16)  # distinct variances
    view = pca_rgb(features)
    patches = features.reshape(-1, 16)
    reference = PCA(n_components=3).fit(patches)
    cosines = np.abs(np.sum(view.components * reference.components_.T, axis=0))  # unit vectors: |cos| = 1 up to sign
    np.testing.assert_allclose(cosines, 1.0, atol=1e-9)
    projected = reference.transform(patches)  # (P, 3)
    for channel in range(3):
        scaled = (projected[:, channel] - projected[:, channel].min()) / np.ptp(projected[:, channel])
        ours = view.rgb.reshape(-1, 3)[:, channel]
        flipped = np.allclose(ours, 1.0 - scaled, atol=1e-9)
        assert flipped or np.allclose(ours, scaled, atol=1e-9)
    assert view.rgb.shape == (3, 4, 5, 3) and view.foreground.all()


def test_foreground_trick_masks_the_background_and_refits_on_the_foreground() -> None:
    rng = np.random.default_rng(1)
    foreground = np.zeros((2, 6, 6), dtype=bool)
    foreground[0, 1:3, 1:4] = foreground[1, 3:5, 2:5] = True  # 12 of 72 patches
    features = rng.normal(scale=0.05, size=(2, 6, 6, 8))
    features[..., 0] += np.where(foreground, 5.0, 0.0)  # the first component separates the foreground
    features[..., 1:4] += np.where(foreground[..., None], rng.normal(size=(2, 6, 6, 3)), 0.0)  # structure inside it
    view = pca_rgb(features, foreground_threshold=0.5)
    np.testing.assert_array_equal(view.foreground, foreground)
    assert np.all(view.rgb[~foreground] == 0.0)
    reference = PCA(n_components=3).fit(features[foreground])
    np.testing.assert_allclose(np.abs(np.sum(view.components * reference.components_.T, axis=0)), 1.0, atol=1e-9)
    with pytest.raises(FeatcacheError, match="foreground threshold"):
        pca_rgb(features, foreground_threshold=1.5)


@pytest.fixture(scope="module")
def clip_store_and_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2 clips x 3 frames (4 x 4 grid), a token set, and a 2-step image run trained on the frames."""
    root = tmp_path_factory.mktemp("show")
    data = write_synthetic(root / "clips", images=2, seed=2, size=48, video=True, frames=3)
    store = root / "video.zarr"
    extract(open_dataset(str(data)), store, OCL_EXTRACT, device="cpu", show_progress=False)
    layout = FeatureStore(store, warn_random=False).layout
    create_token_set(store, "vq", layout, np.eye(4, dtype=np.float32), {"quantizer": "vvo"})
    for unit in range(layout.num_units):
        start, stop = layout.unit_range(unit)
        indices = (np.arange(16).reshape(1, 1, 4, 4) % 4 + np.zeros((stop - start, layout.num_views, 1, 1))).astype(np.uint16)
        write_token_unit(store, "vq", start, indices, np.zeros(indices.shape, np.float16), unit)
    run = root / "run"
    train_ocl(store, tiny_config(steps=2, validate_every=0), run, device="cpu", show_progress=False)
    return store, run


def test_show_draws_a_row_per_frame_of_one_clip_with_every_panel(clip_store_and_run: tuple[Path, Path], tmp_path: Path) -> None:
    store_path, run = clip_store_and_run
    store = FeatureStore(store_path, warn_random=False)
    first = next(iter(store.clips(store.valid_indices())))
    out = tmp_path / "show.png"
    result = write_show(store_path, out, samples=8, tokens="vq", run=str(run), foreground_threshold=None, cell=32)
    assert result["clip"] == first and result["rows"] == 3  # every frame of the clip (3 < 8), in order
    assert result["columns"] == ["image", "PCA", "ground truth", "tokens vq", "run masks"]
    picture = np.asarray(Image.open(out))
    assert picture.shape == (14 + 3 * 32, 5 * 32, 3)
    # The token panel shows the token map: index (y*4 + x) % 4 drawn as 8 px squares in the palette's colours.
    from featcache.plotting import label_palette

    tokens = picture[14 : 14 + 32, 3 * 32 : 4 * 32]
    for y in range(4):
        for x in range(4):
            np.testing.assert_array_equal(tokens[y * 8 + 4, x * 8 + 4], label_palette()[(y * 4 + x) % 4])


def test_show_on_an_image_store_takes_the_first_samples(tmp_path: Path, shapes_dir: Path) -> None:
    store_path = tmp_path / "images.zarr"
    extract(open_dataset(str(shapes_dir)), store_path, OCL_EXTRACT, device="cpu", show_progress=False)
    result = write_show(store_path, tmp_path / "a.png", samples=2, cell=24, foreground_threshold=0.4)
    assert result["rows"] == 2 and result["columns"] == ["image", "PCA (fg)", "ground truth"]
    assert Image.open(tmp_path / "a.png").size == (3 * 24, 14 + 2 * 24)
    with pytest.raises(FeatcacheError, match="--clip"):
        write_show(store_path, tmp_path / "b.png", clip="x")
    with pytest.raises(FeatcacheError, match="token set 'nope'"):
        write_show(store_path, tmp_path / "b.png", tokens="nope")


def test_clip_store_opens_in_xarray_with_clip_coordinates(clip_store_and_run: tuple[Path, Path]) -> None:
    import xarray as xr

    store_path, _ = clip_store_and_run
    store = FeatureStore(store_path, warn_random=False)
    ds = xr.open_zarr(store_path, consolidated=False)
    assert {"sample_ids", "clip_ids", "frame_index", "view"} <= set(ds.coords)
    assert list(ds["clip_ids"].values) == store.clip_ids and list(ds["frame_index"].values) == list(store.frame_indices)
    assert ds["masks"].dims == ("sample", "view", "mask_y", "mask_x")
