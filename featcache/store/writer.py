"""Creating a store and writing whole units into it.

Only the coordinator (one process) creates the store, edits its attributes and marks units done;
workers (threads or dask processes) call :func:`write_unit`, which touches only the unit's own chunks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from featcache.errors import StoreError
from featcache.provenance import utc_now
from featcache.store import schema
from featcache.store.integrity import attributes_record
from featcache.store.schema import StoreLayout


@dataclass
class UnitArrays:
    """Everything extraction produces for one write unit of n = stop - start samples."""

    unit: int
    start: int
    features: np.ndarray  # (n, V, h, w, C) float16
    images: np.ndarray | None  # (n, V, I, I, 3) uint8; None when the store keeps no images
    masks: np.ndarray | None  # (n, V, M, M) uint16
    view_params: np.ndarray  # (n, V, 5) float32
    source_size: np.ndarray  # (n, 2) int32
    instance_classes: np.ndarray  # (n, K) int32
    status: np.ndarray  # (n,) uint8
    #: sample id -> one-line reason, for samples skipped with --skip-bad.
    bad: dict[str, str] = field(default_factory=dict)


def blosc_compressor(level: int) -> BloscCodec:
    # Byte shuffle suits 2-byte float16 (bitshuffle measured worse); zstd level 1 measured about as fast as lz4
    # to read while lz4 did not compress float16 features at all (benchmarks/RESULTS.md).
    return BloscCodec(cname="zstd", clevel=level, shuffle="shuffle")


#: The checksum codec's name as the ``integrity`` attribute records it.
CHECKSUM = "crc32c"


def chunk_codecs(level: int, checksums: bool = True) -> list[Any]:
    """Bytes-to-bytes codecs of the per-sample arrays: blosc, then (new stores) a crc32c checksum of the compressed
    bytes, so a flipped byte reads as a checksum mismatch instead of garbage or a blosc error."""
    return [blosc_compressor(level), Crc32cCodec()] if checksums else [blosc_compressor(level)]


def small_codecs(checksums: bool = True) -> list[Any] | str:
    """Codecs of the small arrays (status, ids, completion record): zarr's default zstd, plus the checksum."""
    return [ZstdCodec(level=0), Crc32cCodec()] if checksums else "auto"


def integrity_attributes(checksums: bool = True) -> dict[str, Any]:
    """What a reader may rely on: chunks carry checksums, and every chunk of a written unit exists on disk (written
    even when it equals the fill value, so a missing chunk file is damage, not an all-zero chunk zarr skipped)."""
    return {"chunk_checksums": CHECKSUM if checksums else None, "every_chunk_written": True}


def writable(group: zarr.Group, name: str) -> zarr.Array:
    """``group[name]`` set to write every chunk, also one equal to the fill value (see :func:`integrity_attributes`)."""
    return group[name].with_config({"write_empty_chunks": True})  # type: ignore[union-attr]


def describe_os_error(error: OSError) -> str:
    """``[Errno 28] No space left on device (<file>)``: the errno text and, when known, the file."""
    text = f"[Errno {error.errno}] {error.strerror}" if error.errno is not None else str(error)
    return f"{text} ({error.filename})" if error.filename else text


@contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Turn an OSError (a full disk, a read-only or vanished folder) while writing ``what`` of the store at ``path``
    into a one-line StoreError. zarr writes every file atomically (temporary file, then rename), so a failed write
    leaves the previous bytes: the unit stays pending and the same command resumes once the cause is fixed."""
    try:
        yield
    except OSError as error:
        raise StoreError(
            f"writing {what} of store {path} failed: {describe_os_error(error)}; fix that and run the same command again to resume"
        ) from None


def staging_path(path: Path) -> Path:
    """Where :func:`create_store` builds a store before renaming it into place: a hidden sibling of ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.creating")


#: Every entry featcache writes at a store's top level (arrays, and the root group's metadata).
_STORE_ENTRIES = {
    "zarr.json",
    schema.FEATURES,
    schema.IMAGES,
    schema.MASKS,
    schema.VIEW_PARAMS,
    schema.SOURCE_SIZE,
    schema.INSTANCE_CLASSES,
    schema.SAMPLE_STATUS,
    schema.UNITS_DONE,
    schema.SAMPLE_IDS,
    schema.CLIP_IDS,
    schema.FRAME_INDEX,
    schema.VIEW,
}


def coordinate_attributes(is_video: bool) -> dict[str, str]:
    """CF ``coordinates`` attribute of the per-sample arrays: xarray turns the named arrays into coordinates."""
    names = [schema.SAMPLE_IDS, schema.CLIP_IDS, schema.FRAME_INDEX] if is_video else [schema.SAMPLE_IDS]
    return {"coordinates": " ".join(names)}


def is_half_created_store(path: Path) -> bool:
    """Whether ``path`` is a store that featcache began to create and was killed before its attributes were written.

    True only when the folder holds nothing featcache did not write (a zarr group without attributes and at most
    featcache's own top-level arrays) and no unit is done, so recreating it loses nothing. A user's folder, any other
    zarr group, or a store with attributes is never one.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        metadata = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(metadata, dict) or metadata.get("node_type") != "group" or metadata.get("attributes"):
        return False
    for entry in path.iterdir():
        if entry.name not in _STORE_ENTRIES and not entry.name.endswith(".partial"):
            return False
    done = path / schema.UNITS_DONE / "c"
    return not done.exists() or not any(done.iterdir())  # units_done chunks are written only when a unit is marked


def create_store(
    path: Path,
    layout: StoreLayout,
    attributes: dict[str, Any],
    sample_ids: list[str],
    clip_ids: list[str | None],
    frame_indices: list[int],
    compression_level: int = 1,
    checksums: bool = True,
) -> None:
    """Create an empty store with every array allocated and the static per-sample arrays filled (``checksums``:
    every chunk ends with a crc32c; off only to measure its cost).

    The store is built in a hidden sibling folder and renamed to ``path`` once its attributes are written, so a
    kill at any point leaves either no store (and a staging folder the next run removes) or a whole one.
    """
    path = Path(path)
    if path.exists():
        raise StoreError(f"cannot create store {path}: it already exists")
    staging = staging_path(path)
    with writing(path, "the new store's arrays and attributes"):
        if staging.exists():
            shutil.rmtree(staging)  # left by a run killed while creating this store
        _build_store(staging, layout, attributes, sample_ids, clip_ids, frame_indices, compression_level, checksums)
        os.rename(staging, path)


def _build_store(
    path: Path,
    layout: StoreLayout,
    attributes: dict[str, Any],
    sample_ids: list[str],
    clip_ids: list[str | None],
    frame_indices: list[int],
    compression_level: int,
    checksums: bool,
) -> None:
    """Write the whole empty store at ``path`` (the staging folder); attributes last."""
    n, views, s = layout.num_samples, layout.num_views, layout.samples_per_chunk
    height, width = layout.grid
    compressors = chunk_codecs(compression_level, checksums)
    small = small_codecs(checksums)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    coordinates = coordinate_attributes(layout.is_video)

    def per_sample(name: str, shape: tuple[int, ...], dtype: str, fill: Any = 0) -> None:
        # One chunk = S samples x 1 view: a unit owns whole chunks, and a loader can read one view alone.
        chunks = (s, 1, *shape[2:]) if len(shape) > 2 else (s, *shape[1:])
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=compressors, fill_value=fill,
                           dimension_names=schema.DIMENSIONS[name], attributes=coordinates)

    def small_array(name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, fill: Any = None,
                    coords: bool = False) -> zarr.Array:
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=small,
                                  dimension_names=schema.DIMENSIONS[name], attributes=coordinates if coords else None)

    per_sample(schema.FEATURES, (n, views, height, width, layout.channels), "float16")
    if layout.image_size > 0:
        per_sample(schema.IMAGES, (n, views, layout.image_size, layout.image_size, 3), "uint8")
    if layout.mask_size is not None:
        per_sample(schema.MASKS, (n, views, layout.mask_size, layout.mask_size), "uint16")
    per_sample(schema.VIEW_PARAMS, (n, views, 5), "float32")
    small_array(schema.SOURCE_SIZE, (n, 2), (s, 2), "int32", 0, coords=True)
    small_array(schema.INSTANCE_CLASSES, (n, layout.max_instances), (s, layout.max_instances), "int32", -1, coords=True)
    small_array(schema.SAMPLE_STATUS, (n,), (s,), "uint8", schema.STATUS_PENDING, coords=True)
    small_array(schema.UNITS_DONE, (layout.num_units,), (1,), "uint8", 0)
    ids = small_array(schema.SAMPLE_IDS, (n,), (max(n, 1),), str)
    ids[:] = np.array(sample_ids, dtype=object)
    view = small_array(schema.VIEW, (views,), (max(views, 1),), str)
    view[:] = np.array(list(layout.view_names), dtype=object)
    if layout.is_video:
        clips = small_array(schema.CLIP_IDS, (n,), (max(n, 1),), str)
        clips[:] = np.array([c or "" for c in clip_ids], dtype=object)
        frames = small_array(schema.FRAME_INDEX, (n,), (max(n, 1),), "int32")
        frames[:] = np.asarray(frame_indices, dtype=np.int32)
    write_store_attributes(group, {**attributes, "integrity": integrity_attributes(checksums)})


def write_store_attributes(group: zarr.Group, attributes: dict[str, Any]) -> None:
    """Set featcache's attributes on a store's root group (one atomic file write; a named point for fault tests)."""
    group.attrs[schema.ATTRIBUTES_KEY] = attributes


def write_unit(path: Path, arrays: UnitArrays) -> None:
    """Write one unit's chunks (safe in parallel with other units; never marks the unit done)."""
    with writing(path, f"unit {arrays.unit}"):
        group = zarr.open_group(str(path), mode="r+")
        stop = arrays.start + arrays.status.shape[0]
        region = slice(arrays.start, stop)
        writable(group, schema.FEATURES)[region] = arrays.features
        if arrays.images is not None:
            writable(group, schema.IMAGES)[region] = arrays.images
        if arrays.masks is not None:
            writable(group, schema.MASKS)[region] = arrays.masks
        writable(group, schema.VIEW_PARAMS)[region] = arrays.view_params
        writable(group, schema.SOURCE_SIZE)[region] = arrays.source_size
        writable(group, schema.INSTANCE_CLASSES)[region] = arrays.instance_classes
        writable(group, schema.SAMPLE_STATUS)[region] = arrays.status


def mark_unit_done(path: Path, unit: int, bad: dict[str, str]) -> None:
    """Record a unit's skipped samples, then mark it done (in that order: a crash in between redoes the unit)."""
    with writing(path, f"the completion record of unit {unit}"):
        group = zarr.open_group(str(path), mode="r+")
        if bad:
            attributes = dict(group.attrs[schema.ATTRIBUTES_KEY])
            attributes["bad_samples"] = {**attributes.get("bad_samples", {}), **bad}
            write_store_attributes(group, attributes)
        group[schema.UNITS_DONE][unit] = 1


def directory_bytes(path: Path) -> int:
    """Bytes on disk under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def finalize_store(path: Path) -> dict[str, Any]:
    """After the last unit: record completion time, the measured feature compression ratio and the fingerprint of the
    attributes that define the store (checked whenever the store is opened for training, evaluation or tokenizing)."""
    group = zarr.open_group(str(path), mode="r+")
    features = group[schema.FEATURES]
    raw = features.nbytes
    stored = directory_bytes(Path(path) / schema.FEATURES)
    attributes = dict(group.attrs[schema.ATTRIBUTES_KEY])
    attributes["completed"] = utc_now()
    attributes["compression"] = {
        **attributes.get("compression", {}),
        "feature_bytes_raw": int(raw),
        "feature_bytes_stored": int(stored),
        "feature_compression_ratio": round(raw / stored, 4) if stored else None,
    }
    attributes["attributes_fingerprint"] = attributes_record(attributes)
    group.attrs[schema.ATTRIBUTES_KEY] = attributes
    return attributes
