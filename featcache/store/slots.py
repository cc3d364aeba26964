"""Slot sets inside a store: a trained OCL model's slots and masks for every sample, written by `featcache encode-slots`.

Layout of ``slots/<name>/`` (a subgroup of the store beside ``tokens/``; several slot sets coexist):

==================  ======================  ===================  ==============================================
name                shape                   dtype                meaning
==================  ======================  ===================  ==============================================
slots               (N, V, S, D)            float16 | float32    the slots of each encoded view
attention_masks     (N, V, S, h, w)         float16              slot-attention masks (sum to 1 over slots)
decoder_masks       (N, V, S, h, w)         float16              the decoder's masks (mlp/tfd decoders only)
units_done          (U,)                    uint8                completion record, same units as the store
==================  ======================  ===================  ==============================================

V is the number of encoded views (``views`` attribute: the centre view or all views of the store). Chunks follow
the store's write units and carry crc32c checksums, so encoding resumes unit by unit like extraction and tokenizing,
and a damaged chunk reads as a one-line error. The attributes record what the slots were made from (run folder,
run fingerprint, weights sha256, store identity); :meth:`SlotSet.require_current` refuses a set whose run or store
changed since.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from featcache import records
from featcache.errors import StoreError
from featcache.store import integrity, schema
from featcache.store.reader import FeatureStore
from featcache.store.schema import StoreLayout
from featcache.store.tokens import named_sets, pending_units, validate_set_name
from featcache.store.writer import chunk_codecs, integrity_attributes, small_codecs, writable

SLOTS_GROUP = "slots"
SLOT_ATTRIBUTES_KEY = "featcache_slots"
SLOTS = "slots"
ATTENTION_MASKS = "attention_masks"
DECODER_MASKS = "decoder_masks"
SLOT_DTYPES = ("float16", "float32")


def validate_slot_name(name: str) -> str:
    return validate_set_name(name, "slot set", "tfd-s7")


def slot_group_path(name: str) -> str:
    return f"{SLOTS_GROUP}/{validate_slot_name(name)}"


def slot_names(group: zarr.Group) -> list[str]:
    """Names of the slot sets of a store's root group (a half-created group without attributes is not one)."""
    return named_sets(group, SLOTS_GROUP, SLOT_ATTRIBUTES_KEY)


def slot_arrays(attributes: dict[str, Any]) -> list[str]:
    """The arrays a slot set holds."""
    return [SLOTS, ATTENTION_MASKS, *([DECODER_MASKS] if attributes.get("decoder_masks") else []), schema.UNITS_DONE]


def is_half_created_slot_set(store: Path, name: str) -> bool:
    root = zarr.open_group(str(store), mode="r")
    path = slot_group_path(name)
    return path in root and SLOT_ATTRIBUTES_KEY not in root[path].attrs


def delete_slot_set(store: Path, name: str) -> None:
    root = zarr.open_group(str(store), mode="r+")
    del root[slot_group_path(name)]


def create_slot_set(
    store: Path, name: str, layout: StoreLayout, views: int, num_slots: int, slot_dim: int, dtype: str, decoder_masks: bool,
    attributes: dict[str, Any],
) -> None:
    """Create ``slots/<name>``; attributes are written last (a group without them is an interrupted creation, removed
    and created again here). The caller holds the slot set's lock."""
    if dtype not in SLOT_DTYPES:
        raise StoreError(f"slot dtype {dtype!r} is not supported; expected one of {', '.join(SLOT_DTYPES)}")
    if is_half_created_slot_set(store, name):
        delete_slot_set(store, name)
    root = zarr.open_group(str(store), mode="r+")
    path = slot_group_path(name)
    if path in root:
        raise StoreError(f"slot set {name!r} already exists in {store}")
    group = root.require_group(SLOTS_GROUP).create_group(name)
    height, width = layout.grid
    count, per_chunk = layout.num_samples, layout.samples_per_chunk
    compressors = chunk_codecs(1)  # crc32c checksums (featcache.store.integrity)
    dims = schema.SLOT_DIMENSIONS  # zarr v3 dimension names, for xarray.open_zarr(store, group="slots/<name>")
    group.create_array(SLOTS, shape=(count, views, num_slots, slot_dim), chunks=(per_chunk, 1, num_slots, slot_dim), dtype=dtype,
                       compressors=compressors, fill_value=0, dimension_names=dims[SLOTS])
    mask_shape, mask_chunks = (count, views, num_slots, height, width), (per_chunk, 1, num_slots, height, width)
    for array in (ATTENTION_MASKS, *([DECODER_MASKS] if decoder_masks else [])):
        group.create_array(array, shape=mask_shape, chunks=mask_chunks, dtype="float16", compressors=compressors, fill_value=0,
                           dimension_names=dims[array])
    group.create_array(schema.UNITS_DONE, shape=(layout.num_units,), chunks=(1,), dtype="uint8", fill_value=0, compressors=small_codecs(),
                       dimension_names=dims[schema.UNITS_DONE])
    group.attrs[SLOT_ATTRIBUTES_KEY] = {**attributes, "decoder_masks": decoder_masks, "integrity": integrity_attributes()}


def write_slot_unit(
    store: Path, name: str, start: int, unit: int, slots: np.ndarray, attention_masks: np.ndarray, decoder_masks: np.ndarray | None
) -> None:
    """Write one unit: slots (n, V, S, D), masks (n, V, S, h, w); then mark the unit done."""
    group = zarr.open_group(str(store), mode="r+")[slot_group_path(name)]
    region = slice(start, start + slots.shape[0])
    array = writable(group, SLOTS)
    array[region] = slots.astype(array.dtype)
    writable(group, ATTENTION_MASKS)[region] = attention_masks.astype(np.float16)
    if decoder_masks is not None:
        writable(group, DECODER_MASKS)[region] = decoder_masks.astype(np.float16)
    group[schema.UNITS_DONE][unit] = 1


def pending_slot_units(store: Path, name: str) -> list[int]:
    return pending_units(store, slot_group_path(name))


def finish_slot_set(store: Path, name: str, completed: str) -> None:
    group = zarr.open_group(str(store), mode="r+")[slot_group_path(name)]
    attributes = dict(group.attrs[SLOT_ATTRIBUTES_KEY])
    attributes["completed"] = completed
    attributes[integrity.FINGERPRINT_KEY] = integrity.attributes_record(attributes, integrity.token_defining_keys(attributes))
    group.attrs[SLOT_ATTRIBUTES_KEY] = attributes


def run_weights_sha256(run_dir: Path) -> str | None:
    """The weights sha256 a run folder records now (run.json), or None when the folder or record is gone."""
    record = Path(run_dir) / "run.json"
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text()).get("weights_sha256")
    except (OSError, json.JSONDecodeError):
        return None


class SlotSet:
    """Read-only view of one slot set of a :class:`FeatureStore`."""

    def __init__(self, store: FeatureStore, name: str) -> None:
        validate_slot_name(name)
        if name not in slot_names(store.group):
            known = ", ".join(slot_names(store.group)) or "none"
            raise StoreError(f"store {store.path} has no slot set {name!r}; slot sets: {known} (write one with `featcache encode-slots`)")
        self.store = store
        self.name = name
        self.path = slot_group_path(name)
        self.group = store.group[self.path]

    @property
    def attributes(self) -> dict[str, Any]:
        return dict(self.group.attrs[SLOT_ATTRIBUTES_KEY])

    @property
    def views(self) -> list[str]:
        return list(self.attributes["views"])

    @property
    def num_slots(self) -> int:
        return int(self.group[SLOTS].shape[2])

    @property
    def has_decoder_masks(self) -> bool:
        return bool(self.attributes.get("decoder_masks"))

    def completeness(self) -> tuple[int, int]:
        done = self.group[schema.UNITS_DONE][:]
        return int(done.sum()), int(done.shape[0])

    def missing_arrays(self) -> list[str]:
        return integrity.missing_arrays(self.store.group, slot_arrays(self.attributes), prefix=f"{self.path}/")

    def require_current(self) -> None:
        """A slot set that downstream stages read: complete, made from this store, by a run whose weights did not
        change since (when the run folder is still there); otherwise one line saying how to rewrite it."""
        again = f"run `featcache encode-slots {self.attributes['run']['path']} --store {self.store.path} --name {self.name} --overwrite`"
        missing = self.missing_arrays()
        if missing:
            raise StoreError(f"store {self.store.path}: slot set {self.name!r}: array {missing[0]!r} is missing; {again}")
        changed = integrity.changed_attributes(self.attributes)
        if changed:
            raise StoreError(f"store {self.store.path}: slot set {self.name!r}: attributes edited since it was completed: {'; '.join(changed)}; {again}")
        done, total = self.completeness()
        if done < total:
            raise StoreError(f"slot set {self.name!r} of {self.store.path} is incomplete ({done}/{total} units); re-run `featcache encode-slots`")
        recorded = self.attributes["store"]["identity_sha256"]
        if records.fingerprint(self.store.attributes["identity"]) != recorded:
            raise StoreError(f"slot set {self.name!r} of {self.store.path} was made from another store (identity {recorded[:12]}); {again}")
        run = self.attributes["run"]
        now = run_weights_sha256(Path(run["path"]))
        if now is not None and now != run["weights_sha256"]:
            raise StoreError(
                f"slot set {self.name!r} of {self.store.path} was made by run {run['path']} with weights {run['weights_sha256'][:12]}, "
                f"which now holds weights {now[:12]}; {again}"
            )

    def view_index(self, view: str) -> int:
        if view not in self.views:
            raise StoreError(f"slot set {self.name!r} of {self.store.path} has no view {view!r}; encoded views: {', '.join(self.views)}")
        return self.views.index(view)

    def _read(self, array: str, indices: Sequence[int] | np.ndarray | slice, view: str | None) -> np.ndarray:
        data = self.store._read(f"{self.path}/{array}", indices, None, per_view=False)  # (B, V, ...)
        return data if view is None else data[:, self.view_index(view)]

    def slots(self, indices: Sequence[int] | np.ndarray | slice, view: str | None = "center") -> np.ndarray:
        """Slots (B, S, D) of one view, or (B, V, S, D) for ``view=None``, float32."""
        return self._read(SLOTS, indices, view).astype(np.float32)

    def attention_masks(self, indices: Sequence[int] | np.ndarray | slice, view: str | None = "center") -> np.ndarray:
        """Slot-attention masks (B, S, h, w) or (B, V, S, h, w), float32."""
        return self._read(ATTENTION_MASKS, indices, view).astype(np.float32)

    def decoder_masks(self, indices: Sequence[int] | np.ndarray | slice, view: str | None = "center") -> np.ndarray:
        """The decoder's masks (B, S, h, w) or (B, V, S, h, w), float32; only for mlp/tfd decoders."""
        if not self.has_decoder_masks:
            raise StoreError(f"slot set {self.name!r} of {self.store.path} has no decoder masks (its decoder returns none)")
        return self._read(DECODER_MASKS, indices, view).astype(np.float32)

    def masks(self, indices: Sequence[int] | np.ndarray | slice, view: str | None = "center") -> np.ndarray:
        """The masks the run evaluates with (its ``mask_source``): decoder masks where recorded so, else attention."""
        use_decoder = self.attributes.get("mask_source") == "decoder" and self.has_decoder_masks
        return self.decoder_masks(indices, view) if use_decoder else self.attention_masks(indices, view)


def slot_sets(store: FeatureStore) -> list[dict[str, Any]]:
    """Every slot set with its completeness, for `featcache info`."""
    entries = []
    for name in slot_names(store.group):
        slot_set = SlotSet(store, name)
        attributes = slot_set.attributes
        done, total = slot_set.completeness()
        entries.append({
            "name": name,
            "run": attributes["run"]["path"],
            "views": attributes["views"],
            "num_slots": attributes["num_slots"],
            "slot_dim": attributes["slot_dim"],
            "dtype": attributes["dtype"],
            "decoder_masks": bool(attributes.get("decoder_masks")),
            "units_done": done,
            "units_total": total,
            "complete": bool(attributes.get("completed")) and done == total,
        })
    return entries


__all__ = [
    "SLOTS_GROUP",
    "SlotSet",
    "create_slot_set",
    "delete_slot_set",
    "finish_slot_set",
    "pending_slot_units",
    "slot_group_path",
    "slot_names",
    "slot_sets",
    "validate_slot_name",
    "write_slot_unit",
]
