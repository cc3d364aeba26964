"""`featcache eval`: object-discovery metrics of a trained OCL run on a store, with the protocol made explicit.

Predicted masks (slot-attention maps or decoder alphas on the patch grid) are upsampled bilinearly to the
store's mask resolution, arg-maxed over slots and compared with the cached instance masks: ARI, FG-ARI,
mBO and mIoU (Hungarian). Ignore pixels (VOC boundaries, overlapping COCO instances) drop out of every
metric. Video stores additionally pool ARI over all frames of a clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.table import Table

from featcache.console import console, progress_bar
from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError, StoreError
from featcache.metrics import adjusted_rand_index, mean_skipping_nan, object_discovery_metrics
from featcache.store import FeatureStore


@dataclass(frozen=True)
class Protocol:
    """How masks are compared; recorded with every result because published numbers differ in these."""

    name: str
    #: mBO / mIoU count the background as a ground-truth segment (VVO) or not (DINOSAUR, SPOT).
    count_background: bool
    #: Pixels with this ground-truth value drop out of every metric (boundaries, overlaps).
    ignore_label: int = IGNORE_LABEL
    #: Patch-grid masks are upsampled bilinearly to the store's mask size, then arg-maxed over slots.
    upsampling: str = "bilinear"


PROTOCOLS = {
    "vvo": Protocol("vvo", count_background=True),
    "dinosaur": Protocol("dinosaur", count_background=False),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise FeatcacheError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def labels_from_patch_masks(masks: torch.Tensor, size: int) -> np.ndarray:
    """(B, S, h, w) soft masks -> (B, size, size) int64 slot labels (bilinear upsampling, argmax over slots)."""
    upsampled = F.interpolate(masks.float(), size=(size, size), mode="bilinear", align_corners=False)  # (B, S, M, M)
    return upsampled.argmax(dim=1).cpu().numpy()


@dataclass
class MaskMetrics:
    """Per-image metric arrays of one pass over a store (nan where a metric is undefined for an image)."""

    ari: np.ndarray
    fg_ari: np.ndarray
    mbo: np.ndarray
    miou: np.ndarray
    clip_ari: dict[str, float]

    def summary(self) -> dict[str, float]:
        result = {
            "ari": mean_skipping_nan(self.ari),
            "fg_ari": mean_skipping_nan(self.fg_ari),
            "mbo": mean_skipping_nan(self.mbo),
            "miou": mean_skipping_nan(self.miou),
            "images": int(len(self.ari)),
        }
        if self.clip_ari:
            result["clip_ari"] = mean_skipping_nan(np.array(list(self.clip_ari.values())))
            result["clips"] = len(self.clip_ari)
        return result


def score_masks(true_labels: np.ndarray, predicted_labels: np.ndarray, protocol: Protocol) -> dict[str, np.ndarray]:
    """Per-image ARI / FG-ARI / mBO / mIoU of (B, M, M) label maps under ``protocol``."""
    return object_discovery_metrics(true_labels, predicted_labels, count_background=protocol.count_background, ignore_label=protocol.ignore_label)


@torch.no_grad()
def evaluate_masks(
    predict: Any,
    store: FeatureStore,
    indices: np.ndarray,
    protocol: Protocol,
    feature_kind: str | None,
    token_name: str | None,
    device: torch.device,
    view: str = "center",
    batch_size: int = 64,
    show_progress: bool = False,
) -> tuple[MaskMetrics, np.ndarray]:
    """Run ``predict(features, tokens) -> (B, S, h, w)`` over ``indices`` of ``view``; returns metrics and
    the predicted label maps of the first 8 images (for the PNG grid)."""
    if not store.has_masks:
        raise StoreError(f"store {store.path} has no instance masks: evaluation needs ground truth")
    size = store.layout.mask_size
    per_image: dict[str, list[np.ndarray]] = {"ari": [], "fg_ari": [], "mbo": [], "miou": []}
    examples: list[np.ndarray] = []
    clip_true: dict[str, list[np.ndarray]] = {}
    clip_predicted: dict[str, list[np.ndarray]] = {}
    clip_ids = store.clip_ids
    with progress_bar("images", disable=not show_progress) as progress:
        task = progress.add_task("eval", total=len(indices), rate="")
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            features = torch.from_numpy(store.features(batch, view=view).astype(np.float32)).to(device)
            if feature_kind is not None and feature_kind != store.stored_kind:
                features = store.derive(features, feature_kind)
            tokens = torch.from_numpy(store.tokens(token_name, batch, view=view).astype(np.int64)).to(device) if token_name else None
            predicted = labels_from_patch_masks(predict(features, tokens), size)  # (B, M, M)
            true = store.masks(batch, view=view).astype(np.int64)
            scores = score_masks(true, predicted, protocol)
            for name in per_image:
                per_image[name].append(scores[name])
            if len(examples) < 8:
                examples.extend(list(predicted[: 8 - len(examples)]))
            if clip_ids is not None:
                for row, index in enumerate(batch):
                    clip_true.setdefault(clip_ids[index], []).append(true[row])
                    clip_predicted.setdefault(clip_ids[index], []).append(predicted[row])
            progress.update(task, advance=len(batch))
    # Video: one ARI per clip over all its frames' pixels (slot identities must persist over time).
    clip_ari = {
        clip: adjusted_rand_index(np.stack(clip_true[clip]), np.stack(clip_predicted[clip]), ignore_background=False, ignore_label=protocol.ignore_label)
        for clip in clip_true
    }
    metrics = MaskMetrics(**{name: np.concatenate(values) for name, values in per_image.items()}, clip_ari=clip_ari)
    return metrics, np.stack(examples) if examples else np.zeros((0, size, size), np.int64)


def write_mask_grid(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """PNG: view images (top), slot masks as colours (middle), masks over the image (bottom)."""
    size = labels.shape[-1]
    palette = (np.random.default_rng(0).uniform(40, 255, size=(256, 3))).astype(np.uint8)
    rows_image, rows_mask, rows_overlay = [], [], []
    for image, label in zip(images, labels):
        picture = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        colours = palette[label % 256]
        rows_image.append(picture)
        rows_mask.append(colours)
        rows_overlay.append((0.5 * picture + 0.5 * colours).astype(np.uint8))
    grid = np.concatenate([np.concatenate(rows, axis=1) for rows in (rows_image, rows_mask, rows_overlay)], axis=0)
    Image.fromarray(grid).save(path)
    return path


def print_metrics_table(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    columns = ["method", "ari", "fg_ari", "mbo", "miou", "images"]
    if any("clip_ari" in row for row in rows):
        columns.insert(5, "clip_ari")
    for column in columns:
        table.add_column(column, justify="right" if column != "method" else "left")
    for row in rows:
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns])
    console.print(table)


__all__ = [
    "PROTOCOLS",
    "MaskMetrics",
    "Protocol",
    "evaluate_masks",
    "get_protocol",
    "labels_from_patch_masks",
    "print_metrics_table",
    "score_masks",
    "write_mask_grid",
]
