"""`featcache show STORE --out PNG`: a few samples of a store as one picture: the image, the first three PCA
components of its patch features as RGB (fitted over the shown samples; optionally with DINOv2's foreground trick),
the ground-truth masks and, when given, a token set's token map and an OCL run's masks. Clip stores: one row per
frame of one clip.

The PCA lives in :mod:`featcache.analysis.feature_view`, the drawing in :mod:`featcache.plotting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.errors import FeatcacheError
from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class ShowParams:
    store: str = param("", help="A feature store.", role="input", required=True, argument=True)
    out: str = param("", help="PNG file to write.", role="out", required=True)
    samples: int = param(4, help="Samples shown (clip stores: frames of the clip, in order).")
    tokens: str | None = param(None, help="Also show this token set's token map (first index channel for MSF sets).")
    run: str | None = param(None, help="Also show the masks of this train-ocl run (a per-frame model).", role="input")
    foreground_threshold: float | None = param(
        None, help="DINOv2 foreground trick: threshold (0-1) on the first PCA component, then PCA of the foreground patches.")
    clip: str | None = param(None, help="Clip stores: the clip to show (default: the first).")
    view: str = param("center", help="View to show.")
    cell: int = param(96, help="Pixels per panel.", role="runtime")
    device: str = param("auto", help="auto | cpu | cuda (only for --run).", role="runtime")


class Show(Operation):
    """Write a PNG of a few samples: image, PCA of the patch features as RGB, ground truth, token map and run masks."""

    name = "show"
    params_type = ShowParams
    writes_out = True

    def outputs(self, params: ShowParams) -> dict[str, str]:
        return {"png": params.out}

    def owned(self, params: ShowParams) -> list[str]:
        return [params.out]

    def run(self, params: ShowParams, resume: bool = False, show_progress: bool = True) -> str:
        rows = write_show(Path(params.store), Path(params.out), samples=params.samples, tokens=params.tokens, run=params.run,
                          foreground_threshold=params.foreground_threshold, clip=params.clip, view=params.view, cell=params.cell,
                          device=params.device)
        return f"{params.out}: {rows['rows']} rows x {len(rows['columns'])} panels ({', '.join(rows['columns'])})"


def shown_indices(store: Any, samples: int, clip: str | None) -> tuple[Any, str | None]:
    """The sample indices to draw: the first ``samples`` valid samples, or the first ``samples`` frames of a clip."""
    import numpy as np

    if samples < 1:
        raise FeatcacheError(f"samples is {samples}; expected at least 1")
    valid = store.valid_indices()
    if store.clip_ids is None:
        if clip is not None:
            raise FeatcacheError(f"--clip {clip!r} given but store {store.path} holds images, not clips")
        return np.asarray(valid[:samples]), None
    clips = store.clips(valid)
    if not clips:
        raise FeatcacheError(f"store {store.path} has no written clip frames")
    chosen = clip if clip is not None else next(iter(clips))
    if chosen not in clips:
        raise FeatcacheError(f"clip {chosen!r} is not in store {store.path}; first clips: {', '.join(list(clips)[:5])}")
    return np.asarray(clips[chosen][:samples]), chosen


def write_show(
    store_path: Path,
    out: Path,
    samples: int = 4,
    tokens: str | None = None,
    run: str | None = None,
    foreground_threshold: float | None = None,
    clip: str | None = None,
    view: str = "center",
    cell: int = 96,
    device: str = "cpu",
) -> dict[str, Any]:
    """Draw the show picture into ``out``; returns the rows, columns and the chosen clip."""
    import numpy as np

    from featcache.analysis.feature_view import pca_rgb, to_uint8
    from featcache.plotting import nearest_upsample, write_panel_grid
    from featcache.store import FeatureStore

    if cell < 16:
        raise FeatcacheError(f"cell is {cell} px; expected at least 16")
    store = FeatureStore(store_path)
    if view not in store.view_names:
        raise FeatcacheError(f"view {view!r} is not in store {store.path}; its views: {', '.join(store.view_names)}")
    if tokens is not None and tokens not in store.token_names():
        raise FeatcacheError(f"token set {tokens!r} is not in store {store.path}; its token sets: {', '.join(store.token_names()) or 'none'}")
    indices, chosen_clip = shown_indices(store, samples, clip)
    features = store.features(indices, view=view).astype(np.float32)  # (N, h, w, C)
    feature_view = pca_rgb(features, foreground_threshold)
    columns: dict[str, np.ndarray] = {}
    if store.has_images:
        columns["image"] = store.images(indices, view=view)
    columns["PCA" + (" (fg)" if foreground_threshold is not None else "")] = nearest_upsample(to_uint8(feature_view.rgb), cell)
    ignore = None
    if store.has_masks:
        from featcache.datasets.base import IGNORE_LABEL

        columns["ground truth"] = store.masks(indices, view=view)
        ignore = IGNORE_LABEL
    if tokens is not None:
        token_map = store.tokens(tokens, indices, view=view)  # (N, h, w) or MSF (N, G, h, w)
        columns[f"tokens {tokens}"] = nearest_upsample(token_map[:, 0] if token_map.ndim == 4 else token_map, cell)
    if run is not None:
        columns["run masks"] = run_masks(Path(run), store, indices, view, device)
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise FeatcacheError(f"--out {out} must name a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_panel_grid(columns, out, ignore_label=ignore, cell=cell)
    return {"rows": len(indices), "columns": list(columns), "clip": chosen_clip}


def run_masks(run_dir: Path, store: Any, indices: Any, view: str, device: str) -> Any:
    """The OCL run's predicted label maps (N, M, M) of ``indices``, as `featcache eval` scores them."""
    from featcache.metrics.protocols import predict_labels
    from featcache.runtime import resolve_device
    from featcache.training.runs import evaluation_generator, load_ocl_run

    if store.layout.mask_size is None:
        raise FeatcacheError(f"store {store.path} has no masks, so no mask size to draw run {run_dir}'s masks at")
    target = resolve_device(device)
    model, config, info = load_ocl_run(run_dir, store, target)
    if config.model.temporal.enabled:
        raise FeatcacheError(f"run {run_dir} is a temporal model; its clip masks are drawn by `featcache eval` (clips/<clip>.png)")
    if config.tokens:
        store.require_token_set(config.tokens)
    from functools import partial

    predict = partial(model.predict_masks, generator=evaluation_generator(target))
    return predict_labels(predict, store, indices, info["store"]["feature_kind"], config.tokens or None, target, view)


SHOW = declare(Show())
