"""The typed read API that every later stage uses.

Reads are chunk-aware: a request for arbitrary sample indices reads each touched chunk once (zarr pays a
fixed cost of milliseconds per chunk call on this machine, see benchmarks/RESULTS.md); a slice of one
write unit is one chunk read per view, which is how the training loader streams a store.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from featcache.console import RandomWeightsWarning
from featcache.errors import StoreError
from featcache.store import integrity, schema
from featcache.store.schema import StoreLayout
from featcache.store.tokens import CODEBOOK, INDICES, MSF_TOKEN_ARRAYS, SQUARED_ERRORS, TOKEN_ATTRIBUTES_KEY, token_group_path
from featcache.store.tokens import token_names as list_token_names
from featcache.store.writer import directory_bytes

ViewSelection = int | str | Sequence[int] | None

#: Stores already warned about in this process: each command warns once per random-weights store it reads.
_WARNED_RANDOM: set[Path] = set()


@dataclass(frozen=True)
class Completeness:
    units_done: int
    units_total: int
    samples_written: int
    samples_bad: int
    samples_total: int

    @property
    def complete(self) -> bool:
        return self.units_done == self.units_total


def read_attributes(path: Path) -> dict[str, Any]:
    """featcache's attributes of the store at ``path``, with one-line errors for missing/foreign/newer stores."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as error:  # zarr raises several types for "not a group"
        raise StoreError(f"{path} is not a zarr group ({type(error).__name__}: {error})") from None
    attributes = group.attrs.get(schema.ATTRIBUTES_KEY)
    if not isinstance(attributes, dict):
        raise StoreError(f"{path} is a zarr group but not a featcache store (no '{schema.ATTRIBUTES_KEY}' attributes)")
    version = attributes.get("schema_version")
    if not isinstance(version, int) or version > schema.SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}; this featcache reads up to {schema.SCHEMA_VERSION}: upgrade featcache"
        )
    return attributes


def group_by_clip(clip_ids: Sequence[str], frame_indices: Sequence[int] | np.ndarray, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Clip id -> the ``indices`` of its frames (int64) sorted by frame index; clips in order of first appearance.

    ``clip_ids`` / ``frame_indices`` are per store sample; ``indices`` select the samples to group (a limited or
    filtered evaluation may hold only some frames of a clip; those are kept in frame order).
    """
    frames = np.asarray(frame_indices)
    grouped: dict[str, list[int]] = {}
    for index in np.asarray(indices, dtype=np.int64):
        grouped.setdefault(str(clip_ids[int(index)]), []).append(int(index))
    return {
        clip: np.array(sorted(members, key=lambda index: (int(frames[index]), index)), dtype=np.int64)
        for clip, members in grouped.items()
    }


class FeatureStore:
    """Read-only view of a feature store.

    ``warn_random`` (default True) emits a RandomWeightsWarning when the features come from random weights
    (once per store and process, i.e. once per command), so no command silently reports results of an
    untrained encoder.
    """

    def __init__(self, path: str | Path, warn_random: bool = True) -> None:
        self.path = Path(path)
        self.attributes = read_attributes(self.path)
        self.group = zarr.open_group(str(self.path), mode="r")
        if warn_random and self.weights_are_random and self.path.resolve() not in _WARNED_RANDOM:
            _WARNED_RANDOM.add(self.path.resolve())
            weights = self.attributes["weights"]
            warnings.warn(
                f"store {self.path} holds features of RANDOMLY INITIALISED {self.attributes['encoder']['name']} weights "
                f"({weights['location']}); results from it say nothing about the pretrained model",
                RandomWeightsWarning,
                stacklevel=2,
            )

    # ----------------------------------------------------------------- description
    @cached_property
    def layout(self) -> StoreLayout:
        return StoreLayout.from_attributes(self.attributes["layout"])

    @property
    def weights_are_random(self) -> bool:
        return self.attributes["weights"]["source"] == "random"

    @property
    def num_samples(self) -> int:
        return self.layout.num_samples

    def __len__(self) -> int:
        return self.layout.num_samples

    @property
    def view_names(self) -> tuple[str, ...]:
        return self.layout.view_names

    @property
    def stored_kind(self) -> str:
        return self.attributes["encoder"]["stored_kind"]

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        """Kinds :meth:`features` can return: the stored one plus those derivable from it."""
        return (self.stored_kind, *self.attributes["encoder"]["derivable_kinds"])

    @cached_property
    def sample_ids(self) -> list[str]:
        return [str(s) for s in self._whole(schema.SAMPLE_IDS)]

    @cached_property
    def clip_ids(self) -> list[str] | None:
        return [str(c) for c in self._whole(schema.CLIP_IDS)] if self.layout.is_video else None

    @cached_property
    def frame_indices(self) -> np.ndarray | None:
        return self._whole(schema.FRAME_INDEX) if self.layout.is_video else None

    def clips(self, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Store indices of each clip in frame order (of ``indices``, default every written sample); see :func:`group_by_clip`."""
        if self.clip_ids is None or self.frame_indices is None:
            raise StoreError(f"store {self.path} is not a video store (no clip_ids): its samples form no clips")
        return group_by_clip(self.clip_ids, self.frame_indices, self.valid_indices() if indices is None else indices)

    @property
    def has_masks(self) -> bool:
        return self.layout.mask_size is not None

    def completeness(self, done: np.ndarray | None = None) -> Completeness:
        """Units done and samples written (``done``: the completion record when the caller has read it already)."""
        done = self._whole(schema.UNITS_DONE) if done is None else done
        status = self._whole(schema.SAMPLE_STATUS)
        return Completeness(
            units_done=int(done.sum()),
            units_total=int(done.shape[0]),
            samples_written=int((status == schema.STATUS_WRITTEN).sum()),
            samples_bad=int((status == schema.STATUS_BAD).sum()),
            samples_total=int(status.shape[0]),
        )

    def require_complete(self) -> None:
        """Stages that read the whole split call this: a half-extracted store would bias every result. Also runs the
        cheap integrity checks (:meth:`require_intact`)."""
        done = self._whole(schema.UNITS_DONE)  # read once: a chunk call per unit
        state = self.completeness(done)
        if not state.complete:
            raise StoreError(
                f"store {self.path} is incomplete ({state.units_done}/{state.units_total} units); "
                "re-run `featcache extract` with the same arguments to finish it"
            )
        self.require_intact(done)

    # ----------------------------------------------------------------- integrity (featcache.store.integrity)
    @property
    def chunk_checksums(self) -> str | None:
        """``crc32c`` when the store's chunks carry checksums (stores written before issue 14 do not)."""
        return self.attributes.get("integrity", {}).get("chunk_checksums")

    def changed_attributes(self) -> list[str] | None:
        """Defining attributes edited since completion (see :func:`integrity.changed_attributes`)."""
        return integrity.changed_attributes(self.attributes)

    def missing_chunks(self, done: np.ndarray | None = None) -> list[integrity.ChunkRef]:
        """Chunks the completion record (``done``, read here when None) says were written but whose files are absent
        (a listing: no chunk is read)."""
        expected = integrity.expected_store_chunks(self.group, self.attributes, done)
        return integrity.missing_chunks(self.path, expected, self.view_names, self.num_samples)

    def missing_token_chunks(self, name: str) -> list[integrity.ChunkRef]:
        expected = integrity.expected_token_chunks(self.group[self._token_path(name)], name)  # type: ignore[arg-type]
        return integrity.missing_chunks(self.path, expected, self.view_names, self.num_samples)

    def require_intact(self, done: np.ndarray | None = None) -> None:
        """The cheap checks, done whenever a store is opened for training, evaluation or tokenizing: the attributes
        that define the store are those recorded at completion, and every chunk of every written unit exists."""
        changed = self.changed_attributes()
        if changed:
            raise StoreError(
                f"store {self.path}: attributes edited since completion: {'; '.join(changed)}; the features were not "
                "made with these values: restore them or extract again"
            )
        self._raise_missing_arrays(self.missing_arrays())
        self._raise_missing(self.missing_chunks(done))

    def missing_arrays(self) -> list[str]:
        """Arrays the store's layout says it holds whose metadata is gone (a deleted ``zarr.json`` or folder)."""
        return integrity.missing_arrays(self.group, integrity.expected_arrays(self.layout))

    def missing_token_arrays(self, name: str) -> list[str]:
        return integrity.missing_arrays(self.group, list(integrity.TOKEN_ARRAYS), prefix=f"{self._token_path(name)}/")

    def _raise_missing_arrays(self, missing: list[str]) -> None:
        if missing:
            raise StoreError(
                f"store {self.path}: array {missing[0]!r} is missing (its zarr.json is gone){f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                f"the store is damaged: `featcache verify {self.path}` lists every problem; extract it again"
            )

    def require_token_set(self, name: str) -> None:
        """A token set that training reads: complete, and every chunk of it on disk."""
        self._raise_missing_arrays(self.missing_token_arrays(name))
        changed = integrity.changed_attributes(self.token_attributes(name))
        if changed:
            raise StoreError(
                f"store {self.path}: token set {name!r}: attributes edited since it was completed: {'; '.join(changed)}; "
                "run `featcache tokenize --overwrite` again"
            )
        done, total = self.token_completeness(name)
        if done != total:
            raise StoreError(f"token set {name!r} of {self.path} is incomplete ({done}/{total} units); re-run `featcache tokenize`")
        self._raise_missing(self.missing_token_chunks(name))

    def _raise_missing(self, missing: list[integrity.ChunkRef]) -> None:
        if missing:
            more = f" (and {len(missing) - 1} more chunks)" if len(missing) > 1 else ""
            raise StoreError(
                f"store {self.path}: {missing[0].describe()} is missing on disk{more}; the store is damaged: "
                f"`featcache verify {self.path}` lists every problem; extract it again"
            )

    def _whole(self, name: str) -> np.ndarray:
        """All of a small array, read through the damage check."""
        array = self.group[name]
        return self._decode(name, array, lambda: array[:], None, None)  # type: ignore[index]

    def _decode(self, name: str, array: Any, read: Any, chunk_rows: Any, chunk_views: Any) -> np.ndarray:
        """``read()``, turning a chunk that fails to decode (blosc, crc32c) into a one-line error naming it."""
        try:
            return read()
        except Exception as error:  # decoding errors have many types (see integrity.read_chunk); others are re-raised
            for coords in integrity.chunk_coords(array, chunk_rows, chunk_views):
                failure = integrity.read_chunk(array, coords)
                if failure is not None:
                    chunk = integrity.chunk_ref(array, name, coords, self.view_names, self.num_samples)
                    raise StoreError(
                        f"store {self.path}: {chunk.describe()} is damaged ({integrity.damage_reason(failure)}); "
                        f"`featcache verify {self.path}` lists every problem; extract it again"
                    ) from None
            raise error

    def bytes_on_disk(self) -> dict[str, int]:
        """Bytes on disk per array directory plus ``total``."""
        sizes = {name: directory_bytes(self.path / name) for name in sorted(self.group.array_keys())}
        sizes["total"] = directory_bytes(self.path)
        return sizes

    def valid_indices(self) -> np.ndarray:
        """Indices of samples that were written (excludes pending and bad samples)."""
        return np.flatnonzero(self._whole(schema.SAMPLE_STATUS) == schema.STATUS_WRITTEN)

    # ----------------------------------------------------------------- reading
    def _view_indices(self, view: ViewSelection) -> list[int] | int:
        if view is None:
            return list(range(self.layout.num_views))
        if isinstance(view, str):
            if view not in self.view_names:
                raise StoreError(f"store {self.path} has no view {view!r}; views: {', '.join(self.view_names)}")
            return self.view_names.index(view)
        if isinstance(view, (int, np.integer)):
            if not 0 <= int(view) < self.layout.num_views:
                raise StoreError(f"view index {view} out of range for store {self.path} with {self.layout.num_views} views")
            return int(view)
        return [int(self._view_indices(int(v))) for v in view]  # type: ignore[arg-type]

    def _read(self, name: str, indices: Sequence[int] | np.ndarray | slice, view: ViewSelection, per_view: bool = True) -> np.ndarray:
        """Read rows ``indices`` (any order, repeats allowed) touching each chunk once."""
        if name not in self.group:
            raise StoreError(f"store {self.path} has no array {name!r}")
        array = self.group[name]
        if isinstance(indices, slice):
            rows: Any = indices
            inverse = None
        else:
            requested = np.asarray(indices, dtype=np.int64)
            if requested.size and (requested.min() < 0 or requested.max() >= self.num_samples):
                raise StoreError(f"sample index out of range 0..{self.num_samples - 1} for store {self.path}")
            rows, inverse = np.unique(requested, return_inverse=True)
        if per_view:
            view_index = self._view_indices(view)
            selection = (rows, view_index)
        else:
            selection = (rows,)
        data = self._decode(name, array, lambda: array.oindex[selection] if not isinstance(rows, slice) else array[selection],
                            self._chunks_of(array, rows), self._view_chunks(selection))
        return data if inverse is None else data[inverse]

    def _chunks_of(self, array: Any, rows: Any) -> list[int]:
        """First-axis chunk indices that the row selection touches."""
        size = array.chunks[0]
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.num_samples)
            return list(range(start // size, -(-stop // size)))
        return sorted({int(row) // size for row in np.asarray(rows).ravel()})

    @staticmethod
    def _view_chunks(selection: tuple[Any, ...]) -> list[int] | None:
        if len(selection) < 2:
            return None
        views = selection[1]
        return [int(views)] if isinstance(views, (int, np.integer)) else sorted({int(v) for v in views})

    def features(
        self, indices: Sequence[int] | np.ndarray | slice, view: ViewSelection = 0, kind: str | None = None
    ) -> np.ndarray:
        """Patch features (B, h, w, C) for one view or (B, V, h, w, C) for several.

        ``kind=None`` returns the stored kind as float16; a derivable kind (``final_norm``) is computed in float32.
        """
        data = self._read(schema.FEATURES, indices, view)
        if kind is None or kind == self.stored_kind:
            return data
        if kind not in self.feature_kinds:
            raise StoreError(f"store {self.path} cannot give feature kind {kind!r}; available: {', '.join(self.feature_kinds)}")
        return self.derive(data, kind)

    def derive(self, stored: np.ndarray, kind: str) -> np.ndarray:
        """Turn stored features into a derivable kind (the final LayerNorm for DINOv2)."""
        from featcache.encoders.dinov2 import apply_final_norm

        return apply_final_norm(stored, self.attributes["encoder"]["final_norm"])

    @property
    def has_images(self) -> bool:
        return schema.IMAGES in self.group

    def images(self, indices: Sequence[int] | np.ndarray | slice, view: ViewSelection = 0) -> np.ndarray:
        """Cached view images (B, I, I, 3) or (B, V, I, I, 3), uint8."""
        if not self.has_images:
            raise StoreError(f"store {self.path} has no images (extracted with image_size 0)")
        return self._read(schema.IMAGES, indices, view)

    def masks(self, indices: Sequence[int] | np.ndarray | slice, view: ViewSelection = 0) -> np.ndarray:
        """Instance masks at the evaluation size (B, M, M) or (B, V, M, M), uint16."""
        if not self.has_masks:
            raise StoreError(f"store {self.path} has no masks: its dataset had none")
        return self._read(schema.MASKS, indices, view)

    def view_params(self, indices: Sequence[int] | np.ndarray | slice, view: ViewSelection = None) -> np.ndarray:
        return self._read(schema.VIEW_PARAMS, indices, view)

    def instance_classes(self, indices: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        return self._read(schema.INSTANCE_CLASSES, indices, None, per_view=False)

    def sample_status(self) -> np.ndarray:
        return self._whole(schema.SAMPLE_STATUS)

    # ----------------------------------------------------------------- tokens
    def token_names(self) -> list[str]:
        """Names of the token sets written by `featcache tokenize`."""
        return list_token_names(self.group)

    def _token_path(self, name: str) -> str:
        path = token_group_path(name)
        if name not in self.token_names():
            known = ", ".join(self.token_names()) or "none"
            raise StoreError(f"store {self.path} has no token set {name!r}; token sets: {known}")
        return path

    def token_attributes(self, name: str) -> dict[str, Any]:
        return dict(self.group[self._token_path(name)].attrs[TOKEN_ATTRIBUTES_KEY])

    def token_completeness(self, name: str) -> tuple[int, int]:
        done = self._whole(f"{self._token_path(name)}/{schema.UNITS_DONE}")
        return int(done.sum()), int(done.shape[0])

    def tokens(self, name: str, indices: Sequence[int] | np.ndarray | slice, view: ViewSelection = 0) -> np.ndarray:
        """Token indices (B, h, w) or (B, V, h, w), uint16; MSF token sets (B, G, h, w) or (B, V, G, h, w)."""
        return self._read(f"{self._token_path(name)}/{INDICES}", indices, view)

    def token_errors(self, name: str, indices: Sequence[int] | np.ndarray | slice, view: ViewSelection = 0) -> np.ndarray:
        """Squared L2 distance between each patch's encoding and its code, (B, h, w) or (B, V, h, w), float32."""
        return self._read(f"{self._token_path(name)}/{SQUARED_ERRORS}", indices, view).astype(np.float32)

    def codebook(self, name: str) -> np.ndarray:
        """The projected codebook (K, D) float32 that token indices point into."""
        return self._whole(f"{self._token_path(name)}/{CODEBOOK}")

    def token_arrays(self, name: str) -> dict[str, np.ndarray]:
        """MSF token sets' further small arrays (``codebook_specified``, ``projection_weight``, ``projection_bias``)
        that exist, by name (empty for VVO token sets)."""
        path = self._token_path(name)
        return {key: self._whole(f"{path}/{key}") for key in MSF_TOKEN_ARRAYS if f"{path}/{key}" in self.group}

    def load_features(self, view: ViewSelection = None) -> np.ndarray:
        """All features in RAM, (N, V, h, w, C) float16 (or one view): for stages whose data fit in memory."""
        return self._read(schema.FEATURES, slice(0, self.num_samples), view)
