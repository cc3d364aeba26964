"""`featcache eval`: ARI, FG-ARI, mBO, mIoU (Hungarian) of a trained OCL run on a store, with the protocol recorded
in eval.json (rich table, JSON and a PNG grid). Sweeps score their runs with these same params.

Clip (video) stores are scored per frame and per clip; their kMeans baseline is run twice, per frame as on images
and tracked over each clip (featcache.analysis.tracking) so that its clip-pooled metrics mean something, and the
first clips are drawn (a grid PNG and an animated GIF per clip).
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
    baseline: bool = param(False, help="Also score per-image kMeans on the same features (clip stores: also tracked over each clip).")
    tracking: str = param(
        "centroid",
        help="Clip stores with --baseline: match kMeans clusters frame to frame by centroid (cosine distance of mean "
        "features) | iou (mask overlap with the previous frame).",
    )
    clip_pictures: int = param(4, help="Clip stores: a grid PNG and an animated GIF for each of the first N clips (0: none).")
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
        _check_clip_options(params.tracking, params.clip_pictures)

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
        if "clip_ari" in result.get("tracked_kmeans_baseline", {}):
            note += f", tracked kMeans clip_ari {result['tracked_kmeans_baseline']['clip_ari']:.3f}"
        return note


#: Matching costs of the tracked kMeans baseline (featcache.analysis.tracking.TRACKING_COSTS; kept here so that
#: declaring the operation imports neither faiss nor scipy).
TRACKING_COSTS = ("centroid", "iou")


def _check_clip_options(tracking: str, clip_pictures: int) -> None:
    if tracking not in TRACKING_COSTS:
        raise FeatcacheError(f"tracking is {tracking!r}; expected one of {', '.join(TRACKING_COSTS)}")
    if clip_pictures < 0:
        raise FeatcacheError(f"clip_pictures is {clip_pictures}; expected 0 (none) or a positive number of clips")


def evaluate_params(params: EvalParams, show_progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate_run` with the eval operation's params (what `featcache eval`, pipelines and sweeps call)."""
    return evaluate_run(params.run, params.store, protocol_name=params.protocol, view=params.view, batch_size=params.batch_size,
                        device=params.device, limit=params.limit, baseline=params.baseline, out=params.out, show_progress=show_progress,
                        mask_source=params.masks, tracking=params.tracking, clip_pictures=params.clip_pictures)


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
    tracking: str = "centroid",
    clip_pictures: int = 4,
) -> dict[str, Any]:
    """Score a run's masks on a store (default: the store it was trained on); writes eval JSON and a PNG grid.

    ``mask_source`` (``attention`` | ``decoder``) scores other masks than the run's config names; the default
    output folder then says so, so both evaluations of one run are kept. Clip stores: ``baseline`` also scores
    kMeans tracked over each clip with the ``tracking`` cost, and the first ``clip_pictures`` clips are drawn into
    ``clips/<clip id>.png`` / ``.gif``.
    """
    import numpy as np

    from featcache import records
    from featcache.metrics.protocols import evaluate_masks, get_protocol, predict_labels, write_mask_grid
    from featcache.provenance import library_versions, utc_now
    from featcache.runtime import resolve_device
    from featcache.store import FeatureStore
    from featcache.training.checkpoint import read_run
    from featcache.training.runs import evaluation_generator, load_ocl_run

    if limit is not None and limit < 1:
        raise FeatcacheError(f"limit is {limit}; expected a positive number of images or None for all")
    _check_clip_options(tracking, clip_pictures)
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
        temporal_labels = {clip: None for clip in list(clips)[:clip_pictures]}  # filled with the drawn clips' label maps
        metrics, examples = evaluate_clip_masks(
            clip_predictor(model, store, view, evaluation_generator(target_device)),
            store, clips, protocol, feature_kind, config.tokens or None, target_device, view, show_progress, keep=temporal_labels,
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
    clips = store.clips(indices) if store.clip_ids is not None else None
    pictured = list(clips)[:clip_pictures] if clips is not None else []
    tracked_labels: dict[str, np.ndarray] = {}
    if baseline and clips is None:
        result["kmeans_baseline"] = kmeans_baseline_metrics(store, indices, feature_kind, view, protocol)
    elif baseline:
        assert clips is not None
        baselines = clip_kmeans_baselines(store, clips, feature_kind, view, protocol, tracking, keep=pictured, show_progress=show_progress)
        result["kmeans_baseline"], result["tracked_kmeans_baseline"], tracked_labels = baselines
        result["kmeans_tracking"] = {
            "cost": tracking,
            "matching": "Hungarian (scipy linear_sum_assignment) of each frame's kMeans clusters to the previous frame's; "
            "unmatched clusters get fresh ids",
            "k": "objects + background per frame, as the per-frame kMeans",
        }
    out_dir = Path(out) if out else run_dir / (f"eval-{store.path.stem}-{protocol.name}" + (f"-{mask_source}-masks" if overridden else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    if pictured and config.model.temporal.enabled:  # the maps the recurrent pass scored
        predicted = {clip: temporal_labels[clip] for clip in pictured}
    elif pictured:
        predict = partial(model.predict_masks, generator=evaluation_generator(target_device))
        predicted = {clip: predict_labels(predict, store, clips[clip], feature_kind, config.tokens or None, target_device, view, batch_size)
                     for clip in pictured}  # type: ignore[index]
    if pictured:
        result["clip_pictures"] = write_clip_pictures(store, clips, predicted, tracked_labels, view, protocol.ignore_label, out_dir / "clips")  # type: ignore[arg-type]
    records.write_record(out_dir / "eval.json", result)
    if store.has_images:
        write_mask_grid(store.images(indices[: len(examples)], view=view), examples, out_dir / "masks.png")
    result["output"] = str(out_dir)
    return result


def write_clip_pictures(
    store: FeatureStore,
    clips: dict[str, np.ndarray],
    predicted: dict[str, np.ndarray],
    tracked: dict[str, np.ndarray],
    view: str,
    ignore_label: int,
    folder: Path,
) -> list[str]:
    """``<clip id>.png`` (rows = frames; image, ground truth, model masks[, tracked kMeans]) and ``<clip id>.gif`` per
    clip of ``predicted`` (label maps (T, M, M) in frame order); returns the paths written, relative to ``folder``'s parent."""
    from featcache.plotting import write_clip_pictures as draw_clip

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for clip, labels in predicted.items():
        frames = clips[clip]
        columns: dict[str, np.ndarray] = {}
        if store.has_images:
            columns["image"] = store.images(frames, view=view)
        columns["ground truth"] = store.masks(frames, view=view)
        columns["model"] = labels
        if clip in tracked:
            columns["tracked kMeans"] = tracked[clip]
        name = _file_name(clip)
        for path in draw_clip(columns, folder / f"{name}.png", folder / f"{name}.gif", ignore_label=ignore_label):
            written.append(str(path.relative_to(folder.parent)))
    return written


def _file_name(clip: str) -> str:
    """A clip id as a file name (clip ids may hold path separators)."""
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in clip).strip(".") or "clip"


def clip_kmeans_baselines(
    store: FeatureStore,
    clips: dict[str, np.ndarray],
    feature_kind: str,
    view: str,
    protocol: Protocol,
    tracking: str = "centroid",
    keep: list[str] | tuple[str, ...] = (),
    show_progress: bool = False,
) -> tuple[dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """Per-frame kMeans (k = objects + background) of every frame of ``clips`` (clip id -> store indices in frame
    order), untracked and tracked over each clip, scored per frame and per clip with ``protocol``.

    Returns (per-frame kMeans summary, tracked kMeans summary, tracked label maps (T, M, M) of the clips in ``keep``).
    Per-frame scores are the same for both (tracking only renames a frame's clusters); clip-pooled ones differ.
    """
    import numpy as np

    from featcache.analysis.clustering import objects_per_image
    from featcache.analysis.tracking import tracked_kmeans
    from featcache.console import progress_bar
    from featcache.metrics.protocols import METRIC_NAMES, MaskMetrics, score_clips, score_masks

    size = store.layout.mask_size
    frame_scores: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    true_frames: dict[str, list[np.ndarray]] = {}
    untracked_frames: dict[str, list[np.ndarray]] = {}
    tracked_frames: dict[str, list[np.ndarray]] = {}
    kept: dict[str, np.ndarray] = {}
    with progress_bar("clips", disable=not show_progress) as progress:
        task = progress.add_task("kMeans per frame, tracked", total=len(clips), rate="")
        for clip, frames in clips.items():
            features = store.features(frames, view=view, kind=feature_kind).astype(np.float32)  # (T, h, w, C)
            true = store.masks(frames, view=view).astype(np.int64)  # (T, M, M)
            untracked, tracked = tracked_kmeans(features, objects_per_image(true) + 1, output_size=(size, size), cost=tracking)
            scores = score_masks(true, untracked, protocol)
            for name in METRIC_NAMES:
                frame_scores[name].append(scores[name])
            true_frames[clip], untracked_frames[clip], tracked_frames[clip] = list(true), list(untracked), list(tracked)
            if clip in keep:
                kept[clip] = tracked
            progress.update(task, advance=1)
    per_frame = {name: np.concatenate(values) if values else np.zeros(0) for name, values in frame_scores.items()}
    summaries = []
    for labels in (untracked_frames, tracked_frames):
        clip_scores = {"clip_ari": {}, **score_clips(true_frames, labels, protocol)}
        summaries.append(MaskMetrics(**per_frame, **clip_scores, protocol=protocol).summary())
    return summaries[0], summaries[1], kept


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
        rows.append({"method": "per-frame kMeans" if "tracked_kmeans_baseline" in result else "per-image kMeans", **result["kmeans_baseline"]})
    if "tracked_kmeans_baseline" in result:
        rows.append({"method": f"tracked kMeans ({result['kmeans_tracking']['cost']})", **result["tracked_kmeans_baseline"]})
    protocol = result["protocol"]
    print_metrics_table(
        f"{result['run']} on {result['store']} ({protocol['name']} protocol, {protocol['mask_source']} masks at {protocol['resolution']} px"
        + (", RANDOM VFM weights" if result["random_weights"] else "") + ")",
        rows,
    )
    error_console.print(f"wrote {result['output']}")


EVAL = declare(Eval())
