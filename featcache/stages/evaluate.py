"""`featcache eval`: object-discovery metrics of a trained OCL run on a store, with the protocol recorded in eval.json."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from featcache.console import error_console
from featcache.errors import FeatcacheError
from featcache.metrics.protocols import MaskMetrics, Protocol, evaluate_masks, get_protocol, print_metrics_table, score_masks, write_mask_grid
from featcache.provenance import utc_now
from featcache.runtime import resolve_device
from featcache.store import FeatureStore
from featcache.training.checkpoint import read_run
from featcache.training.runs import evaluation_generator, load_ocl_run


def evaluate_run(
    run_dir: str | Path,
    store_path: str | Path | None = None,
    protocol_name: str = "vvo",
    view: str = "center",
    batch_size: int = 64,
    device: str = "auto",
    limit: int | None = None,
    baseline: bool = False,
    out: str | Path | None = None,
    show_progress: bool = True,
    mask_source: str | None = None,
) -> dict[str, Any]:
    """Score a run's masks on a store (default: the store it was trained on); writes eval JSON and a PNG grid.

    ``mask_source`` (``attention`` | ``decoder``) scores other masks than the run's config names; the default
    output folder then says so, so both evaluations of one run are kept.
    """
    run_dir = Path(run_dir)
    _, info = read_run(run_dir)
    if store_path is None and info["store"]["path"] is None:
        raise FeatcacheError(f"run {run_dir} was imported ({info['imported_from']['path']}) and trained on no featcache store: pass --store")
    store = FeatureStore(store_path or info["store"]["path"])
    target_device = resolve_device(device)
    model, config, info = load_ocl_run(run_dir, store, target_device)
    overridden = mask_source is not None and mask_source != config.model.mask_source
    if overridden:
        model.use_mask_source(mask_source)  # type: ignore[arg-type]
    protocol = get_protocol(protocol_name)
    feature_kind = info["store"]["feature_kind"]
    indices = store.valid_indices()[:limit] if limit else store.valid_indices()
    metrics, examples = evaluate_masks(
        partial(model.predict_masks, generator=evaluation_generator(target_device)),
        store,
        indices,
        protocol,
        feature_kind,
        config.tokens or None,
        target_device,
        view,
        batch_size,
        show_progress,
    )
    result: dict[str, Any] = {
        "run": str(run_dir),
        "store": str(store.path),
        "random_weights": store.weights_are_random,
        "view": view,
        "protocol": {
            **protocol.describe(),
            "mask_source": model.config.mask_source,
            "resolution": store.layout.mask_size,
            "overlaps": "pixels of overlapping instances are ignore pixels (set by the dataset adapter)",
        },
        "metrics": metrics.summary(),
        "evaluated": utc_now(),
    }
    if baseline:
        result["kmeans_baseline"] = kmeans_baseline_metrics(store, indices, feature_kind, view, protocol)
    out_dir = Path(out) if out else run_dir / (f"eval-{store.path.stem}-{protocol.name}" + (f"-{mask_source}-masks" if overridden else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=float))
    if store.has_images:
        write_mask_grid(store.images(indices[: len(examples)], view=view), examples, out_dir / "masks.png")
    result["output"] = str(out_dir)
    return result


def kmeans_baseline_metrics(store: FeatureStore, indices: np.ndarray, feature_kind: str, view: str, protocol: Protocol) -> dict[str, float]:
    """Per-image kMeans (k = objects + background) on the same features, scored with the same protocol."""
    from featcache.analysis.clustering import kmeans_baseline, objects_per_image

    features = store.features(indices, view=view, kind=feature_kind).astype(np.float32)  # (N, h, w, C)
    true = store.masks(indices, view=view).astype(np.int64)  # (N, M, M)
    size = true.shape[-1]
    clusters = kmeans_baseline(features, objects_per_image(true) + 1, output_size=(size, size), seed=0)
    return MaskMetrics(**score_masks(true, clusters, protocol), clip_ari={}, protocol=protocol).summary()


def print_evaluation(result: dict[str, Any]) -> None:
    rows = [{"method": "model", **result["metrics"]}]
    if "kmeans_baseline" in result:
        rows.append({"method": "per-image kMeans", **result["kmeans_baseline"]})
    protocol = result["protocol"]
    print_metrics_table(
        f"{result['run']} on {result['store']} ({protocol['name']} protocol, {protocol['mask_source']} masks at {protocol['resolution']} px"
        + (", RANDOM VFM weights" if result["random_weights"] else "") + ")",
        rows,
    )
    error_console.print(f"wrote {result['output']}")
