"""Named dimensions for stores written before featcache recorded them, so xarray opens those stores too.

New stores get zarr v3 ``dimension_names``, the ``view`` coordinate array and the ``coordinates`` attribute at creation
(:func:`featcache.store.writer.create_store`). featcache itself never reads them, so older stores stay readable as they
are; :func:`name_dimensions` adds them in place by rewriting each array's ``zarr.json`` (metadata only: no chunk is
touched, and the store's featcache attributes and their fingerprint stay as they were).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from featcache.errors import StoreError
from featcache.store import schema
from featcache.store.tokens import TOKEN_ATTRIBUTES_KEY, TOKENS_GROUP
from featcache.store.writer import coordinate_attributes, small_codecs

#: Per-sample arrays that get the ``coordinates`` attribute (the coordinate arrays themselves do not).
_WITH_COORDINATES = (
    schema.FEATURES, schema.IMAGES, schema.MASKS, schema.VIEW_PARAMS, schema.SOURCE_SIZE, schema.INSTANCE_CLASSES, schema.SAMPLE_STATUS,
)


def _rewrite(metadata_file: Path, dims: tuple[str, ...], attributes: dict[str, Any] | None) -> bool:
    """Set ``dimension_names`` (and extra attributes) in one array's zarr.json, atomically; False when already set."""
    metadata = json.loads(metadata_file.read_text())
    if metadata.get("node_type") != "array":
        return False
    if len(dims) != len(metadata["shape"]):
        raise StoreError(f"{metadata_file}: shape {metadata['shape']} does not match the dimensions {list(dims)} featcache names for it")
    wanted_attributes = {**metadata.get("attributes", {}), **(attributes or {})}
    if metadata.get("dimension_names") == list(dims) and wanted_attributes == metadata.get("attributes", {}):
        return False
    metadata["dimension_names"] = list(dims)
    metadata["attributes"] = wanted_attributes
    temporary = metadata_file.with_name(metadata_file.name + ".partial")
    temporary.write_text(json.dumps(metadata, indent=2))
    os.replace(temporary, metadata_file)
    return True


def name_dimensions(path: str | Path) -> list[str]:
    """Give every array of the store at ``path`` (and of its token sets) its dimension names, add the ``view``
    coordinate array when missing; the arrays changed (empty for a store written with them)."""
    path = Path(path)
    group = zarr.open_group(str(path), mode="r")
    attributes = group.attrs.get(schema.ATTRIBUTES_KEY)
    if not isinstance(attributes, dict) or "layout" not in attributes:
        raise StoreError(f"{path} is not a featcache store (no featcache layout attribute in its zarr.json)")
    layout = schema.StoreLayout.from_attributes(attributes["layout"])
    changed = []
    for name in sorted(group.array_keys()):
        if name in schema.DIMENSIONS:
            extra = coordinate_attributes(layout.is_video) if name in _WITH_COORDINATES else None
            if _rewrite(path / name / "zarr.json", schema.DIMENSIONS[name], extra):
                changed.append(name)
    if schema.VIEW not in group:
        writable = zarr.open_group(str(path), mode="r+")
        view = writable.create_array(schema.VIEW, shape=(layout.num_views,), chunks=(max(layout.num_views, 1),), dtype=str,
                                     compressors=small_codecs(), dimension_names=schema.DIMENSIONS[schema.VIEW])
        view[:] = np.array(list(layout.view_names), dtype=object)
        changed.append(schema.VIEW)
    if TOKENS_GROUP in group:
        for token_name, token_group in group[TOKENS_GROUP].groups():  # type: ignore[union-attr]
            if TOKEN_ATTRIBUTES_KEY not in token_group.attrs:
                continue
            for name in sorted(token_group.array_keys()):
                array = token_group[name]
                key = "msf_indices" if name == "indices" and array.ndim == 5 else name
                dims = schema.TOKEN_DIMENSIONS.get(key, tuple(f"{name}_{i}" for i in range(array.ndim)))
                if _rewrite(path / TOKENS_GROUP / token_name / name / "zarr.json", dims, None):
                    changed.append(f"{TOKENS_GROUP}/{token_name}/{name}")
    return changed


__all__ = ["name_dimensions"]
