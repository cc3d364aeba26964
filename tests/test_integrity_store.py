"""Stores that prove their own integrity (issue 14, part A): chunk checksums, chunk presence, the attributes
fingerprint, finalisation after a kill, token sets in `info`, and `featcache verify`.

Each test copies a tiny complete store (extracted once per module) before damaging it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.testing
import zarr

from featcache.cli import app
from featcache.datasets import open_dataset
from featcache.errors import StoreError
from featcache.extraction import ExtractConfig, extract
from featcache.store import FeatureStore, schema
from featcache.store.schema import StoreLayout
from featcache.store.summary import print_store_summary, store_summary
from featcache.store.tokens import create_token_set, write_token_unit
from featcache.store.verify import verify_store
from featcache.training.loader import CachedBatches

CONFIG = ExtractConfig(vfm="dino2-s14", weights="random", resolution=28, image_size=32, mask_size=48, samples_per_chunk=4, batch_size=8)


@pytest.fixture(scope="module")
def complete_store(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    """12 samples in 3 units of 4, 2 views, 2 x 2 patches, with crc32c checksums (the new format)."""
    out = tmp_path_factory.mktemp("integrity") / "store.zarr"
    extract(open_dataset(str(shapes_dir)), out, CONFIG, device="cpu", show_progress=False)
    return out


@pytest.fixture(scope="module")
def old_format_store(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    """The same store as written before issue 14: no checksums, no integrity attributes, no attributes fingerprint."""
    out = tmp_path_factory.mktemp("integrity-old") / "store.zarr"
    extract(open_dataset(str(shapes_dir)), out, CONFIG, device="cpu", show_progress=False, checksums=False)
    group = zarr.open_group(str(out), mode="r+")
    attributes = dict(group.attrs[schema.ATTRIBUTES_KEY])
    del attributes["integrity"], attributes["attributes_fingerprint"]
    group.attrs[schema.ATTRIBUTES_KEY] = attributes
    return out


def copy_of(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(store, target)
    return target


def flip_bytes(chunk: Path, start: int | None = None) -> None:
    """Invert 4 bytes (at a third of the file by default)."""
    data = bytearray(chunk.read_bytes())
    start = len(data) // 3 if start is None else start
    for position in range(start, start + 4):
        data[position] ^= 0xFF
    chunk.write_bytes(bytes(data))


def edit_attributes(store: Path, section: str, key: str, value: object) -> None:
    group = zarr.open_group(str(store), mode="r+")
    attributes = dict(group.attrs[schema.ATTRIBUTES_KEY])
    attributes[section] = {**attributes[section], key: value}
    group.attrs[schema.ATTRIBUTES_KEY] = attributes


def run_cli(*args: str) -> typer.testing.Result:
    return typer.testing.CliRunner().invoke(app, list(args))


# ----------------------------------------------------------------------------- the new format
def test_new_stores_checksum_every_chunk_and_record_it(complete_store: Path) -> None:
    store = FeatureStore(complete_store)
    assert store.chunk_checksums == "crc32c"
    assert store.attributes["integrity"] == {"chunk_checksums": "crc32c", "every_chunk_written": True}
    for name in (schema.FEATURES, schema.IMAGES, schema.MASKS, schema.VIEW_PARAMS, schema.SAMPLE_STATUS, schema.SAMPLE_IDS):
        codecs = json.loads((complete_store / name / "zarr.json").read_text())["codecs"]
        assert codecs[-1] == {"name": "crc32c"}, name
    record = store.attributes["attributes_fingerprint"]
    assert record["values"]["encoder.resolution"] == 28 and record["values"]["layout.grid"] == [2, 2]
    store.require_complete()  # intact
    assert store.changed_attributes() == [] and store.missing_chunks() == []


# ----------------------------------------------------------------------------- case 1: a missing chunk
def test_missing_features_chunk_is_refused_naming_store_array_and_chunk(complete_store: Path, tmp_path: Path) -> None:
    store_path = copy_of(complete_store, tmp_path)
    (store_path / "features/c/1/0/0/0/0").unlink()
    store = FeatureStore(store_path)
    assert store.completeness().complete  # the completion record still says complete
    expected = rf"store {store_path}: array 'features' chunk c/1/0/0/0/0 \(samples 4-7, view 'center'\) is missing on disk"
    with pytest.raises(StoreError, match=expected):
        store.require_complete()
    with pytest.raises(StoreError, match=expected):  # training's loader opens the store through require_complete
        CachedBatches(store, batch_size=4, device=torch.device("cpu"), mode="memory")
    summary = store_summary(store_path)
    assert summary["integrity"]["problems"] == ["array 'features' chunk c/1/0/0/0/0 (samples 4-7, view 'center') is missing on disk"]


def test_missing_all_fill_chunk_of_a_new_store_is_missing_not_zero(complete_store: Path, tmp_path: Path) -> None:
    """New stores write chunks equal to the fill value too (instance classes of a unit without instances would be all
    -1), so every chunk of a written unit is expected on disk."""
    store_path = copy_of(complete_store, tmp_path)
    (store_path / "instance_classes/c/2/0").unlink()
    with pytest.raises(StoreError, match=r"array 'instance_classes' chunk c/2/0 \(samples 8-11\) is missing on disk"):
        FeatureStore(store_path).require_complete()


# ----------------------------------------------------------------------------- case 4: flipped bytes
def test_flipped_bytes_are_a_one_line_error_naming_the_chunk(complete_store: Path, tmp_path: Path) -> None:
    store_path = copy_of(complete_store, tmp_path)
    flip_bytes(store_path / "features/c/2/1/0/0/0")
    store = FeatureStore(store_path)
    store.require_complete()  # the cheap checks read nothing
    message = rf"store {store_path}: array 'features' chunk c/2/1/0/0/0 \(samples 8-11, view 'center-flip'\) is damaged \(crc32c checksum mismatch\)"
    with pytest.raises(StoreError, match=message):
        store.features(np.array([9, 1]), view=None)
    np.testing.assert_array_equal(store.features(slice(0, 8), view=1), FeatureStore(complete_store).features(slice(0, 8), view=1))
    with pytest.raises(StoreError, match=message):  # memory mode loads everything
        CachedBatches(store, batch_size=4, device=torch.device("cpu"), mode="memory")
    batches = CachedBatches(store, batch_size=12, device=torch.device("cpu"), mode="stream", buffer_units=3)
    try:
        with pytest.raises(StoreError, match=message):  # stream mode: the reading thread's error reaches the caller
            for _ in range(20):
                batches.next()
    finally:
        batches.close()


def test_flipped_bytes_in_a_small_array_name_it(complete_store: Path, tmp_path: Path) -> None:
    store_path = copy_of(complete_store, tmp_path)
    flip_bytes(store_path / "sample_status/c/1")
    with pytest.raises(StoreError, match=r"array 'sample_status' chunk c/1 \(samples 4-7\) is damaged \(crc32c checksum mismatch\)"):
        FeatureStore(store_path).completeness()


# ----------------------------------------------------------------------------- case 6: killed before finalisation
def test_rerun_finalises_a_store_whose_units_are_all_written(shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featcache.extraction.run as run

    out = tmp_path / "store.zarr"
    real = run.finalize_store

    def killed(path: Path) -> None:
        raise KeyboardInterrupt  # the kill right after the last unit, before finalisation

    monkeypatch.setattr(run, "finalize_store", killed)
    with pytest.raises(KeyboardInterrupt):
        extract(open_dataset(str(shapes_dir)), out, CONFIG, device="cpu", show_progress=False)
    store = FeatureStore(out)
    assert store.completeness().complete and store.attributes["completed"] is None
    assert "not finalised" in store_summary(out)["integrity"]["problems"][0]
    assert "not finalised" in " ".join(verify_store(out).problems)

    monkeypatch.setattr(run, "finalize_store", real)
    summary = extract(open_dataset(str(shapes_dir)), out, CONFIG, device="cpu", show_progress=False)
    assert summary.units_run == 0 and summary.complete
    attributes = FeatureStore(out).attributes
    assert attributes["completed"] is not None
    assert attributes["compression"]["feature_compression_ratio"] > 0
    assert "attributes_fingerprint" in attributes
    assert store_summary(out)["integrity"]["problems"] == []


# ----------------------------------------------------------------------------- case 9: edited attributes
@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [("encoder", "resolution", 56, "encoder.resolution (recorded 28, now 56)"), ("layout", "grid", [4, 4], "layout.grid (recorded [2, 2], now [4, 4])")],
)
def test_edited_attribute_is_refused_naming_store_and_attribute(
    complete_store: Path, tmp_path: Path, section: str, key: str, value: object, named: str
) -> None:
    store_path = copy_of(complete_store, tmp_path)
    edit_attributes(store_path, section, key, value)
    store = FeatureStore(store_path)
    with pytest.raises(StoreError) as caught:
        store.require_complete()
    message = str(caught.value)
    assert message.startswith(f"store {store_path}: attributes edited since completion: {named}") and "\n" not in message
    assert store_summary(store_path)["integrity"]["problems"] == [f"attributes edited since completion: {named}"]


def test_attributes_outside_the_definition_may_change(complete_store: Path, tmp_path: Path) -> None:
    """Completion time, compression figures and bad-sample notes are not what the features were made from."""
    store_path = copy_of(complete_store, tmp_path)
    group = zarr.open_group(str(store_path), mode="r+")
    group.attrs[schema.ATTRIBUTES_KEY] = {**dict(group.attrs[schema.ATTRIBUTES_KEY]), "bad_samples": {"x": "note"}}
    FeatureStore(store_path).require_complete()


# ----------------------------------------------------------------------------- case 16: token sets in info
def _token_set(store_path: Path, name: str, units: list[int]) -> None:
    store = FeatureStore(store_path)
    layout: StoreLayout = store.layout
    height, width = layout.grid
    create_token_set(store_path, name, layout, np.eye(4, 8, dtype=np.float32), {"vq": {"run": "runs/vq", "weights_sha256": "0" * 64}, "completed": None})
    for unit in units:
        start, stop = layout.unit_range(unit)
        shape = (stop - start, layout.num_views, height, width)
        write_token_unit(store_path, name, start, np.zeros(shape, np.uint16), np.full(shape, 0.5, np.float32), unit)


def test_info_lists_token_sets_with_their_completeness(complete_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_path = copy_of(complete_store, tmp_path)
    _token_set(store_path, "half", [0])
    summary = store_summary(store_path)
    assert [(t["name"], t["units_done"], t["units_total"], t["complete"], t["codebook_size"]) for t in summary["token_sets"]] == [("half", 1, 3, False, 4)]
    print_store_summary(summary)
    printed = capsys.readouterr().out
    assert "token sets" in printed and "half" in printed and "1/3" in printed and "incomplete" in printed
    with pytest.raises(StoreError, match=r"token set 'half' of .* is incomplete \(1/3 units\)"):
        FeatureStore(store_path).require_token_set("half")
    assert any("token set 'half' incomplete (1/3 units)" in p for p in verify_store(store_path).problems)


def test_missing_token_chunk_of_all_zero_indices_is_found(complete_store: Path, tmp_path: Path) -> None:
    """Indices of one code (all 0, the fill value) are written too, so their chunk's absence is damage."""
    store_path = copy_of(complete_store, tmp_path)
    _token_set(store_path, "full", [0, 1, 2])
    FeatureStore(store_path).require_token_set("full")
    (store_path / "tokens/full/indices/c/0/1/0/0").unlink()
    with pytest.raises(StoreError, match=r"array 'tokens/full/indices' chunk c/0/1/0/0 \(samples 0-3, view 'center-flip'\) is missing on disk"):
        FeatureStore(store_path).require_token_set("full")


# ----------------------------------------------------------------------------- featcache verify
def test_verify_passes_an_intact_store_and_shows_what_it_checked(complete_store: Path) -> None:
    result = run_cli("verify", str(complete_store))
    assert result.exit_code == 0, result.output
    assert "intact" in result.output and "crc32c" in result.output and "fingerprint" in result.output
    report = verify_store(complete_store)
    assert report.problems == [] and report.chunks_read > 0


def test_verify_fails_naming_every_problem(complete_store: Path, tmp_path: Path) -> None:
    store_path = copy_of(complete_store, tmp_path)
    flip_bytes(store_path / "images/c/0/0/0/0/0")
    (store_path / "masks/c/2/1/0/0").unlink()
    edit_attributes(store_path, "dataset", "split", "val")
    problems = verify_store(store_path).problems
    assert problems == [
        "attributes edited since completion: dataset.split (recorded None, now 'val')",
        "array 'images' chunk c/0/0/0/0/0 (samples 0-3, view 'center') is damaged (crc32c checksum mismatch)",
        "array 'masks' chunk c/2/1/0/0 (samples 8-11, view 'center-flip') is missing",
    ]
    result = run_cli("verify", str(store_path))
    assert result.exit_code != 0
    assert isinstance(result.exception, StoreError)
    message = str(result.exception)
    assert message.startswith(f"store {store_path} failed verification (3 problems): attributes edited") and "\n" not in message


# ----------------------------------------------------------------------------- older stores (no checksums)
def test_old_format_store_still_opens_reads_and_verifies(old_format_store: Path, complete_store: Path) -> None:
    store = FeatureStore(old_format_store)
    assert store.chunk_checksums is None and store.changed_attributes() is None
    codecs = json.loads((old_format_store / "features/zarr.json").read_text())["codecs"]
    assert [codec["name"] for codec in codecs] == ["bytes", "blosc"]
    store.require_complete()
    np.testing.assert_array_equal(store.load_features(), FeatureStore(complete_store).load_features())
    report = verify_store(old_format_store)
    assert report.problems == []
    assert any("no checksums" in row.detail for row in report.rows)
    assert store_summary(old_format_store)["integrity"] == {"chunk_checksums": None, "problems": []}


def test_old_format_store_damage_is_still_named(old_format_store: Path, tmp_path: Path) -> None:
    store_path = copy_of(old_format_store, tmp_path)
    (store_path / "features/c/0/0/0/0/0").unlink()
    with pytest.raises(StoreError, match=r"array 'features' chunk c/0/0/0/0/0 \(samples 0-3, view 'center'\) is missing on disk"):
        FeatureStore(store_path).require_complete()
    store_path = copy_of(old_format_store, tmp_path / "second")
    flip_bytes(store_path / "features/c/1/0/0/0/0", start=20)  # without a checksum only a damaged blosc header is noticed
    message = r"array 'features' chunk c/1/0/0/0/0 \(samples 4-7, view 'center'\) is damaged \(cannot be decoded: RuntimeError: error during blosc"
    with pytest.raises(StoreError, match=message):
        FeatureStore(store_path).load_features()


@pytest.mark.filterwarnings("ignore:Object at features is not recognized")  # zarr's own note about the damaged folder
def test_a_deleted_array_metadata_is_damage_everywhere(complete_store: Path, tmp_path: Path) -> None:
    """An array whose zarr.json is gone (the chunks alone cannot be read) is named by the cheap checks, info and verify,
    not reported intact because no chunk of it is left to read."""
    store = copy_of(complete_store, tmp_path)
    (store / schema.FEATURES / "zarr.json").unlink()
    with pytest.raises(StoreError, match=r"array 'features' is missing \(its zarr.json is gone\)") as error:
        FeatureStore(store, warn_random=False).require_complete()
    assert str(store) in str(error.value) and "\n" not in str(error.value)
    assert any("array 'features' is missing" in problem for problem in store_summary(store)["integrity"]["problems"])
    report = verify_store(store)
    assert any("array 'features' is missing" in problem for row in report.rows for problem in row.problems)


def test_a_token_set_missing_an_array_is_refused_and_listed(ocl_store: Path, tmp_path: Path) -> None:
    store = copy_of(ocl_store, tmp_path)
    reader = FeatureStore(store, warn_random=False)
    name = reader.token_names()[0]
    shutil.rmtree(store / "tokens" / name / "codebook")
    with pytest.raises(StoreError, match=rf"array 'tokens/{name}/codebook' is missing"):
        FeatureStore(store, warn_random=False).require_token_set(name)
    summary = store_summary(store)
    assert any(f"tokens/{name}/codebook" in problem for problem in summary["integrity"]["problems"])
    assert any(f"tokens/{name}/codebook" in problem for row in verify_store(store).rows for problem in row.problems)


def test_edited_token_set_attributes_are_named(ocl_store: Path, tmp_path: Path) -> None:
    """A token set records what it was made from at completion; an edit (another VQ checksum) is refused by training,
    shown by info and listed by verify."""
    store = copy_of(ocl_store, tmp_path)
    name = FeatureStore(store, warn_random=False).token_names()[0]
    metadata_path = store / "tokens" / name / "zarr.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["attributes"]["featcache_tokens"]["vq"]["weights_sha256"] = "0" * 64
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match=rf"token set '{name}': attributes edited since it was completed: vq.weights_sha256 \(recorded"):
        FeatureStore(store, warn_random=False).require_token_set(name)
    assert any("vq.weights_sha256" in problem for problem in store_summary(store)["integrity"]["problems"])
    assert any("vq.weights_sha256" in problem for row in verify_store(store).rows for problem in row.problems)
