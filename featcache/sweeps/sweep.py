"""`featcache sweep`: every configuration x seed of a spec trained and evaluated, serially or on dask.

Everything is checked before the first run starts (configs, stores, token sets, device, protocol,
scheduler). Finished runs (same config and inputs) are skipped, so re-running a sweep after an
interruption or after adding seeds or configurations only does the missing work.
"""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache import records
from featcache.config import to_dict
from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.metrics.protocols import get_protocol
from featcache.provenance import utc_now
from featcache.runtime import resolve_device
from featcache.store import FeatureStore
from featcache.store.lock import WriterLock
from featcache.store.summary import store_summary
from featcache.sweeps.execute import RunTask, dask_client, execute_dask, execute_serial, is_finished, workers_with_gpus
from featcache.sweeps.results import summarise, write_results
from featcache.sweeps.spec import PlannedRun, SweepSpec, config_sha, expand_runs

SWEEP_NAME = "sweep.json"


@dataclass
class SweepResult:
    """The sweep folder, one row per run (in sweep order) and the per-configuration summary."""

    out: Path
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    #: Runs done by this call (the others were finished before and skipped).
    ran: int = 0
    skipped: int = 0
    random_weights: bool = False
    failed: list[dict[str, Any]] = field(default_factory=list)


def _open_store(path: str, label: str, role: str) -> FeatureStore:
    """A complete store, or a one-line error naming the spec and the key."""
    try:
        store = FeatureStore(path)
        store.require_complete()
    except StoreError as error:
        raise StoreError(f"{label}: {role}: {error}") from None
    return store


def _tokenize_hint(store: FeatureStore, name: str) -> str:
    return f"make it with `featcache tokenize --store {store.path} --vq VQ_RUN --name {name}` (VQ_RUN: a train-vq run folder)"


def check_inputs(spec: SweepSpec, runs: list[PlannedRun], online: bool) -> tuple[FeatureStore, FeatureStore]:
    """The training and evaluation stores, checked against what every configuration needs."""
    label = spec.label
    store = _open_store(spec.store, label, "store")
    val = _open_store(spec.val_store, label, "val_store") if spec.val_store else store
    if not val.has_masks:
        raise StoreError(f"{label}: store {val.path} has no instance masks; evaluation needs ground truth (set val_store to a store with masks)")
    for configuration in {run.config_id: run.configuration for run in runs}.values():
        config = configuration.config
        if not config.tokens and config.model.decoder.target != "features":
            raise ConfigError(
                f"{label}: configuration {configuration.config_id}: decoder {config.model.decoder.name} with target "
                f"{config.model.decoder.target!r} needs a token set: set tokens=NAME (token sets of {store.path}: "
                f"{', '.join(store.token_names()) or 'none'})"
            )
    for name in sorted({run.config.tokens for run in runs if run.config.tokens}):
        users = sorted({run.config_id for run in runs if run.config.tokens == name})
        for reader in dict.fromkeys([store, val]):
            if name not in reader.token_names():
                raise ConfigError(
                    f"{label}: configuration {users[0]} needs token set {name!r}, which store {reader.path} lacks "
                    f"(token sets: {', '.join(reader.token_names()) or 'none'}); {_tokenize_hint(reader, name)}"
                )
            done, total = reader.token_completeness(name)
            if done != total:
                raise StoreError(f"{label}: token set {name!r} of {reader.path} is incomplete ({done}/{total} units); re-run `featcache tokenize`")
        if val is not store and val.token_attributes(name)["vq"]["weights_sha256"] != store.token_attributes(name)["vq"]["weights_sha256"]:
            raise StoreError(f"{label}: token set {name!r} of val_store {val.path} was made by another VQ checkpoint than the store's")
    if online:
        from featcache.datasets import open_dataset

        dataset = store.attributes["dataset"]
        open_dataset(dataset["source"], dataset["split"])  # --online re-reads the images: fail now if they are gone
    return store, val


def _inputs(run: PlannedRun, store: FeatureStore, val: FeatureStore, spec: SweepSpec, online: bool) -> dict[str, Any]:
    """What a run's results depend on besides its config (JSON round-tripped so it compares with result.json)."""
    tokens = run.config.tokens
    inputs = {
        "store_identity": store.attributes["identity"],
        "tokens_vq_sha256": store.token_attributes(tokens)["vq"]["weights_sha256"] if tokens else None,
        "online": online,
        "val_store_identity": val.attributes["identity"],
        "eval": to_dict(spec.eval),
    }
    return json.loads(json.dumps(inputs))


def _units(tasks: list[RunTask], fuse_seeds: bool) -> list[list[RunTask]]:
    """Schedulable units: one per run, or one per configuration with fused seeds."""
    if not fuse_seeds:
        return [[task] for task in tasks]
    groups: dict[str, list[RunTask]] = {}
    for task in tasks:
        groups.setdefault(task.config_id, []).append(task)
    return list(groups.values())


def _check_fusable(spec: SweepSpec, groups: list[list[RunTask]]) -> None:
    """Every configuration's seeds can train fused (shared data seed, no dropout), checked before any run."""
    from featcache.training.fused import check_fusable

    for group in groups:
        try:
            check_fusable([task.config for task in group], [Path(task.run_dir) for task in group])
        except ConfigError as error:
            raise ConfigError(f"{spec.label}: configuration {group[0].config_id}: --fuse-seeds: {error}") from None


def _write_sweep_json(out: Path, record: dict[str, Any]) -> None:
    records.write_record(out / SWEEP_NAME, record)


def run_sweep(
    spec: SweepSpec,
    out: Path | None = None,
    seeds: int | list[int] | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    fuse_seeds: bool = False,
    online: bool = False,
    device: str = "auto",
    gpu_fraction: float | None = None,
    show_progress: bool = True,
) -> SweepResult:
    """Train and evaluate every run of ``spec`` not finished yet; write results, summary and provenance.

    ``workers`` > 0 runs on a dask LocalCluster of that many single-threaded processes, ``scheduler`` on an
    existing cluster (its workers must see the stores and ``out`` at the same paths). ``gpu_fraction``
    (default: the spec's) is the share of a GPU one run takes there.
    """
    out_dir = Path(out) if out is not None else Path("runs") / "sweeps" / spec.name
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(out_dir.resolve().with_name(out_dir.name + ".lock"), f"sweep folder {out_dir}"):  # one sweep per folder
        if workers < 0:
            raise ConfigError(f"--workers must be 0 (serial) or more, got {workers}")
        if workers and scheduler:
            raise ConfigError("give either --workers (a local dask cluster) or --scheduler (an existing one), not both")
        fraction = spec.gpu_fraction if gpu_fraction is None else gpu_fraction
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"--gpu-fraction must lie in (0, 1], got {fraction}")
        runs = expand_runs(spec, seeds)
        configurations = list({run.config_id: run.configuration for run in runs}.values())
        # An external cluster's workers resolve the device themselves (this machine may have no GPU): check the name only.
        if scheduler and device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise FeatcacheError(f"--device {device!r}: expected auto, cpu or cuda")
        run_device = device if scheduler else str(resolve_device(device))
        local_gpu = run_device.startswith("cuda") and not scheduler
        get_protocol(spec.eval.protocol)
        if fuse_seeds:
            if importlib.util.find_spec("featcache.training.fused") is None:
                raise FeatcacheError("--fuse-seeds needs featcache.training.fused, which this installation lacks")
            if online:
                raise ConfigError("--fuse-seeds trains from the cache: it cannot be combined with --online")
        store, val = check_inputs(spec, runs, online)

        tasks = [
            RunTask(
                store=str(store.path.resolve()),
                val_store=str(val.path.resolve()) if spec.val_store else None,
                run_dir=str((out_dir / run.relative_dir).resolve()),
                relative_dir=run.relative_dir.as_posix(),
                config_id=run.config_id,
                seed=run.seed,
                overrides=run.overrides,
                config=run.config,
                config_sha=config_sha(run.config),
                inputs=_inputs(run, store, val, spec, online),
                device=run_device,
                online=online,
                eval=spec.eval,
                torch_threads=max(1, (os.cpu_count() or 1) // workers) if workers else 0,
                pin_gpu_by_worker=bool(workers) and local_gpu,
            )
            for run in runs
        ]
        if fuse_seeds:
            _check_fusable(spec, _units(tasks, fuse_seeds))
        finished = {task.run_dir: is_finished(task) for task in tasks}
        units = _units([task for task in tasks if finished[task.run_dir] is None], fuse_seeds)

        with ExitStack() as stack:
            client = stack.enter_context(dask_client(workers, scheduler, gpus=int(local_gpu))) if units and (workers or scheduler) else None
            gpu_resources = None
            if client is not None and (local_gpu or (scheduler and device != "cpu" and workers_with_gpus(client) > 0)):
                gpu_resources = fraction
            if client is not None and scheduler and device.startswith("cuda") and gpu_resources is None:
                raise FeatcacheError(f"--device {device}: no worker of {scheduler} advertises a GPU resource (start them with --resources GPU=1)")
            out_dir.mkdir(parents=True, exist_ok=True)
            record: dict[str, Any] = {
                "name": spec.name,
                "spec": to_dict(spec),
                "seeds": sorted({run.seed for run in runs}),
                "configurations": [{"config_id": c.config_id, "values": c.values, "overrides": c.overrides, "base": c.base} for c in configurations],
                "store": store_summary(store.path),
                "val_store": store_summary(val.path) if spec.val_store else None,
                "options": {"workers": workers, "scheduler": scheduler, "fuse_seeds": fuse_seeds, "online": online, "device": device,
                            "gpu_fraction": fraction},
                **records.provenance(),
                "finished": None,
            }
            _write_sweep_json(out_dir, record)
            if client is not None:
                new_rows = execute_dask(client, units, fuse_seeds, gpu_resources, show_progress)
            else:
                new_rows = execute_serial(units, fuse_seeds, show_progress)

        by_dir = {row["run_dir"]: row for row in new_rows}
        rows = [by_dir.get(task.relative_dir) or finished[task.run_dir] for task in tasks]
        summary = summarise(rows, configurations)
        write_results(out_dir, rows, summary, spec.name)
        failed = [row for row in rows if row["status"] != "ok"]
        record["finished"] = utc_now()
        record["runs"] = {"total": len(rows), "ran": len(new_rows), "skipped": len(rows) - len(new_rows), "failed": len(failed)}
        _write_sweep_json(out_dir, record)
        return SweepResult(out_dir, rows, summary, ran=len(new_rows), skipped=len(rows) - len(new_rows),
                           random_weights=store.weights_are_random, failed=failed)


__all__ = ["SweepResult", "check_inputs", "run_sweep"]
