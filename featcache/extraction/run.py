"""`featcache extract`: dataset -> frozen VFM -> store, resumable, single-process or on dask.

Single process: decoding runs in a thread pool ahead of the model (prefetching whole units) and writes
run in a writer thread behind it, so the model is never starved and never waits on disk. Threads, not
forked processes: zarr resets its event loop after fork, and PIL/numpy/blosc release the GIL.

Dask (``workers`` or ``scheduler``): every pending unit is one task that decodes, computes and writes its
own chunks; the client alone marks units done, so the result is byte-identical to a single-process run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import zarr

from featcache.config import to_dict
from featcache.console import error_console, format_rate, progress_bar
from featcache.datasets import Dataset, open_dataset
from featcache.encoders import ENCODERS, create_encoder
from featcache.encoders.base import FrozenEncoder
from featcache.errors import FeatcacheError, StoreError
from featcache.extraction.config import ExtractConfig
from featcache.extraction.units import FeatureComputer, PreparedSample, assemble_unit, prepare_sample
from featcache.runtime import resolve_device
from featcache.store import schema
from featcache.store.lock import WriterLock, store_lock_path
from featcache.store.reader import read_attributes
from featcache.store.schema import StoreLayout
from featcache.store.writer import UnitArrays, create_store, finalize_store, is_half_created_store, mark_unit_done, staging_path, write_unit, writing
from featcache.views import ViewSpec, default_views

#: Units decoded ahead of the one being computed.
PREFETCH_UNITS = 2
#: Seconds to pause after each unit. Only for exercising interruption: tests SIGKILL a run mid-way.
_TEST_UNIT_DELAY = float(os.environ.get("FEATCACHE_TEST_UNIT_DELAY", "0"))


@dataclass
class ExtractSummary:
    store: Path
    units_total: int
    units_run: int
    samples_run: int
    samples_bad: int
    seconds: float
    complete: bool
    bad: dict[str, str] = field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.samples_run / self.seconds if self.seconds > 0 else 0.0


def store_identity(config: ExtractConfig, encoder: FrozenEncoder, dataset: Dataset, views: list[ViewSpec]) -> dict[str, Any]:
    """What must match for two runs to write into the same store."""
    return {
        "vfm": config.vfm,
        "weights_source": encoder.weights.source,
        "weights_sha256": encoder.weights.sha256,
        "resolution": encoder.resolution,
        "views": [view.name for view in views],
        "view_seed": config.view_seed,
        "image_size": config.image_size,
        "mask_size": config.mask_size if dataset.has_masks else None,
        "samples_per_chunk": config.samples_per_chunk,
        "compression_level": config.compression_level,
        "dataset_source": dataset.source(),
        "dataset_split": dataset.split,
        "dataset_fingerprint": dataset.fingerprint(),
    }


def build_layout(config: ExtractConfig, encoder: FrozenEncoder, dataset: Dataset, views: list[ViewSpec]) -> StoreLayout:
    return StoreLayout(
        num_samples=len(dataset),
        view_names=tuple(view.name for view in views),
        grid=encoder.grid,
        channels=encoder.spec.channels,
        image_size=config.image_size,
        mask_size=config.mask_size if dataset.has_masks else None,
        max_instances=dataset.max_instances,
        samples_per_chunk=config.samples_per_chunk,
        is_video=dataset.is_video,
    )


def build_attributes(
    config: ExtractConfig, encoder: FrozenEncoder, dataset: Dataset, views: list[ViewSpec], layout: StoreLayout
) -> dict[str, Any]:
    """The store's full provenance."""
    spec = encoder.spec
    return schema.store_attributes(
        identity=store_identity(config, encoder, dataset, views),
        config=to_dict(config),
        layout=layout,
        encoder={
            "name": spec.name,
            "family": spec.family,
            "timm_name": spec.timm_name,
            "patch_size": spec.patch_size,
            "resolution": encoder.resolution,
            "channels": spec.channels,
            "stored_kind": spec.stored_kind,
            "derivable_kinds": list(spec.derivable_kinds),
            "final_norm": encoder.final_norm_parameters(),
            "normalisation": {"mean": list(spec.mean), "std": list(spec.std), "input_range": "uint8 / 255"},
            "resize": "bicubic antialiased crop-resize to resolution; masks nearest",
        },
        weights={
            "source": encoder.weights.source,
            "location": encoder.weights.location,
            "sha256": encoder.weights.sha256,
            "file_sha256": encoder.weights.file_sha256,
        },
        dataset={
            "source": dataset.source(),
            "kind": dataset.kind,
            "split": dataset.split,
            "num_samples": len(dataset),
            "has_masks": dataset.has_masks,
            "is_video": dataset.is_video,
            "fingerprint": dataset.fingerprint(),
        },
        views=[{"name": v.name, "kind": v.kind, "flip": v.flip} for v in views],
        compression_level=config.compression_level,
    )


def open_or_create(
    out: Path, config: ExtractConfig, encoder: FrozenEncoder, dataset: Dataset, views: list[ViewSpec], checksums: bool = True
) -> StoreLayout:
    """Create the store, or check that an existing one was made from the same inputs (resume / append).

    The caller holds the store's lock. A store that an older featcache left half-created (killed before its
    attributes were written: only featcache's own empty arrays, no unit done) is recreated with a warning.
    """
    layout = build_layout(config, encoder, dataset, views)
    wanted = store_identity(config, encoder, dataset, views)
    if out.exists() and is_half_created_store(out):
        error_console.print(f"[bold yellow]WARNING[/]: {out} is a store whose creation was interrupted (no attributes, no unit done); recreating it")
        with writing(out, "the interrupted store's removal"):
            staging = staging_path(out)
            if staging.exists():
                shutil.rmtree(staging)
            os.rename(out, staging)  # atomic: a kill now leaves no half-deleted store; create_store removes the staging
    if out.exists():
        attributes = read_attributes(out)
        existing = attributes["identity"]
        differences = [
            f"{key}={existing.get(key)!r} (this run: {value!r})" for key, value in wanted.items() if existing.get(key) != value
        ]
        if differences:
            raise StoreError(f"store {out} was made with different inputs: {'; '.join(differences)}; use another --out")
        return layout
    with writing(out, "the parent folder"):
        out.parent.mkdir(parents=True, exist_ok=True)
    create_store(
        out,
        layout,
        build_attributes(config, encoder, dataset, views, layout),
        dataset.sample_ids,
        dataset.clip_ids(),
        dataset.frame_indices(),
        compression_level=config.compression_level,
        checksums=checksums,
    )
    return layout


def pending_units(out: Path) -> list[int]:
    done = zarr.open_array(str(out / schema.UNITS_DONE), mode="r")[:]
    return [int(u) for u in np.flatnonzero(done == 0)]


def extract(
    dataset: Dataset,
    out: str | Path,
    config: ExtractConfig,
    device: str = "auto",
    workers: int = 0,
    scheduler: str | None = None,
    skip_bad: bool = False,
    decode_threads: int = 2,
    show_progress: bool = True,
    on_unit_done: Callable[[int], None] | None = None,
    checksums: bool = True,
) -> ExtractSummary:
    """Extract ``dataset`` into the store at ``out``; resumes an interrupted run of the same inputs. ``checksums``
    (a new store's chunks end with a crc32c) is off only to measure what the checksums cost."""
    if workers < 0:
        raise FeatcacheError(f"--workers must be 0 (this process) or more (a local dask cluster), got {workers}")
    if decode_threads < 1:
        raise FeatcacheError(f"--decode-threads must be at least 1, got {decode_threads}")
    out = Path(out)
    if config.samples_per_chunk < 1 or config.batch_size < 1:
        raise FeatcacheError("samples_per_chunk and batch_size must be >= 1")
    ENCODERS.get(config.vfm)  # unknown name: fail before loading anything
    # One writer per store, taken before loading weights: a second extract into the same --out fails at once naming
    # the first; dask workers write their units under this (the coordinator's) lock.
    with WriterLock(store_lock_path(out), f"store {out}"):
        encoder = create_encoder(config.vfm, weights=config.weights, resolution=config.resolution or None, seed=config.weight_seed)
        if encoder.weights.is_random:
            error_console.print(
                f"[bold yellow]WARNING[/]: extracting with RANDOMLY INITIALISED {config.vfm} weights (seed={config.weight_seed}); "
                "the store records it and every command reading it will warn"
            )
        views = default_views(config.crops)
        layout = open_or_create(out, config, encoder, dataset, views, checksums)
        pending = pending_units(out)
        started = time.perf_counter()
        if workers > 0 or scheduler:
            bad, samples = _extract_distributed(out, dataset, config, encoder, layout, pending, workers, scheduler, skip_bad, show_progress)
        else:
            computer = FeatureComputer(encoder, resolve_device(device), config.batch_size)
            bad, samples = _extract_local(
                out, dataset, config, layout, views, computer, pending, skip_bad, decode_threads, show_progress, on_unit_done
            )
        seconds = time.perf_counter() - started
        complete = not pending_units(out)
        # Also when a run was killed (or hit a full disk) between its last unit and finalising: the completion time,
        # compression ratio and attributes fingerprint are recorded here.
        if complete and (pending or not read_attributes(out).get("completed")):
            with writing(out, "the completion attributes"):
                finalize_store(out)
    return ExtractSummary(
        store=out,
        units_total=layout.num_units,
        units_run=len(pending),
        samples_run=samples,
        samples_bad=len(bad),
        seconds=seconds,
        complete=complete,
        bad=bad,
    )


def _write_and_mark(out: Path, arrays: UnitArrays) -> None:
    write_unit(out, arrays)
    mark_unit_done(out, arrays.unit, arrays.bad)


def _extract_local(
    out: Path,
    dataset: Dataset,
    config: ExtractConfig,
    layout: StoreLayout,
    views: list[ViewSpec],
    computer: FeatureComputer,
    pending: list[int],
    skip_bad: bool,
    decode_threads: int,
    show_progress: bool,
    on_unit_done: Callable[[int], None] | None,
) -> tuple[dict[str, str], int]:
    """Decode (thread pool, prefetching) -> compute (this thread) -> write (writer thread), unit by unit."""
    sample_ids = dataset.sample_ids
    resolution = computer.encoder.resolution
    bad: dict[str, str] = {}
    samples_done = 0
    total_samples = sum(layout.unit_range(u)[1] - layout.unit_range(u)[0] for u in pending)
    decoded: deque[tuple[int, list[Future[PreparedSample]]]] = deque()
    queue = iter(pending)

    def submit_next(pool: ThreadPoolExecutor) -> None:
        unit = next(queue, None)
        if unit is None:
            return
        start, stop = layout.unit_range(unit)
        futures = [
            pool.submit(prepare_sample, dataset, index, sample_ids[index], views, config, resolution, skip_bad)
            for index in range(start, stop)
        ]
        decoded.append((unit, futures))

    writing: Future[None] | None = None
    with (
        ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="decode") as decoders,
        ThreadPoolExecutor(1, thread_name_prefix="write") as writer,
        progress_bar(disable=not show_progress) as progress,
    ):
        task = progress.add_task("extract", total=total_samples, rate="")
        began = time.perf_counter()
        try:
            for _ in range(PREFETCH_UNITS + 1):
                submit_next(decoders)
            while decoded:
                unit, futures = decoded.popleft()
                prepared = [future.result() for future in futures]
                submit_next(decoders)
                arrays = assemble_unit(unit, layout, prepared, computer)
                if writing is not None:
                    writing.result()  # the previous unit is written and marked done
                writing = writer.submit(_write_and_mark, out, arrays)
                bad.update(arrays.bad)
                samples_done += len(prepared)
                progress.update(
                    task, advance=len(prepared), rate=format_rate(samples_done, time.perf_counter() - began, "images")
                )
                if on_unit_done is not None:
                    on_unit_done(unit)
                if _TEST_UNIT_DELAY:
                    time.sleep(_TEST_UNIT_DELAY)
        finally:
            # Never leave a unit half-marked: finish the write in flight, drop queued decodes.
            for _, futures in decoded:
                for future in futures:
                    future.cancel()
            if writing is not None:
                writing.result()
    return bad, samples_done


# ----------------------------------------------------------------------------- dask


@dataclass(frozen=True)
class UnitTask:
    """Everything a dask worker needs to redo the coordinator's setup for one unit."""

    store: str
    dataset_source: str
    dataset_split: str | None
    config: ExtractConfig
    weights_sha256: str
    skip_bad: bool
    torch_threads: int


_WORKER_CACHE: dict[tuple[Any, ...], Any] = {}


def run_unit_task(task: UnitTask, unit: int) -> tuple[int, dict[str, str], int]:
    """Dask task: decode, compute and write one unit; returns (unit, bad samples, sample count)."""
    torch.set_num_threads(task.torch_threads)
    key = (task.dataset_source, task.dataset_split, task.config)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        config = task.config
        encoder = create_encoder(config.vfm, weights=config.weights, resolution=config.resolution or None, seed=config.weight_seed)
        if encoder.weights.sha256 != task.weights_sha256:
            raise StoreError(
                f"worker loaded {config.vfm} weights with sha256 {encoder.weights.sha256[:12]}, the store has "
                f"{task.weights_sha256[:12]}: workers must see the same weights file"
            )
        dataset = open_dataset(task.dataset_source, task.dataset_split)
        computer = FeatureComputer(encoder, torch.device("cpu"), config.batch_size)
        _WORKER_CACHE[key] = (dataset, computer, dataset.sample_ids)
    dataset, computer, sample_ids = _WORKER_CACHE[key]
    attributes = read_attributes(Path(task.store))
    layout = StoreLayout.from_attributes(attributes["layout"])
    views = default_views(task.config.crops)
    start, stop = layout.unit_range(unit)
    prepared = [
        prepare_sample(dataset, index, sample_ids[index], views, task.config, computer.encoder.resolution, task.skip_bad)
        for index in range(start, stop)
    ]
    arrays = assemble_unit(unit, layout, prepared, computer)
    write_unit(Path(task.store), arrays)
    return unit, arrays.bad, len(prepared)


def _extract_distributed(
    out: Path,
    dataset: Dataset,
    config: ExtractConfig,
    encoder: FrozenEncoder,
    layout: StoreLayout,
    pending: list[int],
    workers: int,
    scheduler: str | None,
    skip_bad: bool,
    show_progress: bool,
) -> tuple[dict[str, str], int]:
    """Submit one task per pending unit; mark units done here, as their results arrive."""
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler:
        client = Client(scheduler)
        cluster = None
        torch_threads = 1
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        torch_threads = max(1, (os.cpu_count() or 1) // workers)
    task = UnitTask(
        store=str(out.resolve()),
        dataset_source=dataset.source(),
        dataset_split=dataset.split,
        config=config,
        weights_sha256=encoder.weights.sha256,
        skip_bad=skip_bad,
        torch_threads=torch_threads,
    )
    bad: dict[str, str] = {}
    samples_done = 0
    total_samples = sum(layout.unit_range(u)[1] - layout.unit_range(u)[0] for u in pending)
    try:
        futures = [client.submit(run_unit_task, task, unit, pure=False) for unit in pending]
        with progress_bar(disable=not show_progress) as progress:
            bar = progress.add_task("extract (dask)", total=total_samples, rate="")
            began = time.perf_counter()
            for future in as_completed(futures):
                unit, unit_bad, count = future.result()
                mark_unit_done(out, unit, unit_bad)
                bad.update(unit_bad)
                samples_done += count
                progress.update(bar, advance=count, rate=format_rate(samples_done, time.perf_counter() - began, "images"))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return bad, samples_done
