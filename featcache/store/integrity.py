"""Stores that prove their own integrity: chunk presence, chunk checksums and the attributes fingerprint.

Three checks, from cheap to full:

* **attributes** (cheap): at completion the store records the fingerprint of the attributes that define it
  (:data:`DEFINING_KEYS`) with the recorded value of every field (a long value by its hash); an edited attribute is
  named with its recorded and current value.
* **presence** (cheap: file listing, no reads): every chunk that a written unit must have exists on disk. Stores
  written with ``integrity.every_chunk_written`` write every chunk (also one equal to the fill value), so every chunk
  of every per-sample array of a done unit is expected; older stores skipped all-fill chunks, so there only the chunks
  that cannot be all fill are expected (features of units with a written sample, the status of done units).
* **reads** (full, `featcache verify`): every chunk present is read, so blosc and crc32c verify it.

The module sits in the store layer below the reader and the writer; it reads zarr groups and attribute dicts.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from featcache import records
from featcache.store import schema

#: The attributes that define what a store holds (fingerprinted at completion).
DEFINING_KEYS = ("identity", "config", "layout", "encoder", "weights", "dataset", "views")
#: Key of the completion record of the attributes, in the store's attributes.
FINGERPRINT_KEY = "attributes_fingerprint"
#: Per-sample arrays whose chunks hold one view each (the second chunk coordinate is the view).
PER_VIEW = (schema.FEATURES, schema.IMAGES, schema.MASKS, schema.VIEW_PARAMS, "indices", "squared_errors")
#: Per-sample arrays of a store, chunked by write unit along the first axis.
PER_SAMPLE = (
    schema.FEATURES, schema.IMAGES, schema.MASKS, schema.VIEW_PARAMS, schema.SOURCE_SIZE, schema.INSTANCE_CLASSES,
    schema.SAMPLE_STATUS,
)
#: A recorded value longer than this (as JSON) is kept as its hash.
_LONGEST_VALUE = 120


# ----------------------------------------------------------------------------- attributes fingerprint
def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        for key in sorted(data):
            yield from _leaves(data[key], f"{prefix}{key}.")
        return
    text = json.dumps(data, sort_keys=True, default=str)
    yield prefix.rstrip("."), data if len(text) <= _LONGEST_VALUE else f"sha256:{records.fingerprint(data)[:16]}"


def defining_attributes(attributes: dict[str, Any], keys: tuple[str, ...] = DEFINING_KEYS) -> dict[str, Any]:
    return {key: attributes.get(key) for key in keys}


def attributes_record(attributes: dict[str, Any], keys: tuple[str, ...] = DEFINING_KEYS) -> dict[str, Any]:
    """The fingerprint of the defining attributes (``keys``) and each field's value (long ones by hash), stored at completion."""
    defining = defining_attributes(attributes, keys)
    return {"sha256": records.fingerprint(defining), "keys": list(keys), "values": dict(_leaves(defining))}


def token_defining_keys(attributes: dict[str, Any]) -> tuple[str, ...]:
    """A token set is defined by all its attributes but the completion time and the record itself."""
    return tuple(sorted(key for key in attributes if key not in ("completed", FINGERPRINT_KEY)))


def changed_attributes(attributes: dict[str, Any]) -> list[str] | None:
    """Fields edited since completion as ``key (recorded X, now Y)``; [] when unchanged, None when the store has no
    record (not finalised, or finalised before featcache recorded one)."""
    record = attributes.get(FINGERPRINT_KEY)
    if not isinstance(record, dict) or "sha256" not in record:
        return None
    defining = {key: attributes.get(key) for key in record.get("keys", DEFINING_KEYS)}
    if records.fingerprint(defining) == record["sha256"]:
        return []
    recorded, current = record.get("values", {}), dict(_leaves(defining))
    changed = [
        f"{key} (recorded {recorded.get(key, 'absent')!r}, now {current.get(key, 'absent')!r})"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key, "absent") != current.get(key, "absent")
    ]
    return changed or ["attributes (their fingerprint differs from the one recorded at completion)"]


# ----------------------------------------------------------------------------- chunks
@dataclass(frozen=True)
class ChunkRef:
    """One chunk of one array, named the way an error message names it."""

    array: str  # path inside the store, e.g. "features" or "tokens/vvo-c256/indices"
    key: str  # chunk key, e.g. "c/1/0/0/0/0"
    samples: tuple[int, int] | None  # sample range [start, stop) for per-sample arrays
    view: str | None

    def describe(self) -> str:
        where = f"array {self.array!r} chunk {self.key}"
        details = []
        if self.samples is not None:
            details.append(f"samples {self.samples[0]}-{self.samples[1] - 1}")
        if self.view is not None:
            details.append(f"view {self.view!r}")
        return where + (f" ({', '.join(details)})" if details else "")


def chunk_ref(array: zarr.Array, name: str, coords: tuple[int, ...], view_names: tuple[str, ...] | None, num_samples: int | None) -> ChunkRef:
    """The :class:`ChunkRef` of chunk ``coords`` of ``array`` (stored at ``name``)."""
    key = array.metadata.encode_chunk_key(coords)  # type: ignore[union-attr]
    samples = None
    if num_samples is not None and array.shape and array.shape[0] == num_samples:
        size = array.chunks[0]
        samples = (coords[0] * size, min((coords[0] + 1) * size, num_samples))
    base = name.rsplit("/", 1)[-1]
    view = view_names[coords[1]] if view_names and base in PER_VIEW and len(coords) > 1 and coords[1] < len(view_names) else None
    return ChunkRef(name, key, samples, view)


def chunk_coords(array: zarr.Array, first: Any = None, second: Any = None) -> Iterator[tuple[int, ...]]:
    """Every chunk's coordinates, optionally only those with first coordinate in ``first`` / second in ``second``."""
    grid = [range(count) for count in array.cdata_shape]
    if first is not None:
        grid[0] = first
    if second is not None and len(grid) > 1:
        grid[1] = second
    return itertools.product(*grid)


def chunk_file(store: Path, name: str, array: zarr.Array, coords: tuple[int, ...]) -> Path:
    return Path(store) / name / array.metadata.encode_chunk_key(coords)  # type: ignore[union-attr]


def expected_store_chunks(
    group: zarr.Group, attributes: dict[str, Any], units_done_values: np.ndarray | None = None
) -> Iterator[tuple[str, zarr.Array, tuple[int, ...]]]:
    """(array name, array, chunk coords) of every chunk the completion record says was written (``units_done_values``:
    the record when the caller has read it already; reading it costs a chunk call per unit)."""
    units_done = group[schema.UNITS_DONE]
    done = np.flatnonzero((units_done[:] if units_done_values is None else units_done_values) == 1)
    # In every store: the sample ids (written at creation) and the completion record's own chunks of done units.
    ids = group[schema.SAMPLE_IDS]  # (opening an array takes milliseconds: once per array, never per chunk)
    yield from ((schema.SAMPLE_IDS, ids, c) for c in chunk_coords(ids))  # type: ignore[arg-type]
    yield from ((schema.UNITS_DONE, units_done, c) for c in chunk_coords(units_done, done))  # type: ignore[arg-type]
    every = bool(attributes.get("integrity", {}).get("every_chunk_written"))
    if every:
        for name in PER_SAMPLE:
            if name in group:
                array = group[name]
                yield from ((name, array, c) for c in chunk_coords(array, done))  # type: ignore[arg-type]
        return
    # Older stores skipped all-fill chunks: expect only chunks that cannot be all fill.
    status = group[schema.SAMPLE_STATUS]
    yield from ((schema.SAMPLE_STATUS, status, c) for c in chunk_coords(status, done))  # type: ignore[arg-type]
    written = status[:] == schema.STATUS_WRITTEN
    size = status.chunks[0]
    units = [int(u) for u in done if written[u * size : (u + 1) * size].any()]
    features = group[schema.FEATURES]
    yield from ((schema.FEATURES, features, c) for c in chunk_coords(features, units))  # type: ignore[arg-type]


def expected_token_chunks(token_group: zarr.Group, name: str) -> Iterator[tuple[str, zarr.Array, tuple[int, ...]]]:
    """Chunks a token set's done units must have (older sets: only the errors, which are never all zero)."""
    done = np.flatnonzero(token_group[schema.UNITS_DONE][:] == 1)
    attributes = dict(token_group.attrs.get("featcache_tokens", {}))
    arrays = ("indices", "squared_errors") if attributes.get("integrity", {}).get("every_chunk_written") else ("squared_errors",)
    for array_name in arrays:
        array = token_group[array_name]
        yield from ((f"tokens/{name}/{array_name}", array, c) for c in chunk_coords(array, done))  # type: ignore[arg-type]


def missing_chunks(store: Path, expected: Iterator[tuple[str, zarr.Array, tuple[int, ...]]], view_names: tuple[str, ...],
                   num_samples: int) -> list[ChunkRef]:
    """The expected chunks whose files are absent (a listing: no chunk is read)."""
    root = str(store)
    return [
        chunk_ref(array, name, coords, view_names, num_samples)
        for name, array, coords in expected
        if not os.path.isfile(os.path.join(root, name, array.metadata.encode_chunk_key(coords)))  # type: ignore[union-attr]
    ]


def damage_reason(error: BaseException) -> str:
    """Why a chunk failed to decode, in a few words."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "checksum" in text.lower():
        return "crc32c checksum mismatch"
    return f"cannot be decoded: {type(error).__name__}: {text[:80]}"


def read_chunk(array: zarr.Array, coords: tuple[int, ...]) -> BaseException | None:
    """Read one chunk; the decoding error, or None when it reads."""
    try:
        array.get_block_selection(coords)
    except Exception as error:  # crc32c: ValueError; blosc: RuntimeError, or SystemError for a damaged header
        return error
    return None


def has_checksums(array: zarr.Array) -> bool:
    return any(type(codec).__name__ == "Crc32cCodec" for codec in array.metadata.codecs)  # type: ignore[union-attr]


__all__ = [
    "DEFINING_KEYS",
    "FINGERPRINT_KEY",
    "ChunkRef",
    "attributes_record",
    "changed_attributes",
    "chunk_coords",
    "chunk_file",
    "chunk_ref",
    "damage_reason",
    "expected_store_chunks",
    "expected_token_chunks",
    "has_checksums",
    "missing_chunks",
    "read_chunk",
]


#: The arrays of every token set.
TOKEN_ARRAYS = ("indices", "squared_errors", schema.UNITS_DONE, "codebook")


def expected_arrays(layout: Any) -> list[str]:
    """The arrays a store of ``layout`` holds (images, masks and the video arrays only where the layout has them)."""
    names = [schema.FEATURES, schema.VIEW_PARAMS, schema.SOURCE_SIZE, schema.INSTANCE_CLASSES, schema.SAMPLE_STATUS,
             schema.UNITS_DONE, schema.SAMPLE_IDS]
    if layout.image_size > 0:
        names.append(schema.IMAGES)
    if layout.mask_size is not None:
        names.append(schema.MASKS)
    if layout.is_video:
        names += [schema.CLIP_IDS, schema.FRAME_INDEX]
    return names


def missing_arrays(group: zarr.Group, names: list[str], prefix: str = "") -> list[str]:
    """Which of ``names`` (below ``prefix``) are not arrays of ``group``: their metadata (zarr.json) is gone."""
    missing = []
    for name in names:
        try:
            node = group[f"{prefix}{name}"]
        except (KeyError, FileNotFoundError, ValueError):
            missing.append(f"{prefix}{name}")
            continue
        if not isinstance(node, zarr.Array):
            missing.append(f"{prefix}{name}")
    return missing
