"""What the crc32c chunk checksums cost (issue 14): extraction images/s and streaming-read throughput, with and
without, side by side in one process.

Usage::

    python benchmarks/checksums.py [--images 48] [--resolution 224] [--rounds 3] [--read-samples 2048]
        [--work-dir cache/bench-checksums] [--json out.json]

1. Extraction: the same synthetic images extracted into a store with checksums (the default for new stores) and one
   without (``extract(..., checksums=False)``), DINOv2 ViT-S/14 with random weights on the CPU; the two sides alternate
   and the best of ``--rounds`` counts for each, so machine noise hits both alike.
2. Reading: the extracted features tiled to ``--read-samples`` samples x 1 view, written with the store's codecs with
   and without the checksum (32 samples per chunk), then read as the streaming loader reads (whole chunks in shuffled
   order) and whole (``[:]``, as the in-memory loader loads); best of ``--rounds``, alternating.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from featcache.bench.extract import machine_description
from featcache.datasets import open_dataset, write_synthetic
from featcache.extraction import ExtractConfig, extract
from featcache.store import FeatureStore
from featcache.store.writer import chunk_codecs

SAMPLES_PER_CHUNK = 32


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure_extraction(work_dir: Path, images: int, resolution: int, rounds: int) -> dict[str, float]:
    data = write_synthetic(work_dir / "shapes", images=images, seed=0)
    dataset = open_dataset(str(data))
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=resolution, batch_size=16, samples_per_chunk=16)
    best = {True: float("inf"), False: float("inf")}
    for round_index in range(rounds):
        for checksums in ((True, False) if round_index % 2 == 0 else (False, True)):
            out = work_dir / f"store-{'crc' if checksums else 'plain'}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            summary = extract(dataset, out, config, device="cpu", show_progress=False, checksums=checksums)
            best[checksums] = min(best[checksums], summary.seconds)
    return {"with_checksums": images / best[True], "without_checksums": images / best[False]}


def measure_reading(work_dir: Path, features: np.ndarray, samples: int, rounds: int) -> dict[str, dict[str, float]]:
    tiled = np.concatenate([features] * -(-samples // features.shape[0]))[:samples]  # real feature statistics
    arrays = {}
    for checksums in (True, False):
        path = work_dir / f"read-{'crc' if checksums else 'plain'}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        array = zarr.create_array(str(path), shape=tiled.shape, chunks=(SAMPLES_PER_CHUNK, *tiled.shape[1:]), dtype="float16",
                                  compressors=chunk_codecs(1, checksums))
        array[:] = tiled
        arrays[checksums] = zarr.open_array(str(path), mode="r")
    order = np.random.default_rng(0).permutation(samples // SAMPLES_PER_CHUNK)
    best: dict[bool, dict[str, float]] = {True: {"stream": 0.0, "whole": 0.0}, False: {"stream": 0.0, "whole": 0.0}}
    for round_index in range(rounds):
        for checksums in ((True, False) if round_index % 2 == 0 else (False, True)):
            array = arrays[checksums]
            started = time.perf_counter()
            for chunk in order:
                array[chunk * SAMPLES_PER_CHUNK : (chunk + 1) * SAMPLES_PER_CHUNK]
            best[checksums]["stream"] = max(best[checksums]["stream"], len(order) * SAMPLES_PER_CHUNK / (time.perf_counter() - started))
            started = time.perf_counter()
            array[:]
            best[checksums]["whole"] = max(best[checksums]["whole"], samples / (time.perf_counter() - started))
    return {"with_checksums": best[True], "without_checksums": best[False]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--read-samples", type=int, default=2048)
    parser.add_argument("--work-dir", type=Path, default=Path("cache/bench-checksums"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)
    extraction = measure_extraction(args.work_dir, args.images, args.resolution, args.rounds)
    features = FeatureStore(args.work_dir / "store-crc.zarr", warn_random=False).load_features(view=0)
    reading = measure_reading(args.work_dir, features, args.read_samples, args.rounds)
    result = {
        "machine": f"{cpu_model()}; {machine_description()}",
        "vfm": "dino2-s14 (random weights)",
        "resolution": args.resolution,
        "images": args.images,
        "rounds": args.rounds,
        "extract_images_per_second": extraction,
        "extract_ratio": extraction["with_checksums"] / extraction["without_checksums"],
        "read_samples": args.read_samples,
        "read_samples_per_chunk": SAMPLES_PER_CHUNK,
        "read_feature_shape": list(features.shape[1:]),
        "read_samples_per_second": reading,
        "stream_ratio": reading["with_checksums"]["stream"] / reading["without_checksums"]["stream"],
        "whole_ratio": reading["with_checksums"]["whole"] / reading["without_checksums"]["whole"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
