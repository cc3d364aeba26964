"""A whole ablation sweep three ways in one run: seeds one after another, seeds fused, and online.

The sweep is the tiny decoder comparison (configs/ablations/decoders-tiny.yaml: DINOSAUR-Mlp vs VVO-Tfd,
tiny preset) with ``seeds`` seeds, on a synthetic store with a token set. Every side trains and evaluates
every run in a fresh folder; rounds alternate between the sides and the best round of each counts, so
machine noise hits all sides alike. Reported: wall time per side and the ratios sequential / fused and
online / cached.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.table import Table

from featcache.bench.extract import machine_description
from featcache.bench.ocl import build_tokenized_benchmark_store
from featcache.console import console
from featcache.sweeps import load_sweep_spec, run_sweep

#: side name -> run_sweep keyword arguments
SIDES: dict[str, dict[str, bool]] = {
    "sequential": {"fuse_seeds": False, "online": False},
    "fused": {"fuse_seeds": True, "online": False},
    "online": {"fuse_seeds": False, "online": True},
}


def time_sweep_sides(spec_file: Path, store: Path, work_dir: Path, seeds: int, steps: int, rounds: int, device: str, eval_images: int) -> dict[str, Any]:
    """Best-of-``rounds`` wall seconds of the sweep per side (train + evaluate every run), alternating sides."""
    overrides = [f"store={store}", f"eval.limit={eval_images}", "eval.baseline=false"] + [
        f"set.{item}" for item in (f"train.steps={steps}", f"train.log_every={steps}", f"train.checkpoint_every={steps}", "validate_every=0",
                                   "train.loader=memory",
                                   # Fused seeds cannot reproduce dropout masks, so every side trains without dropout (the same runs).
                                   "model.aggregator.mlp_dropout=0", "model.projection_dropout=0", "model.decoder.dfz.dropout=0")
    ]
    spec = load_sweep_spec(spec_file, overrides)
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_index in range(rounds):
        for side, options in SIDES.items():
            started = time.perf_counter()
            result = run_sweep(spec, out=work_dir / f"round-{round_index}" / side, seeds=seeds, device=device, show_progress=False, **options)
            seconds[side].append(time.perf_counter() - started)
            if result.failed:
                raise RuntimeError(f"benchmark sweep side {side} had failed runs: {result.failed}")
    best = {side: min(values) for side, values in seconds.items()}
    return {
        "runs": seeds * len(spec.cases or [None]),
        "seconds": best,
        "all_rounds": seconds,
        "sequential_over_fused": best["sequential"] / best["fused"],
        "online_over_cached": best["online"] / best["sequential"],
    }


def run_sweep_benchmark(
    work_dir: Path,
    configs_dir: Path,
    seeds: int = 3,
    images: int = 64,
    resolution: int = 224,
    steps: int = 20,
    rounds: int = 2,
    device: str = "cpu",
    eval_images: int = 16,
) -> dict[str, Any]:
    """The decoders-tiny sweep (``seeds`` seeds x 2 decoders) sequential vs fused vs online on a synthetic store."""
    work_dir = Path(work_dir)
    store = build_tokenized_benchmark_store(work_dir, configs_dir, images, resolution, device)
    spec_file = configs_dir.parent / "ablations" / "decoders-tiny.yaml"
    figures = time_sweep_sides(spec_file, store, work_dir, seeds, steps, rounds, device, eval_images)
    return {
        "machine": machine_description(),
        "resolution": resolution,
        "seeds": seeds,
        "steps": steps,
        "rounds": rounds,
        "device": device,
        "eval_images": eval_images,
        **figures,
    }


def print_sweep_benchmark(result: dict[str, Any]) -> None:
    table = Table(
        title=f"decoders-tiny sweep: {result['runs']} runs ({result['seeds']} seeds x 2 decoders, {result['steps']} steps each, "
        f"DINOv2 ViT-S/14 random weights at {result['resolution']} px, {result['device']}; {result['machine']})"
    )
    for column in ("side", "wall (s)", "vs sequential"):
        table.add_column(column, justify="left" if column == "side" else "right")
    seconds = result["seconds"]
    for side, value in seconds.items():
        table.add_row(side, f"{value:.1f}", f"{value / seconds['sequential']:.2f}x")
    console.print(table)
    console.print(
        f"sequential / fused = [bold]{result['sequential_over_fused']:.2f}x[/]   "
        f"online / cached = [bold]{result['online_over_cached']:.2f}x[/]"
    )
