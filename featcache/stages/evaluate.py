"""`featcache eval`: ARI, FG-ARI, mBO, mIoU (Hungarian) of a trained OCL run on a store, with the protocol recorded
in eval.json (rich table, JSON and a PNG grid). Sweeps score their runs with these same params.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featcache.errors import FeatcacheError
from featcache.operations import Operation, declare, param

if TYPE_CHECKING:
    import numpy as np

    from featcache.metrics.protocols import Protocol
    from featcache.store import FeatureStore


@dataclass(frozen=True)
class EvalParams:
    run: str = param("", help="A train-ocl run folder.", role="input", required=True, argument=True)
    store: str | None = param(None, help="Store to evaluate on (default: the run's training store).", role="input")
    protocol: str = param(
        "vvo",
        help="featcache's own: vvo (background counted in mBO/mIoU) | dinosaur (not counted); each anchor's metric code "
        "exactly: vvo-code | oclf | videosaur | videosaur-instances. Every choice is written to eval.json.",
    )
    view: str = param("center", help="View of the store to score.")
    limit: int | None = param(None, help="Score at most this many images.")
    baseline: bool = param(False, help="Also score per-image kMeans on the same features.")
    masks: str | None = param(None, help="attention | decoder: masks to score (default: the run's mask_source).")
    out: str | None = param(None, help="Output folder for eval.json and masks.png (default: inside the run folder).", role="out")
    batch_size: int = param(64, help="Images per forward pass.", role="runtime")
    device: str = param("auto", help="auto | cpu | cuda", role="runtime")


class Eval(Operation):
    """ARI, FG-ARI, mBO, mIoU (Hungarian) with the protocol recorded; rich table, JSON and a PNG grid."""

    name = "eval"
    params_type = EvalParams
    replace = "overwrite"

    def validate(self, params: EvalParams) -> None:
        from featcache.metrics.protocols import get_protocol

        super().validate(params)
        get_protocol(params.protocol)

    def outputs(self, params: EvalParams) -> dict[str, str]:
        return {"out": str(params.out), "json": str(Path(str(params.out)) / "eval.json")}

    def outputs_exist(self, params: EvalParams) -> bool:
        return Path(self.outputs(params)["json"]).is_file()

    def run(self, params: EvalParams, resume: bool = False, show_progress: bool = True) -> str:
        result = evaluate_params(params, show_progress=show_progress)
        print_evaluation(result)
        metrics = result["metrics"]
        note = ", ".join(f"{name} {metrics[name]:.3f}" for name in ("ari", "fg_ari", "mbo", "miou") if isinstance(metrics.get(name), float))
        if "kmeans_baseline" in result:
            note += f"; kMeans fg_ari {result['kmeans_baseline']['fg_ari']:.3f}"
        return note


def evaluate_params(params: EvalParams, show_progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate_run` with the eval operation's params (what `featcache eval`, pipelines and sweeps call)."""
    return evaluate_run(params.run, params.store, protocol_name=params.protocol, view=params.view, batch_size=params.batch_size,
                        device=params.device, limit=params.limit, baseline=params.baseline, out=params.out, show_progress=show_progress,
                        mask_source=params.masks)


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
    import numpy as np

    from featcache import records
    from featcache.metrics.protocols import evaluate_masks, get_protocol, write_mask_grid
    from featcache.provenance import library_versions, utc_now
    from featcache.runtime import resolve_device
    from featcache.store import FeatureStore
    from featcache.training.checkpoint import read_run
    from featcache.training.runs import evaluation_generator, load_ocl_run

    if limit is not None and limit < 1:
        raise FeatcacheError(f"limit is {limit}; expected a positive number of images or None for all")
    run_dir = Path(run_dir)
    _, info = read_run(run_dir)
    if store_path is None and info["store"]["path"] is None:
        raise FeatcacheError(f"run {run_dir} was imported ({info['imported_from']['path']}) and trained on no featcache store: pass --store")
    store = FeatureStore(store_path or info["store"]["path"])
    target_device = resolve_device(device)
    store.require_intact()  # cheap: attributes as recorded at completion, every written chunk on disk
    model, config, info = load_ocl_run(run_dir, store, target_device)
    if config.tokens:
        store.require_token_set(config.tokens)
    overridden = mask_source is not None and mask_source != config.model.mask_source
    if overridden:
        model.use_mask_source(mask_source)  # type: ignore[arg-type]
    protocol = get_protocol(protocol_name)
    feature_kind = info["store"]["feature_kind"]
    if config.model.temporal.enabled:  # whole clips, recurrently: masks per frame, clip metrics pooled per clip
        from featcache.metrics.protocols import evaluate_clip_masks
        from featcache.training.clips import clip_predictor, evaluation_clips

        clips = evaluation_clips(store, limit)
        indices = np.concatenate(list(clips.values()))
        metrics, examples = evaluate_clip_masks(
            clip_predictor(model, store, view, evaluation_generator(target_device)),
            store, clips, protocol, feature_kind, config.tokens or None, target_device, view, show_progress,
        )
    else:
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
            **({"temporal": "whole clips run recurrently (every frame, in order); clip metrics pooled over each clip's frames",
                "query_init": config.model.temporal.query_init, "transit": config.model.temporal.transit}
               if config.model.temporal.enabled else {}),
        },
        "metrics": metrics.summary(),
        "evaluated": utc_now(),
        "versions": library_versions(),
    }
    if baseline:
        result["kmeans_baseline"] = kmeans_baseline_metrics(store, indices, feature_kind, view, protocol)
    out_dir = Path(out) if out else run_dir / (f"eval-{store.path.stem}-{protocol.name}" + (f"-{mask_source}-masks" if overridden else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    records.write_record(out_dir / "eval.json", result)
    if store.has_images:
        write_mask_grid(store.images(indices[: len(examples)], view=view), examples, out_dir / "masks.png")
    result["output"] = str(out_dir)
    return result


def kmeans_baseline_metrics(store: FeatureStore, indices: np.ndarray, feature_kind: str, view: str, protocol: Protocol) -> dict[str, float]:
    """Per-image kMeans (k = objects + background) on the same features, scored with the same protocol."""
    import numpy as np

    from featcache.analysis.clustering import kmeans_baseline, objects_per_image
    from featcache.metrics.protocols import MaskMetrics, score_masks

    features = store.features(indices, view=view, kind=feature_kind).astype(np.float32)  # (N, h, w, C)
    true = store.masks(indices, view=view).astype(np.int64)  # (N, M, M)
    size = true.shape[-1]
    clusters = kmeans_baseline(features, objects_per_image(true) + 1, output_size=(size, size), seed=0)
    return MaskMetrics(**score_masks(true, clusters, protocol), clip_ari={}, protocol=protocol).summary()


def print_evaluation(result: dict[str, Any]) -> None:
    from featcache.console import error_console
    from featcache.metrics.protocols import print_metrics_table

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


EVAL = declare(Eval())
