"""Token sets inside a store: VQ token indices for every view, written by `featcache tokenize`.

Layout of ``tokens/<name>/`` (a subgroup of the store; several token sets coexist for ablations):

==================  ====================  ========  ==================================================
name                shape                 dtype     meaning
==================  ====================  ========  ==================================================
indices             (N, V, h, w)          uint16    nearest code of every patch of every view
squared_errors      (N, V, h, w)          float16   squared L2 distance between encoding and its code
codebook            (K, D)                float32   the projected codebook the indices point into
units_done          (U,)                  uint8     completion record, same units as the store
==================  ====================  ========  ==================================================

Chunks follow the store's write units, so tokenizing resumes unit by unit like extraction.

Token sets of the MSF quantizer (attribute ``quantizer: msf``; VVO sets have no such attribute or ``vvo``) hold
pyramid level 0 (the scale OCL is guided by), with one index per codebook at every position:

=====================  =====================  ========  ==============================================
name                   shape                  dtype     meaning
=====================  =====================  ========  ==============================================
indices                (N, V, G, h, w)        uint16    G = 2: [shared code, level 0's specified code]
                                                        (G = 1 without specified codebooks)
squared_errors         (N, V, h, w)           float16   squared L2 distance between the fused encoding
                                                        and the fused code
codebook               (K, d)                 float32   the shared codebook (index channel 0)
codebook_specified     (K0, d)                float32   level 0's specified codebook (index channel 1)
projection_weight      (E, D)                 float32   only with the pseudo-inverse projection: the
projection_bias        (E,)                   float32   Linear(D -> E) applied to the combined code
=====================  =====================  ========  ==============================================

The decoder input of a position is ``combine`` (attribute: ``average`` = (shared + specified) / 2, ``halves`` =
their concatenation) of the two codes, projected when the projection arrays exist
(:class:`featcache.quantize.lookup.CodeLookup` rebuilds it from these arrays and attributes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from featcache.errors import StoreError
from featcache.store import integrity, schema
from featcache.store.schema import StoreLayout
from featcache.store.writer import chunk_codecs, integrity_attributes, small_codecs, writable

TOKENS_GROUP = "tokens"
TOKEN_ATTRIBUTES_KEY = "featcache_tokens"
INDICES = "indices"
SQUARED_ERRORS = "squared_errors"
CODEBOOK = "codebook"
#: MSF token sets only (see the module docstring).
CODEBOOK_SPECIFIED = "codebook_specified"
PROJECTION_WEIGHT = "projection_weight"
PROJECTION_BIAS = "projection_bias"
MSF_TOKEN_ARRAYS = (CODEBOOK_SPECIFIED, PROJECTION_WEIGHT, PROJECTION_BIAS)
#: uint16 indices address at most this many codes.
MAX_CODEBOOK_SIZE = 65536


def token_set_quantizer(attributes: dict[str, Any]) -> str:
    """``vvo`` or ``msf``: the quantizer a token set was made by (sets written before MSF are VVO)."""
    return str(attributes.get("quantizer", "vvo"))


def validate_set_name(name: str, what: str = "token set", example: str = "vvo-c256") -> str:
    """A token (or slot) set name becomes a folder of the store: refuse anything that is not one plain folder name
    (empty, '.', '..', a leading '.', '/' or '\\'), before anything is created."""
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise StoreError(
            f"{what} name {name!r} is invalid; expected a plain name like {example!r} (no '/', '\\', '..' or leading '.')"
        )
    return name


def validate_token_name(name: str) -> str:
    return validate_set_name(name)


def token_group_path(name: str) -> str:
    return f"{TOKENS_GROUP}/{validate_token_name(name)}"


def token_names(group: zarr.Group) -> list[str]:
    """Names of the token sets of a store's root group; a group whose creation was interrupted (no attributes) is
    not a token set (tokenize recreates it)."""
    return named_sets(group, TOKENS_GROUP, TOKEN_ATTRIBUTES_KEY)


def named_sets(group: zarr.Group, parent: str, attributes_key: str) -> list[str]:
    """Names of the subgroups of ``group[parent]`` that carry ``attributes_key`` (token sets, slot sets)."""
    if parent not in group:
        return []
    return sorted(name for name, member in group[parent].groups() if attributes_key in member.attrs)  # type: ignore[union-attr]


def is_half_created_token_set(store: Path, name: str) -> bool:
    """Whether ``tokens/<name>`` exists without its attributes: a tokenize killed while creating it."""
    root = zarr.open_group(str(store), mode="r")
    path = token_group_path(name)
    return path in root and TOKEN_ATTRIBUTES_KEY not in root[path].attrs


def create_token_set(
    store: Path,
    name: str,
    layout: StoreLayout,
    codebook: np.ndarray,
    attributes: dict[str, Any],
    index_groups: int = 0,
    extra_arrays: dict[str, np.ndarray] | None = None,
) -> None:
    """Create ``tokens/<name>`` with its codebook; fails if it exists (the caller decides about overwriting).

    ``index_groups`` G > 0 gives indices (N, V, G, h, w) (MSF: one index per codebook); 0 the VVO (N, V, h, w).
    ``extra_arrays`` are further small arrays (MSF: ``codebook_specified``, the projection). The attributes are
    written last, so a group without them is a creation that was interrupted: it is removed and created again
    here. The caller holds the token set's lock.
    """
    path = token_group_path(name)
    for array in (codebook, *[a for key, a in (extra_arrays or {}).items() if key.startswith(CODEBOOK)]):
        if array.shape[0] > MAX_CODEBOOK_SIZE:
            raise StoreError(f"codebook of {array.shape[0]} codes does not fit uint16 token indices (at most {MAX_CODEBOOK_SIZE})")
    if is_half_created_token_set(store, name):
        delete_token_set(store, name)
    root = zarr.open_group(str(store), mode="r+")
    if path in root:
        raise StoreError(f"token set {name!r} already exists in {store}")
    group = root.require_group(TOKENS_GROUP).create_group(name)
    height, width = layout.grid
    shape = (layout.num_samples, layout.num_views, height, width)
    chunks = (layout.samples_per_chunk, 1, height, width)
    groups = (index_groups,) if index_groups else ()
    compressors = chunk_codecs(1)  # with crc32c checksums (see featcache.store.integrity)
    dims = schema.TOKEN_DIMENSIONS  # zarr v3 dimension names, for xarray.open_zarr(store, group="tokens/<name>")
    group.create_array(INDICES, shape=shape[:2] + groups + shape[2:], chunks=chunks[:2] + groups + chunks[2:], dtype="uint16",
                       compressors=compressors, fill_value=0, dimension_names=dims["msf_indices" if groups else INDICES])
    group.create_array(SQUARED_ERRORS, shape=shape, chunks=chunks, dtype="float16", compressors=compressors, fill_value=0,
                       dimension_names=dims[SQUARED_ERRORS])
    group.create_array(schema.UNITS_DONE, shape=(layout.num_units,), chunks=(1,), dtype="uint8", fill_value=0, compressors=small_codecs(),
                       dimension_names=dims[schema.UNITS_DONE])
    group.create_array(CODEBOOK, data=codebook.astype(np.float32), compressors=small_codecs(), dimension_names=dims[CODEBOOK])
    for key, array in (extra_arrays or {}).items():
        array = np.asarray(array, dtype=np.float32)
        group.create_array(key, data=array, compressors=small_codecs(), dimension_names=dims.get(key, tuple(f"{key}_{i}" for i in range(array.ndim))))
    write_token_attributes(group, {**attributes, "integrity": integrity_attributes()})


def write_token_attributes(group: zarr.Group, attributes: dict[str, Any]) -> None:
    """Set a token set's attributes (the last step of its creation; a named point for fault tests)."""
    group.attrs[TOKEN_ATTRIBUTES_KEY] = attributes


def delete_token_set(store: Path, name: str) -> None:
    root = zarr.open_group(str(store), mode="r+")
    del root[token_group_path(name)]


def write_token_unit(store: Path, name: str, start: int, indices: np.ndarray, squared_errors: np.ndarray, unit: int) -> None:
    """Write one unit's indices (n, V, h, w) (MSF: (n, V, G, h, w)) and errors (n, V, h, w), then mark the unit done."""
    group = zarr.open_group(str(store), mode="r+")[token_group_path(name)]
    region = slice(start, start + indices.shape[0])
    writable(group, INDICES)[region] = indices.astype(np.uint16)
    writable(group, SQUARED_ERRORS)[region] = squared_errors.astype(np.float16)
    group[schema.UNITS_DONE][unit] = 1


def pending_token_units(store: Path, name: str) -> list[int]:
    return pending_units(store, token_group_path(name))


def pending_units(store: Path, path: str) -> list[int]:
    """Units not yet marked done in the ``units_done`` record of the set at ``path`` inside ``store``."""
    group = zarr.open_group(str(store), mode="r")[path]
    done = group[schema.UNITS_DONE][:]
    return [int(unit) for unit in np.flatnonzero(done == 0)]


def finish_token_set(store: Path, name: str, completed: str) -> None:
    group = zarr.open_group(str(store), mode="r+")[token_group_path(name)]
    attributes = dict(group.attrs[TOKEN_ATTRIBUTES_KEY])
    attributes["completed"] = completed
    # What tokens were made from (VQ weights, store), checked whenever training reads them (featcache.store.integrity).
    attributes[integrity.FINGERPRINT_KEY] = integrity.attributes_record(attributes, integrity.token_defining_keys(attributes))
    group.attrs[TOKEN_ATTRIBUTES_KEY] = attributes
