"""OCL training from the cache vs the online baseline, for vvo-tfd and dinosaur-mlp, in one run.

Both sides use the same store, config (method config + tiny preset), seed and (sample, view) sequence;
the online side decodes images, runs the VFM and, for token targets, the VQ encoder at every step.
Rounds alternate between the sides and the best round of each counts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.table import Table

from featcache.bench.extract import machine_description
from featcache.bench.vq import build_benchmark_store, cache_versus_online
from featcache.config import load_config
from featcache.console import console
from featcache.training.config import OCLTrainConfig, VQTrainConfig
from featcache.training.loop import TrainResult
from featcache.training.ocl import train_ocl
from featcache.training.tokenize import tokenize_store
from featcache.training.vq import train_vq

METHODS = ("vvo-tfd", "dinosaur-mlp")
#: ``--video``: the temporal configs, with tiny-video.yaml, on synthetic clips (samples/s counts clip windows).
VIDEO_METHODS = ("vvo-tfdt", "videosaur-mlp")


def build_tokenized_benchmark_store(work_dir: Path, configs_dir: Path, images: int, resolution: int, device: str, video: bool = False) -> Path:
    """``build_benchmark_store`` plus the token set ``vvo-c256`` (configs/vq/tiny.yaml, 20 steps) the VVO configs read."""
    store = build_benchmark_store(work_dir, images, resolution, device, video)
    vq_config = load_config(VQTrainConfig, configs_dir.parent / "vq" / "tiny.yaml")
    vq_config = replace(vq_config, train=replace(vq_config.train, steps=20, loader="memory"))
    train_vq(store, vq_config, work_dir / "vq", device=device, show_progress=False)
    tokenize_store(store, work_dir / "vq", "vvo-c256", device=device, show_progress=False)
    return store


def run_ocl_benchmark(
    work_dir: Path,
    configs_dir: Path,
    images: int = 64,
    resolution: int = 224,
    steps: int = 10,
    rounds: int = 2,
    device: str = "cpu",
    video: bool = False,
) -> dict[str, Any]:
    """Cached vs online training speed; ``video``: temporal configs on synthetic clips (``images`` frames in all)."""
    work_dir = Path(work_dir)
    store = build_tokenized_benchmark_store(work_dir, configs_dir, images, resolution, device, video)
    results: dict[str, Any] = {"machine": machine_description(), "resolution": resolution, "steps_per_round": steps, "rounds": rounds,
                               "video": video, "methods": {}}
    for method in VIDEO_METHODS if video else METHODS:
        preset = "tiny-video.yaml" if video else "tiny.yaml"
        config = load_config(OCLTrainConfig, [configs_dir / f"{method}.yaml", configs_dir / preset])
        config = replace(
            config, train=replace(config.train, steps=steps, log_every=steps, checkpoint_every=steps, loader="memory"), validate_every=0
        )

        def train(online: bool, round_index: int, method: str = method, config: OCLTrainConfig = config) -> TrainResult:
            run = work_dir / f"{method}-{'online' if online else 'cached'}-{round_index}"
            return train_ocl(store, config, run, device=device, online=online, show_progress=False)

        results["methods"][method] = {"batch_size": config.train.batch_size, **cache_versus_online(train, rounds)}
    return results


def print_ocl_benchmark(result: dict[str, Any]) -> None:
    video = result.get("video", False)
    unit = "clip windows/s" if video else "samples/s"
    table = Table(title=f"OCL training, cache vs online ({'tiny-video preset, synthetic clips' if video else 'tiny preset'}, DINOv2 ViT-S/14 "
                        f"random weights at {result['resolution']} px; {result['machine']})")
    for column in ("method", f"cache ({unit})", f"online ({unit})", "cache / online", "waiting for data (cache)"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for method, figures in result["methods"].items():
        table.add_row(
            method,
            f"{figures['cached_samples_per_second']:.1f}",
            f"{figures['online_samples_per_second']:.1f}",
            f"{figures['cached_over_online']:.1f}x",
            f"{100 * figures['cached_data_wait_fraction']:.2f}%",
        )
    console.print(table)
