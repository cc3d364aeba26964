"""Clustering the slots of a whole dataset (the thesis' third stage): faiss kMeans over a slot set, with the tables
that help choose k and say what the clusters mean.

- Elbow / silhouette table over a range of k: mean squared distance to the nearest centroid (the kMeans objective per
  slot) and ``sklearn silhouette_score`` on a seeded subsample.
- Purity and NMI (``sklearn normalized_mutual_info_score``) of the clusters against each slot's object class: slots
  are matched to the ground-truth objects of their image by mask IoU (Hungarian, maximum total IoU); a slot matched
  to no object (or with zero overlap) gets the class ``none`` (-1), so background slots form their own class; both
  scores are also given over the object-matched slots only (``purity_objects``, ``nmi_objects``), since a set whose
  slots are mostly "none" has a high purity whatever its clusters.
- Nearest-centroid substitution error: mean squared distance of slots to their centroid divided by the slots' total
  variance (mean squared distance to their mean): 0 = centroids replace slots exactly, 1 = no better than the mean.
- A PNG grid: one row per cluster, its slots nearest to the centroid drawn as the slot's mask over the image.
- Centroids saved as ``centroids.npy`` and ``centroids.safetensors`` (key ``centroids``, (k, D) float32) with
  ``slot_clusters.json`` (provenance, tables, cluster sizes and class histograms) for later generation work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError
from featcache.metrics.protocols import labels_from_patch_masks
from featcache.metrics.segmentation import BACKGROUND_LABEL

#: Class of slots matched to no object.
NONE_CLASS = -1


def parse_k_range(text: str) -> list[int]:
    """``"2..16"`` -> [2, ..., 16]; ``""`` -> []."""
    if not text:
        return []
    try:
        low, high = (int(part) for part in text.split(".."))
    except ValueError:
        raise FeatcacheError(f"k_range is {text!r}; expected LOW..HIGH like 2..16") from None
    if not 2 <= low <= high:
        raise FeatcacheError(f"k_range is {text!r}; expected 2 <= LOW <= HIGH")
    return list(range(low, high + 1))


def match_slots_to_objects(slot_labels: np.ndarray, true_mask: np.ndarray, num_slots: int) -> np.ndarray:
    """Object id (0 = none) of each slot (S,): slot label map (M, M) vs instance mask (M, M), Hungarian on IoU."""
    objects = [int(v) for v in np.unique(true_mask) if v not in (BACKGROUND_LABEL, IGNORE_LABEL)]
    matched = np.zeros(num_slots, np.int64)
    if not objects:
        return matched
    valid = true_mask != IGNORE_LABEL
    slot_masks = (slot_labels[None] == np.arange(num_slots)[:, None, None]) & valid  # (S, M, M)
    object_masks = true_mask[None] == np.array(objects)[:, None, None]  # (k, M, M)
    intersection = np.einsum("shw,khw->sk", slot_masks.astype(np.int64), object_masks.astype(np.int64))
    union = slot_masks.sum((1, 2))[:, None] + object_masks.sum((1, 2))[None] - intersection
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)  # (S, k)
    rows, columns = linear_sum_assignment(-iou)
    for row, column in zip(rows, columns):
        if iou[row, column] > 0:
            matched[row] = objects[column]
    return matched


def slot_object_classes(masks: np.ndarray, true_masks: np.ndarray, instance_classes: np.ndarray) -> np.ndarray:
    """Class of each slot's matched object (N, S), ``NONE_CLASS`` where unmatched: soft masks (N, S, h, w) at the
    patch grid (upsampled to the instance masks' size and argmaxed as `featcache eval` does), true masks (N, M, M)."""
    count, num_slots = masks.shape[:2]
    labels = labels_from_patch_masks(torch.from_numpy(masks), true_masks.shape[-1])  # (N, M, M)
    classes = np.full((count, num_slots), NONE_CLASS, np.int64)
    for image in range(count):
        matched = match_slots_to_objects(labels[image], true_masks[image], num_slots)
        hit = matched > 0
        classes[image, hit] = instance_classes[image, matched[hit] - 1]
    return classes


def purity(classes: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of items whose class is their cluster's most common class."""
    total = 0
    for cluster in np.unique(clusters):
        _, counts = np.unique(classes[clusters == cluster], return_counts=True)
        total += int(counts.max())
    return total / len(classes)


@dataclass
class KMeansFit:
    centroids: np.ndarray  # (k, D) float32
    assignment: np.ndarray  # (P,) int64
    distances: np.ndarray  # (P,) squared distance to the assigned centroid


def fit_kmeans(points: np.ndarray, k: int, seed: int = 0, niter: int = 25, nredo: int = 3) -> KMeansFit:
    """faiss kMeans (lowest objective of ``nredo`` runs) of points (P, D)."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    if k > len(points):
        raise FeatcacheError(f"k = {k} clusters need at least {k} slots; the slot set has {len(points)}")
    kmeans = faiss.Kmeans(points.shape[1], k, niter=niter, nredo=nredo, seed=seed, min_points_per_centroid=1, max_points_per_centroid=1 << 20)
    kmeans.train(points)
    distances, assignment = kmeans.index.search(points, 1)
    return KMeansFit(np.asarray(kmeans.centroids, np.float32), assignment[:, 0].astype(np.int64), distances[:, 0].astype(np.float64))


def substitution_error(points: np.ndarray, centroids: np.ndarray, assignment: np.ndarray) -> float:
    """Mean squared distance of points to their centroid over the points' mean squared distance to their mean."""
    points = np.asarray(points, np.float64)
    residual = ((points - centroids[assignment]) ** 2).sum(1).mean()
    variance = ((points - points.mean(0)) ** 2).sum(1).mean()
    return float(residual / variance) if variance > 0 else 0.0


def k_table(points: np.ndarray, ks: list[int], seed: int, samples: int, niter: int, nredo: int) -> list[dict[str, Any]]:
    """Per k: mean squared distance to the nearest centroid (elbow) and the silhouette on a seeded subsample."""
    rng = np.random.default_rng(seed)
    subset = rng.choice(len(points), size=min(samples, len(points)), replace=False)
    rows = []
    for k in ks:
        if k >= len(points):
            break
        fit = fit_kmeans(points, k, seed, niter, nredo)
        labels = fit.assignment[subset]
        silhouette = float(silhouette_score(points[subset], labels)) if 2 <= len(np.unique(labels)) < len(subset) else float("nan")
        rows.append({"k": k, "mean_squared_distance": float(fit.distances.mean()), "silhouette": silhouette})
    return rows


def cluster_grid(store: Any, slot_set: Any, references: np.ndarray, fit: KMeansFit, path: Path, per_cluster: int = 8, max_clusters: int = 32) -> Path:
    """PNG: one row per cluster (up to ``max_clusters``), its ``per_cluster`` slots nearest to the centroid, each the
    slot's mask over its view's image (the mask alone on grey when the store has no images). ``references`` (P, 3)
    holds (sample, view position in the slot set, slot) of every point."""
    from PIL import Image

    size = store.layout.image_size if store.has_images else 64
    blank = np.full((size, size, 3), 40, np.uint8)
    rows = []
    for cluster in range(min(len(fit.centroids), max_clusters)):
        members = np.flatnonzero(fit.assignment == cluster)
        nearest = members[np.argsort(fit.distances[members], kind="stable")[:per_cluster]]
        cells = []
        for point in nearest:
            sample, view_position, slot = (int(v) for v in references[point])
            view = slot_set.views[view_position]
            mask = slot_set.masks([sample], view=view)[0, slot]  # (h, w), soft: scaled to its maximum to be seen
            mask = mask / max(float(mask.max()), 1e-6)
            mask = np.asarray(Image.fromarray((mask * 255).clip(0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)) / 255.0
            image = store.images([sample], view=view)[0] if store.has_images else np.full((size, size, 3), 128, np.uint8)
            cells.append((image * (0.2 + 0.8 * mask[..., None])).astype(np.uint8))
        cells += [blank] * (per_cluster - len(cells))
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def analyze_slot_set(
    store_path: str | Path,
    slots_name: str,
    k: int,
    out: Path,
    k_range: str = "2..16",
    silhouette_samples: int = 2000,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 3,
    limit: int | None = None,
    grid_slots: int = 8,
) -> dict[str, Any]:
    """kMeans of every slot of the set (all encoded views), the k table, purity / NMI / substitution error, the PNG
    grid and the saved centroids; returns the slot_clusters.json record."""
    from safetensors.numpy import save_file

    from featcache import records
    from featcache.store import FeatureStore
    from featcache.store.slots import SlotSet

    store = FeatureStore(store_path)
    slot_set = SlotSet(store, slots_name)
    slot_set.require_current()
    indices = store.valid_indices()
    if limit is not None:
        indices = indices[:limit]
    slots = slot_set.slots(indices, view=None)  # (N, V, S, D)
    count, views, num_slots, dim = slots.shape
    points = slots.reshape(-1, dim)  # (N*V*S, D), sample-major, then view, then slot
    references = np.stack(np.meshgrid(indices, np.arange(views), np.arange(num_slots), indexing="ij"), -1).reshape(-1, 3)
    fit = fit_kmeans(points, k, seed, niter, nredo)
    record: dict[str, Any] = {
        **records.provenance(),
        "store": str(store.path),
        "slots": slots_name,
        "slot_set": {"run": slot_set.attributes["run"]["path"], "run_fingerprint": slot_set.attributes["run"]["fingerprint"],
                     "weights_sha256": slot_set.attributes["run"]["weights_sha256"], "views": slot_set.views},
        "k": k,
        "points": int(len(points)),
        "dim": int(dim),
        "kmeans": {"library": "faiss", "niter": niter, "nredo": nredo, "seed": seed},
        "substitution_error": substitution_error(points, fit.centroids, fit.assignment),
        "mean_squared_distance": float(fit.distances.mean()),
        "cluster_sizes": np.bincount(fit.assignment, minlength=k).tolist(),
        "k_table": k_table(points, parse_k_range(k_range), seed, silhouette_samples, niter, nredo),
        "silhouette_samples": silhouette_samples,
    }
    if store.has_masks:
        true = store.masks(indices, view=None)  # (N, V_store, M, M)
        view_positions = [store.view_names.index(view) for view in slot_set.views]
        classes = store.instance_classes(indices)
        masks = slot_set.masks(indices, view=None)  # (N, V, S, h, w)
        slot_classes = np.stack([slot_object_classes(masks[:, v], true[:, position], classes) for v, position in enumerate(view_positions)], 1)
        flat_classes = slot_classes.reshape(-1)  # same order as points
        record["purity"] = purity(flat_classes, fit.assignment)
        record["nmi"] = float(normalized_mutual_info_score(flat_classes, fit.assignment))
        record["matching"] = "slot masks (the run's mask_source) vs instance masks, Hungarian on IoU; unmatched slots: class none (-1)"
        record["none_fraction"] = float((flat_classes == NONE_CLASS).mean())
        objects = flat_classes != NONE_CLASS  # the same scores over the slots matched to an object only
        if objects.sum() >= 2:
            record["purity_objects"] = purity(flat_classes[objects], fit.assignment[objects])
            record["nmi_objects"] = float(normalized_mutual_info_score(flat_classes[objects], fit.assignment[objects]))
        record["cluster_classes"] = [
            {str(int(c)): int(n) for c, n in zip(*np.unique(flat_classes[fit.assignment == cluster], return_counts=True))} for cluster in range(k)
        ]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "centroids.npy", fit.centroids)
    save_file({"centroids": fit.centroids}, str(out / "centroids.safetensors"), metadata={"slots": slots_name, "store": str(store.path), "k": str(k)})
    if grid_slots > 0:
        record["grid"] = str(cluster_grid(store, slot_set, references, fit, out / "slot_clusters.png", per_cluster=grid_slots))
    records.write_record(out / "slot_clusters.json", record)
    return record


def print_slot_cluster_tables(record: dict[str, Any]) -> None:
    from rich.table import Table

    from featcache.console import console

    if record["k_table"]:
        table = Table(title=f"choosing k: slot set {record['slots']!r} ({record['points']} slots)")
        for column in ("k", "mean sq. distance", "silhouette"):
            table.add_column(column, justify="right")
        for row in record["k_table"]:
            table.add_row(str(row["k"]), f"{row['mean_squared_distance']:.4g}", f"{row['silhouette']:.3f}")
        console.print(table)
    summary = Table(title=f"slot clusters, k = {record['k']}", show_header=False)
    summary.add_row("substitution error (relative)", f"{record['substitution_error']:.3f}")
    if "purity" in record:
        summary.add_row("purity (matched object class)", f"{record['purity']:.3f}")
        summary.add_row("NMI", f"{record['nmi']:.3f}")
        summary.add_row("slots matched to no object", f"{record['none_fraction']:.3f}")
        if "purity_objects" in record:
            summary.add_row("purity / NMI, object slots only", f"{record['purity_objects']:.3f} / {record['nmi_objects']:.3f}")
    console.print(summary)


__all__ = [
    "NONE_CLASS",
    "analyze_slot_set",
    "fit_kmeans",
    "k_table",
    "match_slots_to_objects",
    "parse_k_range",
    "print_slot_cluster_tables",
    "purity",
    "slot_object_classes",
    "substitution_error",
]
