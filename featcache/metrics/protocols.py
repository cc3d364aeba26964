"""Metric protocols: object-discovery metrics of predicted masks on a store, with every protocol choice explicit.

Predicted masks (slot-attention maps or decoder alphas on the patch grid) are upsampled bilinearly to the
store's mask resolution, arg-maxed over slots and compared with the cached instance masks: ARI, FG-ARI,
mBO and mIoU (Hungarian). The protocol says everything else: what ignore pixels (VOC boundaries, overlapping
COCO instances) become, what ARI scores where no pixel is left, which metrics a video store pools per clip,
and how per-image scores are averaged. featcache's own protocols (``vvo``, ``dinosaur``) drop ignore pixels,
skip undefined scores and average per image; ``vvo-code``, ``oclf``, ``videosaur`` and ``videosaur-instances``
reproduce those codebases' metric code (tests/test_metric_protocols.py checks them against their outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from featcache.metrics import ARI_ARITHMETICS, BACKGROUND_LABEL, EMPTY_ARI_RULES, mean_of_batch_means, mean_skipping_nan, object_discovery_metrics
from featcache.plotting import label_palette
from featcache.store import FeatureStore

#: The four metrics, in report order.
METRIC_NAMES = ("ari", "fg_ari", "mbo", "miou")
IGNORE_PIXEL_RULES = ("drop", "background")


@dataclass(frozen=True)
class Protocol:
    """How masks are compared; recorded with every result because published numbers differ in these."""

    name: str
    #: mBO / mIoU count the background as a ground-truth segment (VVO) or not (DINOSAUR, SPOT).
    count_background: bool
    #: Ground-truth value of ignore pixels (boundaries, overlaps) in the store's masks.
    ignore_label: int = IGNORE_LABEL
    #: Patch-grid masks are upsampled bilinearly to the store's mask size, then arg-maxed over slots.
    upsampling: str = "bilinear"
    #: ``drop``: ignore pixels leave every metric. ``background``: they become background (VVO's loaders).
    ignore_pixels: str = "drop"
    #: ARI / FG-ARI where no pixel is left (an image without foreground): one of EMPTY_ARI_RULES.
    empty_ari: str = "skip"
    #: Video stores: metrics scored per frame (reported under their names).
    frame_metrics: tuple[str, ...] = METRIC_NAMES
    #: Video stores: metrics scored once per clip over all its frames' pixels (reported as ``clip_<name>``
    #: when also scored per frame, else under their names).
    clip_metrics: tuple[str, ...] = ("ari",)
    #: None: the mean over images (frames) that could be scored. N: the mean of the means of consecutive
    #: batches of N images, the last batch kept however small (VVO's eval loop).
    image_batch: int | None = None
    #: The same for clips, when metrics are pooled per clip.
    clip_batch: int | None = None
    #: ARI arithmetic: one of ARI_ARITHMETICS.
    ari_arithmetic: str = "float64"
    #: Mask size (px) the anchor scores at; recorded only: featcache scores at the store's mask size.
    anchor_resolution: int | None = None
    #: Where the choices come from.
    source: str = "featcache"

    def __post_init__(self) -> None:
        choices = {
            "ignore_pixels": (self.ignore_pixels, IGNORE_PIXEL_RULES),
            "empty_ari": (self.empty_ari, EMPTY_ARI_RULES),
            "ari_arithmetic": (self.ari_arithmetic, ARI_ARITHMETICS),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise FeatcacheError(f"protocol {self.name!r}: {key} is {value!r}; expected one of {', '.join(valid)}")
        for key in ("frame_metrics", "clip_metrics"):
            unknown = set(getattr(self, key)) - set(METRIC_NAMES)
            if unknown:
                raise FeatcacheError(f"protocol {self.name!r}: {key} holds {sorted(unknown)}; expected names from {', '.join(METRIC_NAMES)}")
        if not self.frame_metrics and not self.clip_metrics:
            raise FeatcacheError(f"protocol {self.name!r}: frame_metrics and clip_metrics are both empty; expected at least one metric")
        for key in ("image_batch", "clip_batch"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise FeatcacheError(f"protocol {self.name!r}: {key} is {value}; expected None or >= 1")

    def describe(self) -> dict[str, Any]:
        """Every choice, for eval.json."""
        return {
            "name": self.name,
            "source": self.source,
            "background_in_mbo_miou": self.count_background,
            "ignore_label": self.ignore_label,
            "ignore_pixels": self.ignore_pixels,
            "empty_ari": self.empty_ari,
            "empty_mbo_miou": "skip",
            "video_frame_metrics": list(self.frame_metrics),
            "video_clip_metrics": list(self.clip_metrics),
            "averaging": "per image" if self.image_batch is None else f"mean of means of batches of {self.image_batch} images (last batch kept)",
            "clip_averaging": "per clip" if self.clip_batch is None else f"mean of means of batches of {self.clip_batch} clips (last batch kept)",
            "ari_arithmetic": self.ari_arithmetic,
            "anchor_resolution": self.anchor_resolution,
            "upsampling": self.upsampling,
        }


_VVO = "Genera1Z/VQ-VFM-OCL@d21cab5"
_OCLF = "amazon-science/object-centric-learning-framework@0a97292"
_VIDEOSAUR = "martius-lab/videosaur@5d09311"

PROTOCOLS = {
    # featcache's own (``vvo`` is the CLI default): ignore pixels dropped, undefined scores skipped, per-image means.
    "vvo": Protocol("vvo", count_background=True, source="featcache: background counted in mBO/mIoU as VVO does"),
    "dinosaur": Protocol("dinosaur", count_background=False, source="featcache: background not counted in mBO/mIoU as DINOSAUR/SPOT do"),
    "vvo-code": Protocol(
        "vvo-code",
        count_background=True,
        ignore_pixels="background",
        empty_ari="skip",
        frame_metrics=(),
        clip_metrics=METRIC_NAMES,
        image_batch=16,
        clip_batch=4,
        ari_arithmetic="vvo-int64-float32",
        anchor_resolution=256,
        source=f"{_VVO}: object_centric_bench/learn/metric.py ARI/mBO/mIoU, eval.py, learn/callback_log.py AverageLog, "
        "config-vqdino metric_fn_v, datum/dataset_voc.py",
    ),
    "oclf": Protocol(
        "oclf",
        count_background=False,
        empty_ari="one",
        clip_metrics=(),
        anchor_resolution=320,
        source=f"{_OCLF}: ocl/metrics/masks.py, ocl/metrics/utils.py, configs/evaluation/projects/bridging/_metrics_discovery_masks.yaml",
    ),
    "videosaur": Protocol(
        "videosaur",
        count_background=False,
        empty_ari="one-if-any-pixel",
        clip_metrics=METRIC_NAMES,
        anchor_resolution=224,
        source=f"{_VIDEOSAUR}: videosaur/metrics.py, configs/videosaur/movi_c.yml (masks with a background channel)",
    ),
    "videosaur-instances": Protocol(
        "videosaur-instances",
        count_background=False,
        empty_ari="skip",
        clip_metrics=METRIC_NAMES,
        anchor_resolution=224,
        source=f"{_VIDEOSAUR}: videosaur/metrics.py, configs/dinosaur/coco_base14_dinov2.yml, configs/videosaur/ytvis.yml "
        "(instance masks without a background channel)",
    ),
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
    """Per-image (per-frame) metric arrays of one pass over a store (nan where a metric is undefined for an
    image) and, for video stores, per-clip scores of the protocol's pooled metrics (clip id -> value)."""

    ari: np.ndarray
    fg_ari: np.ndarray
    mbo: np.ndarray
    miou: np.ndarray
    clip_ari: dict[str, float]
    clip_fg_ari: dict[str, float] = field(default_factory=dict)
    clip_mbo: dict[str, float] = field(default_factory=dict)
    clip_miou: dict[str, float] = field(default_factory=dict)
    #: Averaging and video reporting follow this protocol; None: featcache's per-image means.
    protocol: Protocol | None = None

    def _clip_scores(self, name: str) -> dict[str, float]:
        return getattr(self, f"clip_{name}")

    def summary(self) -> dict[str, float]:
        protocol = self.protocol or PROTOCOLS["vvo"]
        video = any(self._clip_scores(name) for name in METRIC_NAMES)
        result: dict[str, float] = {}
        frame_names = protocol.frame_metrics if video else METRIC_NAMES
        for name in frame_names:
            values = getattr(self, name)
            result[name] = mean_skipping_nan(values) if protocol.image_batch is None else mean_of_batch_means(values, protocol.image_batch)
        if video:
            for name in protocol.clip_metrics:
                values = np.array(list(self._clip_scores(name).values()), dtype=np.float64)
                key = f"clip_{name}" if name in frame_names else name
                result[key] = mean_skipping_nan(values) if protocol.clip_batch is None else mean_of_batch_means(values, protocol.clip_batch)
        result["images"] = int(len(self.ari))
        if video:
            result["clips"] = max(len(self._clip_scores(name)) for name in METRIC_NAMES)
        return {**{name: result[name] for name in METRIC_NAMES if name in result}, **result}


def score_masks(true_labels: np.ndarray, predicted_labels: np.ndarray, protocol: Protocol) -> dict[str, np.ndarray]:
    """Per-item ARI / FG-ARI / mBO / mIoU under ``protocol`` of (B, M, M) images or (B, T, M, M) whole clips."""
    ignore_label: int | None = protocol.ignore_label
    if protocol.ignore_pixels == "background":
        true_labels = np.where(true_labels == protocol.ignore_label, BACKGROUND_LABEL, true_labels)
        ignore_label = None
    return object_discovery_metrics(
        true_labels,
        predicted_labels,
        count_background=protocol.count_background,
        ignore_label=ignore_label,
        empty_ari=protocol.empty_ari,
        ari_arithmetic=protocol.ari_arithmetic,
    )


def score_clips(
    clip_true: dict[str, list[np.ndarray]], clip_predicted: dict[str, list[np.ndarray]], protocol: Protocol
) -> dict[str, dict[str, float]]:
    """``clip_<name>`` -> {clip id: score} for the protocol's clip metrics, all frames of a clip pooled."""
    scores: dict[str, dict[str, float]] = {f"clip_{name}": {} for name in protocol.clip_metrics}
    for clip in clip_true:
        values = score_masks(np.stack(clip_true[clip])[None], np.stack(clip_predicted[clip])[None], protocol)  # (1, T, M, M)
        for name in protocol.clip_metrics:
            scores[f"clip_{name}"][clip] = float(values[name][0])
    return scores


def _predict_batch(
    predict: Any, store: FeatureStore, batch: np.ndarray, feature_kind: str | None, token_name: str | None, device: torch.device, view: str
) -> np.ndarray:
    """``predict``'s label maps (B, M, M) of one batch of store samples at the store's mask size."""
    features = torch.from_numpy(store.features(batch, view=view).astype(np.float32)).to(device)
    if feature_kind is not None and feature_kind != store.stored_kind:
        features = store.derive(features, feature_kind)
    tokens = torch.from_numpy(store.tokens(token_name, batch, view=view).astype(np.int64)).to(device) if token_name else None
    return labels_from_patch_masks(predict(features, tokens), store.layout.mask_size)


@torch.no_grad()
def predict_labels(
    predict: Any,
    store: FeatureStore,
    indices: np.ndarray,
    feature_kind: str | None,
    token_name: str | None,
    device: torch.device,
    view: str = "center",
    batch_size: int = 64,
) -> np.ndarray:
    """The label maps (N, M, M) that :func:`evaluate_masks` scores, for ``indices`` (e.g. the frames of a clip to draw)."""
    size = store.layout.mask_size
    batches = [_predict_batch(predict, store, indices[start : start + batch_size], feature_kind, token_name, device, view)
               for start in range(0, len(indices), batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, size, size), np.int64)


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
            predicted = _predict_batch(predict, store, batch, feature_kind, token_name, device, view)  # (B, M, M)
            true = store.masks(batch, view=view).astype(np.int64)
            scores = score_masks(true, predicted, protocol)
            for name in per_image:
                per_image[name].append(scores[name])
            if len(examples) < 8:
                examples.extend(list(predicted[: 8 - len(examples)]))
            if clip_ids is not None and protocol.clip_metrics:
                for row, index in enumerate(batch):
                    clip_true.setdefault(clip_ids[index], []).append(true[row])
                    clip_predicted.setdefault(clip_ids[index], []).append(predicted[row])
            progress.update(task, advance=len(batch))
    # Video: the protocol's clip metrics once per clip over all its frames' pixels (slot identities must persist).
    clip_scores = {"clip_ari": {}, **score_clips(clip_true, clip_predicted, protocol)}
    metrics = MaskMetrics(**{name: np.concatenate(values) for name, values in per_image.items()}, **clip_scores, protocol=protocol)
    return metrics, np.stack(examples) if examples else np.zeros((0, size, size), np.int64)


def write_mask_grid(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """PNG: view images (top), slot masks as colours (middle), masks over the image (bottom)."""
    size = labels.shape[-1]
    palette = label_palette()  # (256, 3): the colours of the clip pictures too
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
    columns = ["method", "ari", "fg_ari", "mbo", "miou"]
    columns += [f"clip_{name}" for name in METRIC_NAMES if any(f"clip_{name}" in row for row in rows)]  # video stores
    columns += ["images"] + (["clips"] if any("clips" in row for row in rows) else [])
    for column in columns:
        table.add_column(column, justify="right" if column != "method" else "left")
    for row in rows:
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns])
    console.print(table)


__all__ = [
    "METRIC_NAMES",
    "PROTOCOLS",
    "MaskMetrics",
    "Protocol",
    "evaluate_masks",
    "get_protocol",
    "labels_from_patch_masks",
    "predict_labels",
    "print_metrics_table",
    "score_clips",
    "score_masks",
    "write_mask_grid",
]


@torch.no_grad()
def evaluate_clip_masks(
    predict: Any,
    store: FeatureStore,
    clips: dict[str, np.ndarray],
    protocol: Protocol,
    feature_kind: str | None,
    token_name: str | None,
    device: torch.device,
    view: str = "center",
    show_progress: bool = False,
    keep: dict[str, np.ndarray] | None = None,
) -> tuple[MaskMetrics, np.ndarray]:
    """Temporal models: run ``predict(features (1, T, h, w, C), tokens (1, T, h, w) | None, frame indices (T,))
    -> (1, T, S, h, w)`` over each whole clip (``clips``: clip id -> its sample indices in frame order), score every
    frame and, pooled over each clip's frames, the protocol's clip metrics (slot identities must persist over
    the clip). Returns metrics and the predicted label maps of the first 8 frames; ``keep`` (clip id -> None), when
    given, receives the predicted label maps (T, M, M) of the clips it names (the clips an evaluation draws)."""
    if not store.has_masks:
        raise StoreError(f"store {store.path} has no instance masks: evaluation needs ground truth")
    size = store.layout.mask_size
    per_image: dict[str, list[np.ndarray]] = {"ari": [], "fg_ari": [], "mbo": [], "miou": []}
    examples: list[np.ndarray] = []
    clip_true: dict[str, list[np.ndarray]] = {}
    clip_predicted: dict[str, list[np.ndarray]] = {}
    with progress_bar("clips", disable=not show_progress) as progress:
        task = progress.add_task("eval", total=len(clips), rate="")
        for clip, indices in clips.items():
            features = torch.from_numpy(store.features(indices, view=view).astype(np.float32)).to(device)[None]  # (1, T, h, w, C)
            if feature_kind is not None and feature_kind != store.stored_kind:
                features = store.derive(features, feature_kind)
            tokens = torch.from_numpy(store.tokens(token_name, indices, view=view).astype(np.int64)).to(device)[None] if token_name else None
            predicted = labels_from_patch_masks(predict(features, tokens, indices)[0], size)  # (T, M, M)
            true = store.masks(indices, view=view).astype(np.int64)  # (T, M, M)
            scores = score_masks(true, predicted, protocol)
            for name in per_image:
                per_image[name].append(scores[name])
            if len(examples) < 8:
                examples.extend(list(predicted[: 8 - len(examples)]))
            clip_true[clip] = list(true)
            clip_predicted[clip] = list(predicted)
            if keep is not None and clip in keep:
                keep[clip] = predicted
            progress.update(task, advance=1)
    clip_scores = {"clip_ari": {}, **score_clips(clip_true, clip_predicted, protocol)} if protocol.clip_metrics else {"clip_ari": {}}
    metrics = MaskMetrics(**{name: np.concatenate(values) for name, values in per_image.items()}, **clip_scores, protocol=protocol)
    return metrics, np.stack(examples) if examples else np.zeros((0, size, size), np.int64)
