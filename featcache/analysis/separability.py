"""Do a VFM's patch features (or their VQ codes) separate objects? Statistics of VVO's Figure 1.

From ground-truth masks: the mean L2 distance between patches of the same object (intra) and of different
objects (inter) in a shared PCA space, and how well per-image kMeans on the features recovers the
objects (ARI / FG-ARI). Larger inter/intra and higher kMeans ARI = features that separate objects better.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.spatial.distance import pdist

from featcache.analysis.clustering import PCAProjection, cell_index, check_features, fit_pca, kmeans_segmentation
from featcache.analysis.codes import require_token_set, selected_indices
from featcache.console import console as default_console
from featcache.console import format_rate, progress_bar
from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError, StoreError
from featcache.metrics.segmentation import BACKGROUND_LABEL, mean_skipping_nan
from featcache.store.reader import FeatureStore
from featcache.store.tokens import token_set_quantizer

#: Images read from a store at a time by the store-level drivers.
BLOCK_SIZE = 256
#: Column order of separability rows (CSV and table).
ROW_FIELDS = (
    "store",
    "encoder",
    "weights",
    "random_weights",
    "view",
    "kind",
    "pca_dims",
    "intra",
    "inter",
    "ratio",
    "kmeans_ari",
    "kmeans_fg_ari",
    "images",
)


def patch_labels(masks: np.ndarray, grid: tuple[int, int], ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Ground-truth label per patch (N, h, w) uint16 by majority vote over the pixels under each patch.

    Ignore pixels do not vote; a patch with only ignore pixels gets ``ignore_label``. Ties go to the
    smaller label. Works when the mask size is not a multiple of the grid (patches then differ by a pixel).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
        raise FeatcacheError(f"masks have shape {masks.shape} and dtype {masks.dtype}; expected integer (N, H, W)")
    grid_height, grid_width = (int(grid[0]), int(grid[1]))
    _, height, width = masks.shape
    if not (1 <= grid_height <= height and 1 <= grid_width <= width):
        raise FeatcacheError(f"patch grid {grid} does not fit masks of {height} x {width} pixels")
    patch_of_pixel = (
        cell_index(height, grid_height)[:, None] * grid_width + cell_index(width, grid_width)[None, :]
    ).reshape(-1)  # (H*W,)
    num_patches = grid_height * grid_width
    result = np.full((masks.shape[0], num_patches), ignore_label, dtype=np.uint16)
    for image_index, mask in enumerate(masks):
        flat = mask.reshape(-1)
        voting = flat != ignore_label
        if not voting.any():
            continue
        values, compact = np.unique(flat[voting], return_inverse=True)
        votes = np.bincount(
            patch_of_pixel[voting] * values.size + compact.reshape(-1), minlength=num_patches * values.size
        ).reshape(num_patches, values.size)
        winners = values[votes.argmax(axis=1)]
        has_votes = votes.sum(axis=1) > 0
        result[image_index, has_votes] = winners[has_votes]
    return result.reshape(masks.shape[0], grid_height, grid_width)


def _image_distances(points: np.ndarray, labels: np.ndarray, ignore_label: int, ignore_background: bool) -> tuple[float, float]:
    """Mean L2 distance over same-segment pairs and over different-segment pairs of one image's patches."""
    keep = labels != ignore_label
    if ignore_background:
        keep &= labels != BACKGROUND_LABEL
    points, labels = points[keep], labels[keep]
    if points.shape[0] < 2:
        return float("nan"), float("nan")
    distances = pdist(points)  # condensed, pairs (i, j) with i < j in row-major order
    first, second = np.triu_indices(points.shape[0], k=1)
    same = labels[first] == labels[second]
    intra = float(distances[same].mean()) if same.any() else float("nan")
    inter = float(distances[~same].mean()) if (~same).any() else float("nan")
    return intra, inter


def per_image_distances(
    projected: np.ndarray, labels: np.ndarray, ignore_background: bool = False, ignore_label: int = IGNORE_LABEL
) -> tuple[np.ndarray, np.ndarray]:
    """Intra and inter distances (N,) each for already projected features (N, h, w, d); nan where undefined."""
    projected = check_features(projected, np.shape(labels))
    labels = np.asarray(labels)
    flat_points = projected.reshape(projected.shape[0], -1, projected.shape[-1])  # (N, h*w, d)
    flat_labels = labels.reshape(labels.shape[0], -1)  # (N, h*w)
    pairs = [_image_distances(p, l, ignore_label, ignore_background) for p, l in zip(flat_points, flat_labels)]
    intra = np.array([pair[0] for pair in pairs], dtype=np.float64)
    inter = np.array([pair[1] for pair in pairs], dtype=np.float64)
    return intra, inter


def _summarise_distances(intra: np.ndarray, inter: np.ndarray) -> dict[str, Any]:
    intra_mean = mean_skipping_nan(intra)
    inter_mean = mean_skipping_nan(inter)
    ratio = inter_mean / intra_mean if intra_mean > 0 else float("nan")
    return {"intra": intra_mean, "inter": inter_mean, "ratio": ratio}


def feature_distances(
    features: np.ndarray,
    labels: np.ndarray,
    pca_dims: int | None = 32,
    max_patches: int = 200_000,
    seed: int = 0,
    ignore_background: bool = False,
    ignore_label: int = IGNORE_LABEL,
    projection: PCAProjection | None = None,
) -> dict[str, Any]:
    """Intra-object vs inter-object patch distances of ``features`` (N, h, w, C) given patch ``labels`` (N, h, w).

    Features are projected by a PCA fitted on a random subsample of all patches (or by ``projection``);
    background counts as a segment unless ``ignore_background``. Returns the means over images (nan images
    skipped) as ``intra`` / ``inter``, ``ratio`` = inter / intra, and the per-image arrays.
    """
    features = check_features(features, np.shape(labels))
    if projection is None:
        projection = fit_pca(features, pca_dims, max_patches, seed)
    intra, inter = per_image_distances(projection.project(features), labels, ignore_background, ignore_label)
    return {
        **_summarise_distances(intra, inter),
        "pca_dims": projection.dims,
        "images": int(features.shape[0]),
        "intra_per_image": intra,
        "inter_per_image": inter,
    }


def quantized_features(indices: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Look up token ``indices`` (N, h, w) in ``codebook`` (K, D): the quantized map (N, h, w, D) float32."""
    indices = np.asarray(indices)
    codebook = np.asarray(codebook, dtype=np.float32)
    if codebook.ndim != 2:
        raise FeatcacheError(f"codebook has shape {codebook.shape}; expected (K, D)")
    if not np.issubdtype(indices.dtype, np.integer):
        raise FeatcacheError(f"token indices have dtype {indices.dtype}; expected integers")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= codebook.shape[0]):
        raise FeatcacheError(f"token indices reach {int(indices.max())}; expected 0..{codebook.shape[0] - 1} for this codebook")
    return codebook[indices.astype(np.int64)]


# ----------------------------------------------------------------------------- store-level drivers
FeatureLoader = Callable[[np.ndarray], np.ndarray]


def _feature_loaders(store: FeatureStore, view: str, token_name: str | None) -> list[tuple[str, FeatureLoader]]:
    """(kind label, loader of (B, h, w, C) float32 for sample indices) for every feature kind analysed."""
    loaders: list[tuple[str, FeatureLoader]] = []
    for kind in dict.fromkeys((store.stored_kind, "final_norm")):
        if kind in store.feature_kinds:
            loaders.append((kind, lambda rows, kind=kind: np.asarray(store.features(rows, view, kind), dtype=np.float32)))
    if token_name is not None:
        require_token_set(store, token_name)
        if token_set_quantizer(store.token_attributes(token_name)) == "msf":
            # MSF: the fused code (combined shared + specified code, as the decoder reads it), through the torch lookup.
            import torch

            from featcache.quantize.lookup import CodeLookup

            lookup = CodeLookup.from_token_set(store, token_name)
            loaders.append((f"tokens:{token_name}", lambda rows: lookup(
                torch.from_numpy(store.tokens(token_name, rows, view).astype(np.int64))).numpy()))
        else:
            codebook = store.codebook(token_name)
            loaders.append(
                (f"tokens:{token_name}", lambda rows: quantized_features(store.tokens(token_name, rows, view), codebook))
            )
    return loaders


def _fit_store_pca(
    loader: FeatureLoader, indices: np.ndarray, patches_per_image: int, pca_dims: int | None, max_patches: int, seed: int
) -> PCAProjection:
    """Fit the PCA on the features of enough random images to give ``max_patches`` patches."""
    if not pca_dims:
        return PCAProjection(mean=None, components=None)
    wanted_images = min(indices.size, max(1, math.ceil(max_patches / patches_per_image)))
    chosen = np.sort(np.random.default_rng(seed).choice(indices, size=wanted_images, replace=False))
    return fit_pca(loader(chosen), pca_dims, max_patches, seed)


def analyze_separability(
    store_paths: Sequence[str | Path],
    view: str = "center",
    limit: int | None = None,
    token_name: str | None = None,
    pca_dims: int | None = 32,
    seed: int = 0,
    max_patches: int = 200_000,
    ignore_background: bool = False,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per store and feature kind (stored kind, ``final_norm`` when derivable, the token set's codes).

    Uses the first ``limit`` written samples of ``view``; stores without masks fail with a one-line StoreError.
    """
    rows: list[dict[str, Any]] = []
    for store_path in store_paths:
        store = FeatureStore(store_path)
        if not store.has_masks:
            raise StoreError(f"store {store.path} has no masks: separability needs ground-truth objects")
        indices = selected_indices(store, limit)
        grid = store.layout.grid
        loaders = _feature_loaders(store, view, token_name)
        projections = [
            _fit_store_pca(loader, indices, grid[0] * grid[1], pca_dims, max_patches, seed) for _, loader in loaders
        ]
        intra: list[list[np.ndarray]] = [[] for _ in loaders]
        inter: list[list[np.ndarray]] = [[] for _ in loaders]
        ari: list[list[np.ndarray]] = [[] for _ in loaders]
        fg_ari: list[list[np.ndarray]] = [[] for _ in loaders]
        started = time.perf_counter()
        with progress_bar(disable=not show_progress) as progress:
            task = progress.add_task(f"separability {store.path.name}", total=int(indices.size), rate="")
            for start in range(0, indices.size, BLOCK_SIZE):
                block = indices[start : start + BLOCK_SIZE]
                masks = store.masks(block, view)  # (B, M, M)
                labels = patch_labels(masks, grid)  # (B, h, w)
                for position, ((_, loader), projection) in enumerate(zip(loaders, projections)):
                    features = loader(block)  # (B, h, w, C)
                    block_intra, block_inter = per_image_distances(projection.project(features), labels, ignore_background)
                    intra[position].append(block_intra)
                    inter[position].append(block_inter)
                    scores = kmeans_segmentation(features, masks, seed=seed, projection=projection)
                    ari[position].append(scores["ari_per_image"])
                    fg_ari[position].append(scores["fg_ari_per_image"])
                done = start + block.size
                progress.update(task, advance=block.size, rate=format_rate(done, time.perf_counter() - started, "images"))
        encoder = store.attributes["encoder"]["name"]
        for position, ((kind, _), projection) in enumerate(zip(loaders, projections)):
            distances = _summarise_distances(np.concatenate(intra[position]), np.concatenate(inter[position]))
            rows.append(
                {
                    "store": str(store.path),
                    "encoder": encoder,
                    "weights": store.attributes["weights"]["source"],
                    "random_weights": store.weights_are_random,
                    "view": view,
                    "kind": kind,
                    "pca_dims": projection.dims,
                    **distances,
                    "kmeans_ari": mean_skipping_nan(np.concatenate(ari[position])),
                    "kmeans_fg_ari": mean_skipping_nan(np.concatenate(fg_ari[position])),
                    "images": int(indices.size),
                }
            )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def print_separability_table(rows: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    """Rich table of separability rows; random-weights stores are flagged in red."""
    table = Table(title="object separability of patch features (intra/inter: mean L2 in PCA space)")
    for name, justify in (
        ("store", "left"),
        ("encoder", "left"),
        ("weights", "left"),
        ("kind", "left"),
        ("PCA", "right"),
        ("intra", "right"),
        ("inter", "right"),
        ("inter/intra", "right"),
        ("kMeans ARI", "right"),
        ("kMeans FG-ARI", "right"),
        ("images", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        weights = "[bold red]RANDOM[/]" if row["random_weights"] else str(row["weights"])
        table.add_row(
            row["store"],
            row["encoder"],
            weights,
            row["kind"],
            _cell(row["pca_dims"]) if row["pca_dims"] else "none",
            _cell(row["intra"]),
            _cell(row["inter"]),
            _cell(row["ratio"]),
            _cell(row["kmeans_ari"]),
            _cell(row["kmeans_fg_ari"]),
            _cell(row["images"]),
        )
    (console or default_console).print(table)
    if any(row["random_weights"] for row in rows):
        (console or default_console).print("[bold red]RANDOM[/]: features of randomly initialised weights, not of the pretrained VFM")


def _json_value(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, nan to null."""
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_separability_json(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as a JSON list (nan -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{key: _json_value(row[key]) for key in ROW_FIELDS} for row in rows], indent=2) + "\n")
    return path


def write_separability_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as CSV with a header (nan -> empty cell)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if _json_value(row[key]) is None else _json_value(row[key]) for key in ROW_FIELDS})
    return path


