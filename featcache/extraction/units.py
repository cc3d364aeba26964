"""Work on one write unit: decode its samples into views, run the frozen VFM, assemble the unit's arrays.

The same functions serve the single-process pipeline (which overlaps them in threads) and dask workers
(which run them in sequence), so both write identical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from featcache.datasets import Dataset
from featcache.encoders.base import FrozenEncoder
from featcache.errors import DatasetError
from featcache.extraction.config import ExtractConfig
from featcache.runtime import autocast
from featcache.store import schema
from featcache.store.schema import StoreLayout
from featcache.store.writer import UnitArrays
from featcache.views import ViewSpec, crop_params, resize_crop_image, resize_crop_mask


@dataclass
class PreparedSample:
    """One sample cut into its views; ``error`` is set instead when the input was bad and skipped."""

    index: int
    sample_id: str
    model_inputs: np.ndarray | None = None  # (V, R, R, 3) uint8
    images: np.ndarray | None = None  # (V, I, I, 3) uint8
    masks: np.ndarray | None = None  # (V, M, M) uint16
    view_params: np.ndarray | None = None  # (V, 5) float32
    source_size: tuple[int, int] = (0, 0)
    instance_classes: list[int] | None = None
    error: str | None = None


def prepare_sample(
    dataset: Dataset,
    index: int,
    sample_id: str,
    views: list[ViewSpec],
    config: ExtractConfig,
    resolution: int,
    skip_bad: bool,
    only_view: int | None = None,
) -> PreparedSample:
    """Decode sample ``index`` and cut every view (or only view ``only_view``); bad input raises, or is
    recorded with ``skip_bad``."""
    try:
        sample = dataset.load(index)
        if dataset.has_masks and sample.instance_mask is None:
            raise DatasetError(f"sample {sample_id!r} of {dataset.source()} has no instance mask")
    except DatasetError as error:
        if not skip_bad:
            raise
        return PreparedSample(index=index, sample_id=sample_id, error=str(error))
    height, width = sample.image.shape[:2]
    model_inputs, images, masks, params = [], [], [], []
    # Views that share a crop box (the centre crop and its flip) are resized once and mirrored.
    resized: dict[tuple[float, float, float, float], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
    for view_index, view in enumerate(views):
        if only_view is not None and view_index != only_view:
            continue
        crop = crop_params(view, height, width, config.view_seed, index, view_index)
        box = (crop.top, crop.left, crop.height, crop.width)
        if box not in resized:
            unflipped = replace(crop, flip=False)
            resized[box] = (
                resize_crop_image(sample.image, unflipped, resolution),
                resize_crop_image(sample.image, unflipped, config.image_size) if config.image_size > 0 else None,
                resize_crop_mask(sample.instance_mask, unflipped, config.mask_size) if sample.instance_mask is not None else None,
            )
        model_input, image, mask = resized[box]
        if crop.flip:  # (rows, columns, ...) -> mirror the columns
            model_input = model_input[:, ::-1]
            image = image[:, ::-1] if image is not None else None
            mask = mask[:, ::-1] if mask is not None else None
        model_inputs.append(model_input)
        if image is not None:
            images.append(image)
        if mask is not None:
            masks.append(mask)
        params.append(crop.as_array())
    return PreparedSample(
        index=index,
        sample_id=sample_id,
        model_inputs=np.stack(model_inputs),
        images=np.stack(images) if images else None,
        masks=np.stack(masks) if masks else None,
        view_params=np.stack(params),
        source_size=(height, width),
        instance_classes=list(sample.instance_classes),
    )


class FeatureComputer:
    """Runs the frozen encoder on uint8 view batches: normalisation on the device, autocast on CUDA."""

    def __init__(self, encoder: FrozenEncoder, device: torch.device, batch_size: int) -> None:
        self.encoder = encoder.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        spec = encoder.spec
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255.0

    @torch.inference_mode()
    def compute(self, views: np.ndarray) -> torch.Tensor:
        """(B, R, R, 3) uint8 -> (B, h, w, C) float32 on the device, in batches of ``batch_size``."""
        outputs = []
        for start in range(0, views.shape[0], self.batch_size):
            batch = torch.from_numpy(views[start : start + self.batch_size])
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            # (B, R, R, 3) uint8 -> (B, 3, R, R) normalised float32
            pixels = (batch.permute(0, 3, 1, 2).float() - self.mean) / self.std
            with autocast(self.device):
                features = self.encoder(pixels)
            outputs.append(features.float())
        return torch.cat(outputs)

    def __call__(self, views: np.ndarray) -> np.ndarray:
        """(B, R, R, 3) uint8 -> (B, h, w, C) float16 numpy: what the store keeps."""
        if views.shape[0] == 0:
            return np.zeros((0,), np.float16)
        return self.compute(views).to(torch.float16).cpu().numpy()


def assemble_unit(
    unit: int,
    layout: StoreLayout,
    prepared: list[PreparedSample],
    computer: FeatureComputer,
) -> UnitArrays:
    """Forward the unit's good samples and pack every per-sample array of the unit."""
    start, stop = layout.unit_range(unit)
    count, views = stop - start, layout.num_views
    height, width = layout.grid
    features = np.zeros((count, views, height, width, layout.channels), np.float16)
    images = np.zeros((count, views, layout.image_size, layout.image_size, 3), np.uint8) if layout.image_size else None
    masks = np.zeros((count, views, layout.mask_size, layout.mask_size), np.uint16) if layout.mask_size else None
    view_params = np.zeros((count, views, 5), np.float32)
    source_size = np.zeros((count, 2), np.int32)
    classes = np.full((count, layout.max_instances), -1, np.int32)
    status = np.full((count,), schema.STATUS_BAD, np.uint8)
    bad: dict[str, str] = {}
    good = [p for p in prepared if p.error is None]
    good_rows = {id(p): position for position, p in enumerate(good)}
    if good:
        # (G, V, R, R, 3) -> (G * V, R, R, 3): every view of every good sample in one stream of batches.
        stacked = np.concatenate([p.model_inputs for p in good])  # type: ignore[misc]
        computed = computer(stacked).reshape(len(good), views, height, width, layout.channels)
    for sample in prepared:
        row = sample.index - start
        if sample.error is not None:
            bad[sample.sample_id] = sample.error
            continue
        features[row] = computed[good_rows[id(sample)]]
        if images is not None:
            images[row] = sample.images
        if masks is not None and sample.masks is not None:
            masks[row] = sample.masks
        view_params[row] = sample.view_params
        source_size[row] = sample.source_size
        instance_classes = sample.instance_classes or []
        if len(instance_classes) > layout.max_instances:
            raise DatasetError(
                f"sample {sample.sample_id!r} has {len(instance_classes)} instances; the store holds at most "
                f"{layout.max_instances} (the dataset adapter's max_instances)"
            )
        classes[row, : len(instance_classes)] = instance_classes
        status[row] = schema.STATUS_WRITTEN
    return UnitArrays(
        unit=unit,
        start=start,
        features=features,
        images=images,
        masks=masks,
        view_params=view_params,
        source_size=source_size,
        instance_classes=classes,
        status=status,
        bad=bad,
    )
