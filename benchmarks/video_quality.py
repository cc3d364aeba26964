"""Video OCL quality on synthetic bouncing-object clips: does the temporal model's transit (slots of frame t -> queries
of frame t+1) beat the same model run frame by frame (``transit: none``) on per-clip FG-ARI?

Chain (all featcache API, CPU, no downloads): ``data synth --video`` (train and held-out clips, different seeds) ->
extract with a RANDOM-weight DINOv2 ViT-S/14 (as the image quality benchmarks: README, "OCL quality"; the features
carry no position, so ``random-vfm.yaml`` adds the soft position embedding) -> per seed, train VVO-TfdT's temporal
model with a feature target and learned queries (the boxes of ``query_init: bbox`` would hand both models the objects)
and the same model with ``transit: none`` -> evaluate on the held-out clips, whole clips recurrently:
``vvo-code`` (all four metrics pooled per clip: a slot must keep its object over the clip) and ``vvo`` (per frame).
Prints a rich table and writes JSON (mean +- std over seeds).

    python benchmarks/video_quality.py --out runs/video-quality [--seeds 3] [--steps 600] [--train-clips 48]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from featcache.config import load_config, merge
from featcache.console import RandomWeightsWarning
from featcache.datasets import open_dataset, write_synthetic
from featcache.extraction import ExtractConfig, extract
from featcache.stages.evaluate import evaluate_run
from featcache.training.config import OCLTrainConfig
from featcache.training.ocl import train_ocl

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "ocl"
#: The frame-by-frame model every transit is compared with (the same config but for the transit).
NONE_CASE = "transit none (frame by frame)"
#: Metrics reported: (eval protocol, metric key) -> column name.
COLUMNS = {
    ("vvo-code", "fg_ari"): "clip FG-ARI",
    ("vvo-code", "ari"): "clip ARI",
    ("vvo-code", "mbo"): "clip mBO",
    ("vvo", "fg_ari"): "frame FG-ARI",
    ("vvo", "mbo"): "frame mBO",
}


def make_stores(out: Path, train_clips: int, val_clips: int, frames: int, size: int, resolution: int) -> tuple[Path, Path]:
    """Synthetic clips (train seed 0, held-out seed 1) and their random-weight DINOv2 stores (reused when present)."""
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=resolution, image_size=0, mask_size=size, samples_per_chunk=32, batch_size=32)
    stores = []
    for name, clips, seed in (("train", train_clips, 0), ("val", val_clips, 1)):
        data = out / "data" / name
        store = out / f"{name}.zarr"
        if not store.exists():
            write_synthetic(data, images=clips, seed=seed, size=size, video=True, frames=frames)
            extract(open_dataset(f"clips:{data}"), store, config, device="cpu", show_progress=False)
        stores.append(store)
    return stores[0], stores[1]


def run_config(transit: str, seed: int, steps: int, batch_size: int, window: int, slots: int, query_init: str = "learned") -> OCLTrainConfig:
    """vvo-tfdt + tiny-video + random-vfm with a feature target; only ``transit`` differs between the compared models.

    ``query_init: bbox`` is VVO's MOVi setup: the first frame's boxes seed the slots (the frame-by-frame model then
    starts every frame from the first frame's box queries, so it must find moved objects without the transit)."""
    config = load_config(OCLTrainConfig, [CONFIGS / "vvo-tfdt.yaml", CONFIGS / "tiny-video.yaml", CONFIGS / "random-vfm.yaml"])
    return merge(config, {
        "model": {
            "aggregator": {"num_slots": slots, "iterations": 3},
            "decoder": {"target": "features", "tfd": {"input_embedding": "learned"}},
            "temporal": {"transit": transit, "query_init": query_init, "window": window},
        },
        "tokens": "",
        "train": {"steps": steps, "batch_size": batch_size, "seed": seed, "data_seed": 0, "checkpoint_every": steps,
                  "log_every": max(1, steps // 10), "loader": "memory", "grad_clip": 0.05},
        "validate_every": 0,
    })


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """case -> column -> [mean, std] over seeds."""
    table: dict[str, dict[str, list[float]]] = {}
    for case, runs in results.items():
        table[case] = {}
        for column in COLUMNS.values():
            values = np.array([run[column] for run in runs], dtype=np.float64)
            table[case][column] = [float(np.nanmean(values)), float(np.nanstd(values))]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/video-quality"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--slots", type=int, default=6)
    parser.add_argument("--train-clips", type=int, default=48)
    parser.add_argument("--val-clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="synthetic frame size and mask size (px)")
    parser.add_argument("--resolution", type=int, default=112, help="VFM input (px): 112 = 8 x 8 patches")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--query-init", choices=("learned", "bbox"), default="learned")
    parser.add_argument("--transit", choices=("transformer", "videosaur"), default="transformer",
                        help="transit compared with frame by frame: VVO's post-norm layer or videosaur's pre-norm block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RandomWeightsWarning)  # stated in the output instead
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_store, val_store = make_stores(args.out, args.train_clips, args.val_clips, args.frames, args.size, args.resolution)
    data_seconds = time.perf_counter() - started
    cases = {f"{args.transit} transit": args.transit, NONE_CASE: "none"}  # runs are named by transit: frame-by-frame runs are reused
    results: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    for seed in range(args.seeds):
        for case, transit in cases.items():
            run = args.out / f"{transit}-seed{seed}"
            config = run_config(transit, seed, args.steps, args.batch_size, args.window, args.slots, args.query_init)
            begun = time.perf_counter()
            if not (run / "model.safetensors").exists():  # checkpoints only at the end: a folder with weights is finished
                train_ocl(train_store, config, run, device="cpu", show_progress=False, resume=(run / "run.json").exists())
            seconds[case].append(time.perf_counter() - begun)
            row: dict[str, float] = {}
            for protocol in sorted({p for p, _ in COLUMNS}):
                metrics = evaluate_run(run, val_store, protocol_name=protocol, device="cpu", show_progress=False,
                                       out=run / f"eval-val-{protocol}")["metrics"]
                row.update({column: metrics[key] for (p, key), column in COLUMNS.items() if p == protocol})
            results[case].append(row)
            print(f"seed {seed} {case}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    # The tracked per-frame kMeans baseline (k = objects + background per frame) on the same held-out features: it has
    # no training seed, so it is scored once, through the last run's evaluation (the baseline ignores the model).
    last = args.out / f"none-seed{args.seeds - 1}"
    for name, key in (("per-frame kMeans", "kmeans_baseline"), ("tracked kMeans", "tracked_kmeans_baseline")):
        results[name] = [{}]
    for protocol in sorted({p for p, _ in COLUMNS}):
        evaluated = evaluate_run(last, val_store, protocol_name=protocol, device="cpu", show_progress=False, baseline=True,
                                 clip_pictures=0, out=last / f"eval-val-{protocol}-baseline")
        for name, key in (("per-frame kMeans", "kmeans_baseline"), ("tracked kMeans", "tracked_kmeans_baseline")):
            scores = evaluated[key]
            for (p, metric), column in COLUMNS.items():
                if p != protocol:
                    continue
                # vvo-code pools every metric per clip; the kMeans summaries name pooled ones clip_<metric> when the
                # protocol also scores them per frame, as the model's metrics do.
                results[name][0][column] = scores.get(metric, float("nan"))
    table = summarise(results)
    record = {
        "what": f"temporal OCL ({args.transit} transit) vs the same model frame by frame (transit none), held-out synthetic clips",
        "random_vfm_weights": True,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "config": f"vvo-tfdt + tiny-video + random-vfm, decoder.target features, query_init {args.query_init}, 3 iterations"},
        "per_seed": results,
        "mean_std": table,
        "seconds": {"data": data_seconds, "train_and_eval_per_run": {case: float(np.mean(s)) for case, s in seconds.items() if s},
                    "total": time.perf_counter() - started},
    }
    (args.out / f"video_quality-{args.query_init}-{args.transit}.json").write_text(json.dumps(record, indent=2))
    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"{args.val_clips} held-out clips x {args.frames} frames, {args.seeds} seeds (mean +- std), RANDOM VFM weights")
    view.add_column("model")
    for column in COLUMNS.values():
        view.add_column(column, justify="right")
    for case, columns in table.items():
        view.add_row(case, *(f"{mean:.3f} +- {std:.3f}" for mean, std in columns.values()))
    Console().print(view)
    print(f"wrote {args.out / f'video_quality-{args.query_init}-{args.transit}.json'} ({record['seconds']['total']:.0f} s)")


if __name__ == "__main__":
    main()
