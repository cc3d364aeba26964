"""Stores open in xarray with named dimensions and coordinates; stores written before keep reading in featcache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr  # a dev dependency: this module must fail, not skip, without it
import zarr

from featcache.datasets import open_dataset
from featcache.extraction import ExtractConfig, extract
from featcache.store import schema
from featcache.store.dimensions import name_dimensions
from featcache.store.reader import FeatureStore
from featcache.store.schema import StoreLayout
from featcache.store.tokens import create_token_set, finish_token_set, write_token_unit
from featcache.store.verify import verify_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    """A finished tiny store (12 samples, 2 views, 2 x 2 grid) with a VVO token set."""
    out = tmp_path_factory.mktemp("xarray") / "store.zarr"
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=28, image_size=32, mask_size=48, samples_per_chunk=4, batch_size=8)
    extract(open_dataset(str(shapes_dir)), out, config, device="cpu", show_progress=False)
    layout = FeatureStore(out, warn_random=False).layout
    create_token_set(out, "vq", layout, np.arange(12, dtype=np.float32).reshape(4, 3), {"quantizer": "vvo"})
    for unit in range(layout.num_units):
        start, stop = layout.unit_range(unit)
        indices = np.full((stop - start, 2, 2, 2), unit, dtype=np.uint16)
        write_token_unit(out, "vq", start, indices, np.zeros(indices.shape, np.float16), unit)
    finish_token_set(out, "vq", "2026-01-01T00:00:00+00:00")
    return out


def test_xarray_opens_a_fresh_store_with_named_dimensions(store: Path) -> None:
    reader = FeatureStore(store, warn_random=False)
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["features"].dims == ("sample", "view", "y", "x", "channel")
    assert ds["masks"].dims == ("sample", "view", "mask_y", "mask_x")
    assert ds["images"].dims == ("sample", "view", "image_y", "image_x", "rgb")
    assert dict(ds.sizes)["sample"] == 12 and dict(ds.sizes)["y"] == 2 and dict(ds.sizes)["channel"] == 384
    # Coordinates: the view names index the view dimension; sample ids label the samples.
    assert list(ds["view"].values) == list(reader.view_names)
    assert "sample_ids" in ds.coords and list(ds["sample_ids"].values) == reader.sample_ids
    assert "sample_ids" in ds["features"].coords
    # The same numbers as featcache reads, selected by view name.
    second = reader.view_names[1]
    np.testing.assert_array_equal(ds["features"].sel(view=second).isel(sample=slice(0, 5)).values, reader.features(slice(0, 5), view=1))
    tokens = xr.open_zarr(store, group="tokens/vq", consolidated=False)
    assert tokens["indices"].dims == ("sample", "view", "y", "x")
    assert tokens["codebook"].dims == ("code", "code_channel")
    assert int(tokens["indices"].isel(sample=4, view=1, y=0, x=1)) == 1
    np.testing.assert_array_equal(tokens["codebook"].values, np.arange(12, dtype=np.float32).reshape(4, 3))


def _strip_dimension_names(path: Path) -> None:
    """Make ``path`` look like a store written before featcache named dimensions."""
    shutil.rmtree(path / schema.VIEW)
    for metadata_file in path.rglob("zarr.json"):
        metadata = json.loads(metadata_file.read_text())
        if metadata.get("node_type") == "array":
            metadata.pop("dimension_names", None)
            metadata.get("attributes", {}).pop("coordinates", None)
            metadata_file.write_text(json.dumps(metadata))


def test_stores_without_dimension_names_stay_readable_and_can_be_named(store: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    _strip_dimension_names(old)
    assert zarr.open_array(str(old / schema.FEATURES), mode="r").metadata.dimension_names is None
    reader = FeatureStore(old, warn_random=False)
    reader.require_intact()
    assert reader.changed_attributes() == []
    np.testing.assert_array_equal(reader.features(slice(0, 12), view=0), FeatureStore(store, warn_random=False).features(slice(0, 12), view=0))
    assert verify_store(old).problems == []
    with pytest.raises(Exception, match="dimension"):  # xarray cannot open it as it is
        xr.open_zarr(old, consolidated=False)

    changed = name_dimensions(old)
    assert schema.FEATURES in changed and schema.VIEW in changed and "tokens/vq/indices" in changed
    assert name_dimensions(old) == []  # idempotent
    ds = xr.open_zarr(old, consolidated=False)
    assert ds["features"].dims == ("sample", "view", "y", "x", "channel")
    assert list(ds["view"].values) == list(reader.view_names)
    # featcache's attributes and their fingerprint are untouched; every chunk still verifies.
    after = FeatureStore(old, warn_random=False)
    assert after.changed_attributes() == []
    assert verify_store(old).problems == []
    layout: StoreLayout = after.layout
    assert layout.num_views == len(ds["view"])
