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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.spatial.distance import pdist

from featcache.analysis.codes import CodeStatistics, code_statistics, print_code_table, write_code_plots
from featcache.console import console as default_console
from featcache.console import format_rate, progress_bar
from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError, StoreError
from featcache.metrics.segmentation import BACKGROUND_LABEL, ari_batch, mean_skipping_nan
from featcache.store.reader import FeatureStore

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


# ----------------------------------------------------------------------------- PCA
@dataclass(frozen=True)
class PCAProjection:
    """A linear projection fitted once per dataset so that every image's distances live in the same space.

    ``components`` is None when no reduction is asked for (or the features are already that small).
    """

    mean: np.ndarray | None
    components: np.ndarray | None  # (C, dims)

    @property
    def dims(self) -> int | None:
        return None if self.components is None else int(self.components.shape[1])

    def project(self, features: np.ndarray) -> np.ndarray:
        """(..., C) -> (..., dims) float64 (or the features as float64 without a projection)."""
        features = np.asarray(features, dtype=np.float64)
        if self.components is None:
            return features
        return (features - self.mean) @ self.components


def fit_pca(features: np.ndarray, dims: int | None = 32, max_patches: int = 200_000, seed: int = 0) -> PCAProjection:
    """Fit PCA on at most ``max_patches`` random patches of ``features`` (..., C), via the C x C covariance.

    ``dims`` None or 0, or >= C, gives the identity projection.
    """
    features = np.asarray(features)
    channels = features.shape[-1]
    if not dims or dims >= channels:
        return PCAProjection(mean=None, components=None)
    if dims < 0:
        raise FeatcacheError(f"pca_dims is {dims}; expected a positive number of dimensions or 0 for none")
    patches = features.reshape(-1, channels)  # (N*h*w, C)
    if patches.shape[0] < 2:
        raise FeatcacheError(f"PCA needs at least 2 patches, got {patches.shape[0]}")
    if patches.shape[0] > max_patches:
        chosen = np.sort(np.random.default_rng(seed).choice(patches.shape[0], size=max_patches, replace=False))
        patches = patches[chosen]
    patches = patches.astype(np.float64)
    mean = patches.mean(axis=0)
    centred = patches - mean
    covariance = centred.T @ centred / (patches.shape[0] - 1)  # (C, C)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1][:dims]
    return PCAProjection(mean=mean, components=eigenvectors[:, order])


# ----------------------------------------------------------------------------- labels per patch
def _cell_index(size: int, cells: int) -> np.ndarray:
    """Patch row (or column) of each of ``size`` pixels when ``size`` pixels are split into ``cells`` patches."""
    return (np.arange(size) * cells) // size


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
        _cell_index(height, grid_height)[:, None] * grid_width + _cell_index(width, grid_width)[None, :]
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


# ----------------------------------------------------------------------------- distances
def _check_features(features: np.ndarray, labels_shape: tuple[int, ...] | None = None) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 4 or not np.issubdtype(features.dtype, np.number):
        raise FeatcacheError(f"features have shape {features.shape} and dtype {features.dtype}; expected numeric (N, h, w, C)")
    if labels_shape is not None and tuple(labels_shape) != features.shape[:3]:
        raise FeatcacheError(
            f"labels have shape {tuple(labels_shape)} but features have grid {features.shape[:3]}; expected them equal"
        )
    return features


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
    projected = _check_features(projected, np.shape(labels))
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
    features = _check_features(features, np.shape(labels))
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


# ----------------------------------------------------------------------------- kMeans baseline
def _upsample_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) by nearest neighbour, with the same pixel-to-patch map as :func:`patch_labels`."""
    rows = _cell_index(size[0], labels.shape[1])
    columns = _cell_index(size[1], labels.shape[2])
    return labels[:, rows[:, None], columns[None, :]]


def objects_per_image(masks: np.ndarray, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Number of ground-truth objects (labels other than background and ignore) in each mask (N,)."""
    counts = []
    for mask in np.asarray(masks):
        values = np.unique(mask)
        counts.append(int(((values != BACKGROUND_LABEL) & (values != ignore_label)).sum()))
    return np.array(counts, dtype=np.int64)


#: k-means++ seeding when this faiss build offers it, else faiss's random seeding.
_KMEANS_INIT: dict[str, Any] = (
    {"init_method": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS} if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS") else {}
)


def kmeans_baseline(
    features: np.ndarray,
    num_clusters: int | Sequence[int] | np.ndarray,
    output_size: tuple[int, int] | None = None,
    seed: int = 0,
    niter: int = 20,
    projection: PCAProjection | None = None,
    nredo: int = 10,
) -> np.ndarray:
    """Per-image faiss kMeans over patch features (N, h, w, C) -> cluster labels (N, h, w) or (N, *output_size).

    ``num_clusters``: one k for all images or one per image, clipped to [2, h*w] (at least two segments,
    at most one per patch). Labels are upsampled by nearest neighbour to ``output_size`` when given.
    Centroids start from faiss's k-means++ seeding where this faiss has it (1.15+, else random points), and
    the lowest-objective of ``nredo`` runs is kept: from a single seeding, a large background often takes
    two centroids while two small objects share one, a local minimum Lloyd iterations cannot leave
    (measured on constructed scenes: right in 40% of images with one run, 95% with ten).
    """
    features = _check_features(features)
    count, height, width = features.shape[:3]
    clusters = np.broadcast_to(np.asarray(num_clusters, dtype=np.int64), (count,))
    clusters = np.clip(clusters, 2, height * width) if height * width >= 2 else np.ones(count, np.int64)
    result = np.zeros((count, height * width), dtype=np.int64)
    for image_index in range(count):
        points = features[image_index].reshape(height * width, -1)  # (h*w, C)
        if projection is not None:
            points = projection.project(points)
        points = np.ascontiguousarray(points, dtype=np.float32)
        k = int(clusters[image_index])
        if k < 2:
            continue
        # min_points_per_centroid=1: 256 patches for ~8 clusters is the expected regime, not a mistake to warn about.
        kmeans = faiss.Kmeans(
            points.shape[1], k, niter=niter, nredo=nredo, seed=seed, min_points_per_centroid=1, **_KMEANS_INIT
        )
        kmeans.train(points)
        _, assignment = kmeans.index.search(points, 1)  # (h*w, 1)
        result[image_index] = assignment[:, 0]
    labels = result.reshape(count, height, width)
    return labels if output_size is None else _upsample_nearest(labels, output_size)


def kmeans_segmentation(
    features: np.ndarray,
    masks: np.ndarray,
    seed: int = 0,
    niter: int = 20,
    projection: PCAProjection | None = None,
    ignore_label: int = IGNORE_LABEL,
    nredo: int = 10,
) -> dict[str, Any]:
    """kMeans with k = objects + 1 per image, scored by ARI and FG-ARI against ``masks`` (N, M, M).

    ``seed``, ``niter``, ``projection`` and ``nredo`` as in :func:`kmeans_baseline`. Returns mean ``ari`` /
    ``fg_ari`` (images without foreground skipped for FG-ARI), the per-image arrays and the k used per image.
    """
    features = _check_features(features)
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] != features.shape[0]:
        count = features.shape[0]
        raise FeatcacheError(f"masks have shape {masks.shape}; expected ({count}, M, M) for {count} feature maps")
    clusters = objects_per_image(masks, ignore_label) + 1
    predicted = kmeans_baseline(features, clusters, masks.shape[1:], seed, niter, projection, nredo)
    ari = ari_batch(masks, predicted, ignore_background=False, ignore_label=ignore_label)
    fg_ari = ari_batch(masks, predicted, ignore_background=True, ignore_label=ignore_label)
    return {
        "ari": mean_skipping_nan(ari),
        "fg_ari": mean_skipping_nan(fg_ari),
        "images": int(features.shape[0]),
        "ari_per_image": ari,
        "fg_ari_per_image": fg_ari,
        "num_clusters": np.clip(clusters, 2, features.shape[1] * features.shape[2]),
    }


# ----------------------------------------------------------------------------- store-level drivers
FeatureLoader = Callable[[np.ndarray], np.ndarray]


def _selected_indices(store: FeatureStore, limit: int | None) -> np.ndarray:
    indices = store.valid_indices()
    if limit is not None:
        if limit < 1:
            raise FeatcacheError(f"limit is {limit}; expected a positive number of images or None for all")
        indices = indices[:limit]
    if indices.size == 0:
        raise StoreError(f"store {store.path} has no written samples to analyse")
    return indices


def _require_token_set(store: FeatureStore, token_name: str) -> None:
    """A half-tokenized set holds zeros for its pending units: refuse it instead of reporting them as code 0."""
    done, total = store.token_completeness(token_name)  # raises StoreError naming the known sets
    if done != total:
        raise StoreError(
            f"token set {token_name!r} of store {store.path} is incomplete ({done}/{total} units); finish `featcache tokenize` first"
        )


def _feature_loaders(store: FeatureStore, view: str, token_name: str | None) -> list[tuple[str, FeatureLoader]]:
    """(kind label, loader of (B, h, w, C) float32 for sample indices) for every feature kind analysed."""
    loaders: list[tuple[str, FeatureLoader]] = []
    for kind in dict.fromkeys((store.stored_kind, "final_norm")):
        if kind in store.feature_kinds:
            loaders.append((kind, lambda rows, kind=kind: np.asarray(store.features(rows, view, kind), dtype=np.float32)))
    if token_name is not None:
        _require_token_set(store, token_name)
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
        indices = _selected_indices(store, limit)
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


# ----------------------------------------------------------------------------- codes of a store
def analyze_codes(
    store_path: str | Path,
    token_name: str,
    out_dir: str | Path,
    view: str = "center",
    limit: int | None = None,
    use_gpu: bool | None = None,
    print_table: bool = False,
) -> CodeStatistics:
    """Code statistics of token set ``token_name`` over the written samples of ``view``.

    Writes ``code_statistics.json`` and the PNG plots into ``out_dir``.
    """
    store = FeatureStore(store_path)
    _require_token_set(store, token_name)
    indices = _selected_indices(store, limit)
    tokens = store.tokens(token_name, indices, view)  # (N, h, w)
    codebook = store.codebook(token_name)
    try:
        squared_errors = store.token_errors(token_name, indices, view)
    except StoreError:
        squared_errors = None  # token sets written without errors still get every other statistic
    stats = code_statistics(tokens, codebook, squared_errors, use_gpu=use_gpu)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "store": str(store.path),
        "encoder": store.attributes["encoder"]["name"],
        "weights": store.attributes["weights"]["source"],
        "random_weights": store.weights_are_random,
        "token_set": token_name,
        "view": view,
        **stats.to_dict(),
    }
    (out_dir / "code_statistics.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_code_plots(stats, out_dir)
    if print_table:
        print_code_table(stats, title=f"codes {token_name!r} of {store.path}")
    return stats
