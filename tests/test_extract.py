"""Extraction into the store: round trip against an independent forward, resume, bad input, refusals, dask."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from featcache.console import RandomWeightsWarning
from featcache.datasets import open_dataset
from featcache.encoders import create_encoder
from featcache.errors import DatasetError, FeatcacheError, StoreError
from featcache.extraction import ExtractConfig, extract
from featcache.store import FeatureStore, read_attributes, schema
from featcache.store.lock import StaleLockWarning


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every chunk file's bytes keyed by relative path (metadata excluded: it holds timestamps)."""
    files = {}
    for root, _, names in os.walk(store):
        for name in names:
            if name != "zarr.json":
                path = Path(root) / name
                files[str(path.relative_to(store))] = path.read_bytes()
    return files


def quiet_store(path: Path) -> FeatureStore:
    return FeatureStore(path, warn_random=False)


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    """An uninterrupted single-process extraction of the fixture dataset."""
    config = ExtractConfig(
        vfm="dino2-s14", weights="random", resolution=28, image_size=32, mask_size=48, samples_per_chunk=4, batch_size=8
    )
    out = tmp_path_factory.mktemp("stores") / "reference.zarr"
    summary = extract(open_dataset(str(shapes_dir)), out, config, device="cpu", show_progress=False)
    assert summary.complete and summary.units_run == 3 and summary.samples_run == 12
    return out


def test_features_match_an_independent_forward(reference_store: Path, shapes_dir: Path) -> None:
    store = quiet_store(reference_store)
    encoder = create_encoder("dino2-s14", weights="random", resolution=28, seed=0)
    mean = torch.tensor(encoder.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.spec.std).view(1, 3, 1, 1)
    ids = store.sample_ids
    assert ids == sorted(p.stem for p in (shapes_dir / "images").iterdir())
    # The fixture's images are square, so the centre crop is the whole image: resize it with PIL directly.
    pixels = []
    for sample_id in ids[:5]:
        image = Image.open(shapes_dir / "images" / f"{sample_id}.png").convert("RGB")
        array = np.asarray(image.resize((28, 28), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
        pixels.append(torch.from_numpy(array).permute(2, 0, 1))
    with torch.inference_mode():
        expected = encoder((torch.stack(pixels) - mean) / std).numpy()  # (5, 2, 2, 384)
    stored = store.features([0, 1, 2, 3, 4], view="center")
    assert stored.dtype == np.float16 and stored.shape == (5, 2, 2, 384)
    np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_images_masks_and_metadata_round_trip(reference_store: Path, shapes_dir: Path) -> None:
    store = quiet_store(reference_store)
    annotations = json.loads((shapes_dir / "annotations.json").read_text())
    images = store.images([2, 0], view=None)  # any order
    assert images.shape == (2, 2, 32, 32, 3) and images.dtype == np.uint8
    # The flip view's image is the centre view's image mirrored.
    np.testing.assert_array_equal(images[:, 1], images[:, 0, :, ::-1])
    source_mask = np.asarray(Image.open(shapes_dir / "masks" / f"{store.sample_ids[2]}.png"))
    masks = store.masks([2], view="center")
    assert masks.shape == (1, 48, 48) and masks.dtype == np.uint16
    assert set(np.unique(masks)) <= set(np.unique(source_mask))
    classes = store.instance_classes([2])[0]
    expected_classes = annotations["classes"][store.sample_ids[2]]
    assert list(classes[: len(expected_classes)]) == expected_classes and (classes[len(expected_classes) :] == -1).all()
    params = store.view_params([0])
    np.testing.assert_array_equal(params[0, :, 4], [0.0, 1.0])  # flip flags
    assert store.completeness().complete and store.completeness().samples_written == 12


def test_provenance_is_complete(reference_store: Path, shapes_dir: Path) -> None:
    attributes = read_attributes(reference_store)
    assert attributes["schema_version"] == schema.SCHEMA_VERSION
    assert attributes["encoder"]["timm_name"] == "vit_small_patch14_dinov2"
    assert attributes["encoder"]["stored_kind"] == "last_block"
    assert attributes["weights"]["source"] == "random" and len(attributes["weights"]["sha256"]) == 64
    assert attributes["dataset"]["source"] == open_dataset(str(shapes_dir)).source()
    assert set(attributes["versions"]) >= {"featcache", "torch", "timm", "zarr", "numcodecs"}
    assert attributes["config"]["resolution"] == 28
    assert attributes["compression"]["feature_compression_ratio"] > 0.9
    assert attributes["completed"]


def test_final_norm_is_derived_from_the_stored_block_output(reference_store: Path) -> None:
    store = quiet_store(reference_store)
    stored = store.features([1, 3], view=1)
    normed = store.features([1, 3], view=1, kind="final_norm")
    norm = store.attributes["encoder"]["final_norm"]
    expected = torch.nn.functional.layer_norm(
        torch.from_numpy(stored.astype(np.float32)), (384,), torch.tensor(norm["weight"]), torch.tensor(norm["bias"]), norm["eps"]
    )
    np.testing.assert_allclose(normed, expected.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(StoreError, match="available: last_block, final_norm"):
        store.features([0], kind="fpn_neck")


def test_random_weights_warn_once_per_command(reference_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featcache.store import reader

    monkeypatch.setattr(reader, "_WARNED_RANDOM", set())  # a fresh process, as every command is
    with pytest.warns(RandomWeightsWarning, match="RANDOMLY INITIALISED dino2-s14"):
        FeatureStore(reference_store)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FeatureStore(reference_store)  # the same command reading again: already warned
    assert not [w for w in caught if issubclass(w.category, RandomWeightsWarning)]
    monkeypatch.setattr(reader, "_WARNED_RANDOM", set())  # the next command warns again
    with pytest.warns(RandomWeightsWarning):
        FeatureStore(reference_store)


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, reference_store: Path) -> None:
    out = tmp_path / "resumed.zarr"
    dataset = open_dataset(str(shapes_dir))

    def stop_after_first(unit: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(dataset, out, tiny_config, device="cpu", show_progress=False, on_unit_done=stop_after_first)
    assert quiet_store(out).completeness().units_done == 1
    # A different batch size is a runtime setting: resuming with it is allowed and changes no byte.
    summary = extract(dataset, out, replace(tiny_config, batch_size=3), device="cpu", show_progress=False)
    assert summary.units_run == 2 and summary.complete
    assert chunk_files(out) == chunk_files(reference_store)
    # A third run finds nothing to do.
    assert extract(dataset, out, tiny_config, device="cpu", show_progress=False).units_run == 0


def test_killed_process_resumes_to_the_same_bytes(tmp_path: Path, shapes_dir: Path, reference_store: Path) -> None:
    """SIGKILL the CLI mid-run (no cleanup at all), then resume."""
    out = tmp_path / "killed.zarr"
    command = [
        sys.executable, "-m", "featcache.cli", "extract", "--data", str(shapes_dir), "--out", str(out),
        "--weights", "random", "--resolution", "28", "--samples-per-chunk", "4", "--batch-size", "8",
        "--device", "cpu", "--set", "image_size=32", "--set", "mask_size=48", "--decode-threads", "1",
    ]
    # Slow the run down so the kill lands mid-way: one unit per ~1 s.
    environment = {**os.environ, "FEATCACHE_TEST_UNIT_DELAY": "1.0"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done_marker = out / schema.UNITS_DONE / "c" / "0"
    while time.time() < deadline and not done_marker.exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert done_marker.exists(), "the run was killed before its first unit finished"
    assert not quiet_store(out).completeness().complete
    with pytest.warns(StaleLockWarning, match="took over stale lock"):  # the killed run's lock
        summary = extract(open_dataset(str(shapes_dir)), out, ExtractConfig(**{**read_attributes(out)["config"]}), device="cpu", show_progress=False)
    assert summary.complete and 0 < summary.units_run < 3
    assert chunk_files(out) == chunk_files(reference_store)


def test_corrupt_image_fails_naming_the_file_and_keeps_finished_units(tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig) -> None:
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    bad = data / "images" / "000009.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "bad.zarr"
    with pytest.raises(DatasetError, match="000009.png"):
        extract(open_dataset(str(data)), out, tiny_config, device="cpu", show_progress=False)
    state = quiet_store(out).completeness()
    assert state.units_done == 2 and not state.complete  # units 0 and 1 were finished before the bad one
    summary = extract(open_dataset(str(data)), out, tiny_config, device="cpu", show_progress=False, skip_bad=True)
    assert summary.complete and summary.units_run == 1 and list(summary.bad) == ["000009"]
    store = quiet_store(out)
    assert store.completeness().samples_bad == 1
    assert "000009" in store.attributes["bad_samples"] and "000009.png" in store.attributes["bad_samples"]["000009"]
    assert 9 not in store.valid_indices() and len(store.valid_indices()) == 11


def test_appending_with_other_inputs_is_refused_naming_the_difference(
    tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, reference_store: Path
) -> None:
    out = tmp_path / "copy.zarr"
    shutil.copytree(reference_store, out)
    before = chunk_files(out)
    dataset = open_dataset(str(shapes_dir))
    with pytest.raises(StoreError, match=r"resolution=28 \(this run: 42\)"):
        extract(dataset, out, replace(tiny_config, resolution=42), device="cpu", show_progress=False)
    with pytest.raises(StoreError, match=r"views=\['center', 'center-flip'\] \(this run: \['center', 'center-flip', 'crop0'\]\)"):
        extract(dataset, out, replace(tiny_config, crops=1), device="cpu", show_progress=False)
    with pytest.raises(StoreError, match="vfm='dino2-s14' \\(this run: 'dino2-s14-reg4'\\)"):
        extract(dataset, out, replace(tiny_config, vfm="dino2-s14-reg4"), device="cpu", show_progress=False)
    with pytest.raises(StoreError, match="weights_sha256"):
        extract(dataset, out, replace(tiny_config, weight_seed=1), device="cpu", show_progress=False)
    assert chunk_files(out) == before


def test_bad_names_and_paths_are_one_line_errors(tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig) -> None:
    with pytest.raises(FeatcacheError, match=r"unknown VFM 'dino3'; known: dino2-b14, dino2-s14"):
        extract(open_dataset(str(shapes_dir)), tmp_path / "x.zarr", replace(tiny_config, vfm="dino3"), show_progress=False)
    with pytest.raises(DatasetError, match="nowhere"):
        open_dataset(str(tmp_path / "nowhere"))
    assert not (tmp_path / "x.zarr").exists()


def test_store_from_a_newer_schema_is_refused(tmp_path: Path, reference_store: Path) -> None:
    out = tmp_path / "future.zarr"
    shutil.copytree(reference_store, out)
    group = zarr.open_group(str(out), mode="r+")
    attributes = dict(group.attrs[schema.ATTRIBUTES_KEY])
    attributes["schema_version"] = schema.SCHEMA_VERSION + 1
    group.attrs[schema.ATTRIBUTES_KEY] = attributes
    with pytest.raises(StoreError, match=f"schema version {schema.SCHEMA_VERSION + 1}.*upgrade featcache"):
        FeatureStore(out)
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore(tmp_path / "missing.zarr")


def test_random_crop_views_are_stored_with_their_parameters(tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig) -> None:
    out = tmp_path / "crops.zarr"
    extract(open_dataset(str(shapes_dir)), out, replace(tiny_config, crops=2), device="cpu", show_progress=False)
    store = quiet_store(out)
    assert store.view_names == ("center", "center-flip", "crop0", "crop1")
    params = store.view_params(np.arange(12))  # (12, 4, 5)
    assert (params[:, 2:, 2] < 64).any() and (params[:, 2:, 2] >= 0.75**0.5 * 64 * 0.85).all()
    features = store.features([0], view=None)
    assert features.shape == (1, 4, 2, 2, 384)
    assert not np.array_equal(features[0, 0], features[0, 2])


def test_two_dask_workers_write_the_same_bytes(
    tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, reference_store: Path, dask_local_cluster: list[dict[str, object]]
) -> None:
    """Real dask worker processes; the default suite lends featcache the session's cluster (tests/conftest.py)."""
    out = tmp_path / "dask.zarr"
    summary = extract(open_dataset(str(shapes_dir)), out, tiny_config, workers=2, show_progress=False)
    assert summary.complete and summary.units_run == 3
    assert [(call["n_workers"], call["threads_per_worker"], call["processes"]) for call in dask_local_cluster] == [(2, 1, True)]
    assert chunk_files(out) == chunk_files(reference_store)


def test_video_clips_keep_clip_ids_and_frame_order(tmp_path: Path, tiny_config: ExtractConfig) -> None:
    from featcache.datasets import write_synthetic

    data = write_synthetic(tmp_path / "clips", images=2, seed=1, size=48, video=True, frames=3)
    dataset = open_dataset(str(data))
    assert dataset.is_video
    out = tmp_path / "video.zarr"
    extract(dataset, out, tiny_config, device="cpu", show_progress=False)
    store = quiet_store(out)
    assert store.layout.is_video and len(store) == 6
    assert store.clip_ids == [c for c in dataset.clip_ids()] and len(set(store.clip_ids)) == 2
    np.testing.assert_array_equal(store.frame_indices, [0, 1, 2, 0, 1, 2])
    # Instance ids are stable over a clip: the first frame's object ids reappear in the last.
    masks = store.masks(np.arange(3), view="center")
    assert set(np.unique(masks[0])) - {0} and set(np.unique(masks[0])) & set(np.unique(masks[2])) - {0}
