"""Running the runs of a sweep: train, evaluate, write ``result.json``; serially or as dask tasks.

A unit of work is one run, or with ``--fuse-seeds`` all pending seeds of one configuration. Units never
raise for a failed run: the failure (one line, traceback in ``error.txt``) becomes the run's result, so
one broken configuration does not stop the others. What a run folder already holds decides what is
redone: a finished training is only evaluated again, a matching checkpoint resumes, and a folder trained
with another config or other inputs is moved aside (never mixed, never deleted).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from featcache import records
from featcache.config import from_dict, to_dict
from featcache.console import RandomWeightsWarning, progress_bar
from featcache.errors import FeatcacheError
from featcache.provenance import utc_now
from featcache.stages.evaluate import EvalParams, evaluate_params
from featcache.training.checkpoint import CONFIG_NAME, read_run
from featcache.training.config import OCLTrainConfig
from featcache.training.loop import TrainResult
from featcache.training.ocl import train_ocl

RESULT_NAME = "result.json"
ERROR_NAME = "error.txt"
#: Seconds to wait for a dask scheduler given with ``--scheduler`` before giving up.
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class RunTask:
    """Everything a (possibly remote) worker needs to train and evaluate one run; paths are absolute."""

    store: str
    val_store: str | None
    run_dir: str
    #: The run folder relative to the sweep folder (recorded in result.json).
    relative_dir: str
    config_id: str
    seed: int
    overrides: dict[str, Any]
    config: OCLTrainConfig
    config_sha: str
    #: What else the results depend on: store and token identities, online, evaluation settings.
    inputs: dict[str, Any]
    device: str
    online: bool
    eval: EvalParams
    #: torch threads per worker process (0: leave torch's default).
    torch_threads: int = 0
    #: On a local multi-GPU cluster, worker k trains on GPU k mod (GPU count).
    pin_gpu_by_worker: bool = False


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's result.json; a torn or broken one reads as absent (the run is evaluated again)."""
    return records.read_record(run_dir / RESULT_NAME, invalid="absent")


def run_fingerprint(config_sha: str, inputs: dict[str, Any]) -> str:
    """What a finished run is matched by: its resolved config and its inputs (stores, tokens, online, eval params)."""
    return records.fingerprint({"config_sha": config_sha, "inputs": inputs})


def is_finished(task: RunTask) -> dict[str, Any] | None:
    """The run's earlier result when it finished with the same config and inputs (skip it), else None."""
    result = read_result(Path(task.run_dir))
    if result is None or "config_sha" not in result:
        return None
    recorded = {**result, "fingerprint": run_fingerprint(result["config_sha"], result.get("inputs") or {})}
    return result if records.decide(recorded, run_fingerprint(task.config_sha, task.inputs), outputs_exist=True).decision == "done" else None


def _training_inputs(info: dict[str, Any]) -> dict[str, Any]:
    """The inputs a run folder was trained from, as recorded in its run.json."""
    tokens = info.get("tokens") or {}
    return {
        "store_identity": info["store"]["identity"],
        "tokens_vq_sha256": tokens.get("vq", {}).get("weights_sha256"),
        "online": bool(info.get("online")),
    }


def _move_aside(run_dir: Path, reason: str) -> Path:
    """Keep an old run folder next to the new one (``seed0.replaced-<time>``, REPLACED.txt says why)."""
    return records.move_aside(run_dir, reason, by="featcache sweep")


def training_state(task: RunTask) -> str:
    """``fresh``, ``resume`` or ``done`` for the run folder; a folder of another config/inputs is moved aside."""
    run_dir = Path(task.run_dir)
    if not (run_dir / CONFIG_NAME).exists():
        return "fresh"
    try:
        saved, info = read_run(run_dir)
        same_config = to_dict(from_dict(OCLTrainConfig, saved)) == to_dict(task.config)
        training_inputs = {key: task.inputs[key] for key in ("store_identity", "tokens_vq_sha256", "online")}
        same_inputs = _training_inputs(info) == training_inputs
    except (FeatcacheError, KeyError) as error:
        _move_aside(run_dir, f"unreadable run folder ({error})")
        return "fresh"
    if not (same_config and same_inputs):
        _move_aside(run_dir, "trained with another config" if not same_config else "trained from other inputs (store, tokens or --online)")
        return "fresh"
    return "done" if int(info.get("step", 0)) >= task.config.train.steps else "resume"


def _worker_device(task: RunTask) -> str:
    """The device string for this process: on a local multi-GPU dask cluster, one GPU per worker."""
    if not task.pin_gpu_by_worker or task.device not in ("auto", "cuda") or torch.cuda.device_count() < 2:
        return task.device
    from distributed import get_worker

    return f"cuda:{int(get_worker().name) % torch.cuda.device_count()}"


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """Eval metrics (and the kMeans baseline's, prefixed ``kmeans_``) without the image/clip counts."""
    counts = ("images", "clips")
    metrics = {name: value for name, value in evaluation["metrics"].items() if name not in counts}
    for name, value in evaluation.get("kmeans_baseline", {}).items():
        if name not in counts:
            metrics[f"kmeans_{name}"] = value
    return metrics


def _finish(task: RunTask, started: float, training: TrainResult | None, state: str, evaluation: dict[str, Any] | None,
            error: BaseException | None, fused: bool = False) -> dict[str, Any]:
    """Write the run's result.json (and error.txt on failure); returns the result row."""
    run_dir = Path(task.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {
        "config_id": task.config_id,
        "seed": task.seed,
        "overrides": task.overrides,
        "config_sha": task.config_sha,
        "status": "ok" if error is None else "failed",
        "metrics": _metrics(evaluation) if evaluation else {},
        "eval_images": evaluation["metrics"].get("images") if evaluation else None,
        "train_seconds": training.seconds if training else None,
        "samples_per_second": training.samples_per_second if training else None,
        "data_wait_fraction": training.data_wait_fraction if training else None,
        "training": state,
        "fused": fused,
        "seconds": time.perf_counter() - started,
        "run_dir": task.relative_dir,
        "eval_dir": Path(evaluation["output"]).name if evaluation else None,
        "inputs": task.inputs,
        "error": _one_line(error) if error is not None else None,
        "finished": utc_now(),
    }
    if error is not None:
        (run_dir / ERROR_NAME).write_text("".join(traceback.format_exception(error)))
    elif (run_dir / ERROR_NAME).exists():
        (run_dir / ERROR_NAME).unlink()
    records.write_record(run_dir / RESULT_NAME, row)
    return row


def _previous_training(task: RunTask) -> TrainResult | None:
    """Throughput of a training finished by an earlier call (kept when only the evaluation is redone)."""
    earlier = read_result(Path(task.run_dir))
    if earlier and earlier.get("config_sha") == task.config_sha and earlier.get("train_seconds") is not None:
        return TrainResult(Path(task.run_dir), task.config.train.steps, earlier["train_seconds"], earlier["samples_per_second"],
                           earlier.get("data_wait_fraction") or 0.0, [], {})
    return None


def _evaluate(task: RunTask, device: str) -> dict[str, Any]:
    """The eval operation on the run, with the sweep's eval params (run, store and device set per run)."""
    return evaluate_params(dataclasses.replace(task.eval, run=task.run_dir, store=task.val_store, device=device), show_progress=False)


@contextmanager
def _worker_context(task: RunTask) -> Iterator[str]:
    """Per-unit process settings: torch threads, the device, and no repeated random-weights warnings
    (the coordinator has warned once)."""
    if task.torch_threads:
        torch.set_num_threads(task.torch_threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        yield _worker_device(task)


def run_one(task: RunTask) -> dict[str, Any]:
    """Train (or resume, or reuse a finished training) and evaluate one run; failures become its result."""
    started = time.perf_counter()
    training: TrainResult | None = None
    state = "fresh"
    with _worker_context(task) as device:
        try:
            state = training_state(task)
            if state == "done":
                training = _previous_training(task)
            else:
                training = train_ocl(task.store, task.config, task.run_dir, device=device, resume=state == "resume",
                                     online=task.online, validation_store=task.val_store, show_progress=False)
            evaluation = _evaluate(task, device)
        except Exception as error:  # noqa: BLE001 - any failure is this run's result, the sweep goes on
            return _finish(task, started, training, state, None, error)
    return _finish(task, started, training, state, evaluation, None)


def _fused_plan(tasks: list[RunTask]) -> tuple[list[RunTask], bool]:
    """The seeds of a configuration still to train and whether they resume together.

    Fused training takes one resume flag for all seeds: when the unfinished seeds are not all at the
    same checkpoint, the partial ones are moved aside and all restart together.
    """
    states = {task.run_dir: training_state(task) for task in tasks}
    pending = [task for task in tasks if states[task.run_dir] != "done"]
    if pending and all(states[t.run_dir] == "resume" for t in pending):
        steps = {int(read_run(Path(t.run_dir))[1].get("step", 0)) for t in pending}
        if len(steps) == 1:
            return pending, True
    for task in pending:
        if states[task.run_dir] == "resume":
            _move_aside(Path(task.run_dir), "restarted with the other seeds of its fused group")
    return pending, False


def run_fused(tasks: list[RunTask]) -> list[dict[str, Any]]:
    """Train the seeds of one configuration together (helper B's fused trainer), then evaluate each."""
    started = time.perf_counter()
    with _worker_context(tasks[0]) as device:
        try:
            from featcache.training.fused import train_ocl_fused_seeds

            pending, resume = _fused_plan(tasks)
            trained: dict[str, TrainResult] = {}
            if pending:
                results = train_ocl_fused_seeds(
                    tasks[0].store, [t.config for t in pending], [Path(t.run_dir) for t in pending], device=device,
                    resume=resume, show_progress=False, validation_store=tasks[0].val_store,
                )
                trained = {t.run_dir: r for t, r in zip(pending, results)}
        except Exception as error:  # noqa: BLE001 - the whole group failed to train
            return [_finish(task, started, None, "fresh", None, error, fused=True) for task in tasks]
        rows = []
        for task in tasks:
            training = trained.get(task.run_dir) or _previous_training(task)
            state = ("resume" if resume else "fresh") if task.run_dir in trained else "done"
            try:
                rows.append(_finish(task, started, training, state, _evaluate(task, device), None, fused=True))
            except Exception as error:  # noqa: BLE001 - this seed's evaluation failed, the others go on
                rows.append(_finish(task, started, training, state, None, error, fused=True))
    return rows


def run_unit(tasks: list[RunTask], fused: bool) -> list[dict[str, Any]]:
    """One schedulable unit: a single run, or a fused group of seeds."""
    return run_fused(tasks) if fused else [run_one(task) for task in tasks]


def _run_label(count: int, seconds: float) -> str:
    return f"{seconds / count:.1f} s/run" if count else ""


def execute_serial(units: list[list[RunTask]], fused: bool, show_progress: bool) -> list[dict[str, Any]]:
    """Run the units one after another in this process, with a progress bar over runs."""
    rows: list[dict[str, Any]] = []
    with progress_bar("runs", disable=not show_progress) as progress:
        bar = progress.add_task("sweep", total=sum(len(u) for u in units), rate="")
        began = time.perf_counter()
        for unit in units:
            rows.extend(run_unit(unit, fused))
            progress.update(bar, advance=len(unit), rate=_run_label(len(rows), time.perf_counter() - began))
    return rows


def connect_scheduler(address: str) -> Any:
    """A dask client for ``address``; a scheduler that does not answer is a one-line error."""
    from dask.distributed import Client

    try:
        return Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as error:
        raise FeatcacheError(
            f"--scheduler {address}: no dask scheduler answers there within {CONNECT_TIMEOUT_S} s ({_one_line(error)})"
        ) from None


def workers_with_gpus(client: Any) -> int:
    """How many workers of a cluster advertise a ``GPU`` resource (``dask worker --resources GPU=1``)."""
    return sum(1 for worker in client.scheduler_info()["workers"].values() if worker.get("resources", {}).get("GPU", 0) > 0)


@contextmanager
def dask_client(workers: int, scheduler: str | None, gpus: int) -> Iterator[Any]:
    """A client of an existing cluster, or of a LocalCluster of ``workers`` single-threaded processes
    (each with a ``GPU: 1`` resource when ``gpus`` > 0)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        client = connect_scheduler(scheduler)
        cluster = None
    else:
        resources = {"GPU": 1} if gpus else None
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, resources=resources)
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            # Workers busy importing torch may outlive the nanny's grace period; being killed then is expected.
            nanny_log = logging.getLogger("distributed.nanny")
            level = nanny_log.level
            nanny_log.setLevel(logging.ERROR)
            try:
                cluster.close()
            finally:
                nanny_log.setLevel(level)


def execute_dask(client: Any, units: list[list[RunTask]], fused: bool, gpu_fraction: float | None, show_progress: bool) -> list[dict[str, Any]]:
    """One dask task per unit (annotated ``resources={"GPU": fraction}`` on GPUs); progress over runs as they finish."""
    from dask.distributed import as_completed

    resources = {"GPU": gpu_fraction} if gpu_fraction else None
    futures = [client.submit(run_unit, unit, fused, pure=False, resources=resources) for unit in units]
    rows: list[dict[str, Any]] = []
    with progress_bar("runs", disable=not show_progress) as progress:
        bar = progress.add_task("sweep (dask)", total=sum(len(u) for u in units), rate="")
        began = time.perf_counter()
        for future in as_completed(futures):
            unit_rows = future.result()
            rows.extend(unit_rows)
            progress.update(bar, advance=len(unit_rows), rate=_run_label(len(rows), time.perf_counter() - began))
    return rows


__all__ = [
    "RunTask",
    "connect_scheduler",
    "dask_client",
    "execute_dask",
    "execute_serial",
    "is_finished",
    "read_result",
    "run_fused",
    "run_one",
    "run_unit",
    "training_state",
    "workers_with_gpus",
]
