"""The on-disk layout of a feature store: one zarr v3 group per dataset split x VFM x resolution x views.

Arrays (N samples, V views, feature grid h x w with C channels):

=================  ===========================  ==========  ==================================================
name               shape                        dtype       meaning
=================  ===========================  ==========  ==================================================
features           (N, V, h, w, C)              float16     the VFM's stored output kind (see attrs)
images             (N, V, I, I, 3)              uint8       each view resized to I x I (VQ reconstructs pixels)
masks              (N, V, M, M)                 uint16      instance ids per view at the evaluation size M
                                                            (0 = background, 65535 = ignore); only with masks
view_params        (N, V, 5)                    float32     crop top, left, height, width (source px), flip
source_size        (N, 2)                       int32       source image height, width
instance_classes   (N, K)                       int32       class of instance k+1 at column k, -1 = none
sample_ids         (N,)                         str         dataset sample id
clip_ids           (N,)                         str         clip of each frame (video stores only)
frame_index        (N,)                         int32       frame number within its clip (video stores only)
sample_status      (N,)                         uint8       0 pending, 1 written, 2 bad input (skipped)
units_done         (U,)                         uint8       1 when write unit u is complete (chunk of 1)
view               (V,)                         str         view names (the ``view`` coordinate for xarray)
=================  ===========================  ==========  ==================================================

Every array carries zarr v3 ``dimension_names`` (:data:`DIMENSIONS`) and the per-sample arrays name ``sample_ids``
(and in video stores ``clip_ids``, ``frame_index``) in a CF ``coordinates`` attribute, so ``xarray.open_zarr(store,
consolidated=False)`` opens a store as a Dataset with named dimensions and sample ids / view names as coordinates,
without featcache. Stores written before carry neither; featcache reads them the same, and
:func:`featcache.store.dimensions.name_dimensions` adds the names in place (metadata only).

Per-sample arrays are chunked along N by ``samples_per_chunk`` (S) samples and 1 view, so one write
unit = S consecutive samples = one chunk of every per-sample array: parallel writers never share a
chunk, and a unit is either marked done in ``units_done`` or redone on resume. ``units_done`` exists
because zarr skips empty chunks, so chunk files are no completion signal.

Token sets (``tokens/<name>/``, written by `featcache tokenize`; layout in :mod:`featcache.store.tokens`) hold
``indices`` (N, V, h, w) uint16 for VVO's quantizer and (N, V, G, h, w) for MSF's (attribute ``quantizer: msf``;
G = 2: [shared code, level 0's specified code] at every position), with the codebook(s) the indices point into.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCHEMA_VERSION = 1
#: Key of featcache's attributes in the group's zarr.json.
ATTRIBUTES_KEY = "featcache"

FEATURES = "features"
IMAGES = "images"
MASKS = "masks"
VIEW_PARAMS = "view_params"
SOURCE_SIZE = "source_size"
INSTANCE_CLASSES = "instance_classes"
SAMPLE_IDS = "sample_ids"
CLIP_IDS = "clip_ids"
FRAME_INDEX = "frame_index"
SAMPLE_STATUS = "sample_status"
UNITS_DONE = "units_done"
#: View names, one per view: the ``view`` dimension's coordinate (stores written before it lack it).
VIEW = "view"

#: zarr v3 ``dimension_names`` of every store array. A name means one size within a group (xarray requires it), so the
#: feature grid (y, x), the stored images (image_y, image_x) and the masks (mask_y, mask_x) have their own names.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "features": ("sample", "view", "y", "x", "channel"),
    "images": ("sample", "view", "image_y", "image_x", "rgb"),
    "masks": ("sample", "view", "mask_y", "mask_x"),
    "view_params": ("sample", "view", "view_param"),
    "source_size": ("sample", "source_axis"),
    "instance_classes": ("sample", "instance"),
    "sample_ids": ("sample",),
    "clip_ids": ("sample",),
    "frame_index": ("sample",),
    "sample_status": ("sample",),
    "units_done": ("unit",),
    "view": ("view",),
}
#: The same for the arrays of a token set (``tokens/<name>/``; MSF indices have the extra ``codebook_index`` axis).
TOKEN_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "indices": ("sample", "view", "y", "x"),
    "msf_indices": ("sample", "view", "codebook_index", "y", "x"),
    "squared_errors": ("sample", "view", "y", "x"),
    "units_done": ("unit",),
    "codebook": ("code", "code_channel"),
    "codebook_specified": ("specified_code", "code_channel"),
    "projection_weight": ("projection_out", "projection_in"),
    "projection_bias": ("projection_out",),
}

#: The same for the arrays of a slot set (``slots/<name>/``, written by encode-slots).
SLOT_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "slots": ("sample", "view", "slot", "slot_channel"),
    "attention_masks": ("sample", "view", "slot", "y", "x"),
    "decoder_masks": ("sample", "view", "slot", "y", "x"),
    "units_done": ("unit",),
}

STATUS_PENDING = 0
STATUS_WRITTEN = 1
STATUS_BAD = 2


@dataclass(frozen=True)
class StoreLayout:
    """Shapes and chunking of a store; fixed at creation."""

    num_samples: int
    view_names: tuple[str, ...]
    grid: tuple[int, int]
    channels: int
    image_size: int
    mask_size: int | None
    max_instances: int
    samples_per_chunk: int
    is_video: bool

    @property
    def num_views(self) -> int:
        return len(self.view_names)

    @property
    def num_units(self) -> int:
        return -(-self.num_samples // self.samples_per_chunk)

    def unit_range(self, unit: int) -> tuple[int, int]:
        """Sample index range [start, stop) of write unit ``unit``."""
        start = unit * self.samples_per_chunk
        return start, min(start + self.samples_per_chunk, self.num_samples)

    def to_attributes(self) -> dict[str, Any]:
        """JSON form stored under the store's ``layout`` attribute."""
        data = asdict(self)
        data["view_names"] = list(self.view_names)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_attributes(cls, data: dict[str, Any]) -> "StoreLayout":
        return cls(**{**data, "view_names": tuple(data["view_names"]), "grid": tuple(data["grid"])})


def store_attributes(
    *,
    identity: dict[str, Any],
    config: dict[str, Any],
    layout: "StoreLayout",
    encoder: dict[str, Any],
    weights: dict[str, Any],
    dataset: dict[str, Any],
    views: list[dict[str, Any]],
    compression_level: int,
) -> dict[str, Any]:
    """A new store's attributes (its full provenance), in the one format every store writer uses: extraction and
    the known-answer stores. ``completed`` stays None until the last unit is written."""
    from featcache import records

    return {
        "schema_version": SCHEMA_VERSION,
        **records.provenance(),
        "completed": None,
        "identity": identity,
        "config": config,
        "layout": layout.to_attributes(),
        "encoder": encoder,
        "weights": weights,
        "dataset": dataset,
        "views": views,
        "compression": {"codec": "blosc", "cname": "zstd", "clevel": compression_level, "shuffle": "byte"},
        "bad_samples": {},
    }
