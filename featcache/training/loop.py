"""The training loop every stage shares: schedule, autocast, clipping, NaN guard, logging, checkpoints, resume.

A stage supplies the model, the batches and a ``step_loss(batch, step)`` function; the loop does the rest,
so VQ pre-training and OCL training cannot drift apart in how they schedule, log, checkpoint or resume.
The same loop trains several runs at once (``train_runs`` with a ``TrainedRuns`` subclass, e.g. fused seeds):
one loss per run, one backward pass and optimizer step, and each run's own log, checkpoints and validation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from featcache.console import error_console, format_rate, progress_bar
from featcache.errors import FeatcacheError
from featcache.runtime import autocast
from featcache.training.checkpoint import Checkpoint, load_train_state, load_weights, save_checkpoints
from featcache.training.config import TrainSettings
from featcache.training.loader import Batch, CachedBatches
from featcache.training.metrics_log import MetricsLog


@dataclass
class TrainResult:
    """What a training stage reports: throughput, the share spent waiting for data, and the last log row."""

    run_dir: Path
    steps: int
    seconds: float
    samples_per_second: float
    data_wait_fraction: float
    first_losses: list[float]
    last_row: dict[str, Any]

    @classmethod
    def from_loop(cls, run_dir: Path, loop: "LoopResult", batch_size: int) -> "TrainResult":
        seconds = loop.seconds
        return cls(
            run_dir=run_dir,
            steps=loop.steps,
            seconds=seconds,
            samples_per_second=loop.steps * batch_size / seconds if seconds > 0 else 0.0,
            data_wait_fraction=loop.wait_seconds / seconds if seconds > 0 else 0.0,
            first_losses=loop.first_losses,
            last_row=loop.last_row,
        )


def print_result(result: TrainResult) -> None:
    """One line summarising a training run."""
    error_console.print(
        f"{result.run_dir}: {result.steps} steps in {result.seconds:.1f} s ({result.samples_per_second:.1f} samples/s, "
        f"{100 * result.data_wait_fraction:.1f}% waiting for data); last: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.last_row.items())
    )


@dataclass
class LoopResult:
    steps: int
    seconds: float
    wait_seconds: float
    first_losses: list[float] = field(default_factory=list)
    last_row: dict[str, Any] = field(default_factory=dict)


#: step_loss(batch, step) -> (loss to minimise, named floats/tensors to log for this step). Training several
#: runs at once, the loss and every term are (K,) tensors, one entry per run.
StepLoss = Callable[[Batch, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def restore(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: CachedBatches,
    noise_generator: torch.Generator | None = None,
) -> int:
    """Load weights, optimizer, random generators and sampler of ``run_dir``; returns the step to continue from."""
    state = load_train_state(run_dir)
    load_weights(run_dir, model)
    optimizer.load_state_dict(state["optimizer"])
    restore_random_state(run_dir, state, batches, noise_generator)
    return int(state["step"])


def restore_random_state(
    run_dir: Path, state: dict[str, Any], batches: CachedBatches | None, noise_generator: torch.Generator | None
) -> None:
    """Torch's global generators, the sampler (when given) and the run's noise generator (when given) from ``state``."""
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if batches is not None:
        batches.load_state_dict(state["loader"])
    if noise_generator is not None:
        if state.get("noise_rng") is None:
            raise FeatcacheError(
                f"cannot resume {run_dir} exactly: its train_state.pt has no noise generator state "
                "(written by an older featcache); start a new run"
            )
        noise_generator.set_state(state["noise_rng"])


@dataclass
class LoopRun:
    """One run folder the loop writes: the model saved there, its config and provenance, and its own hooks.

    ``label`` names the run in errors when several train together ("seed 3"); ``noise_generator`` is the
    run's own generator of model noise, saved with each checkpoint; ``validate()`` and ``window_metrics()``
    as in ``train_loop``.
    """

    run_dir: Path
    model: torch.nn.Module
    config: dict[str, Any]
    run_info: dict[str, Any]
    label: str = ""
    noise_generator: torch.Generator | None = None
    validate: Callable[[], dict[str, Any]] | None = None
    window_metrics: Callable[[], dict[str, Any]] | None = None


class TrainedRuns:
    """What ``train_runs`` trains: the runs whose losses one optimizer step minimises.

    This base class is one ordinary model (``runs[0].model``) trained by ``optimizer``. A subclass that
    trains several runs through shared parameters (fused seeds) overrides clipping (per run), refreshes
    each run's model from the shared parameters before it is saved or validated, and slices the optimizer
    state per run.
    """

    def __init__(self, runs: list[LoopRun], optimizer: torch.optim.Optimizer) -> None:
        self.runs = runs
        self.optimizer = optimizer

    def train(self) -> None:
        for run in self.runs:
            run.model.train()

    def clip_gradients(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.runs[0].model.parameters(), max_norm)

    def sync_models(self) -> None:
        """Make every ``run.model`` hold the run's current weights (nothing to do for a single model)."""

    def optimizer_state(self, index: int) -> dict[str, Any]:
        """The optimizer state of run ``index``, as its own optimizer would save it."""
        return self.optimizer.state_dict()


def train_loop(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: CachedBatches,
    settings: TrainSettings,
    device: torch.device,
    run_dir: Path,
    config: dict[str, Any],
    run_info: dict[str, Any],
    step_loss: StepLoss,
    start_step: int,
    end_step: int,
    description: str,
    window_metrics: Callable[[], dict[str, Any]] | None = None,
    validate: Callable[[], dict[str, Any]] | None = None,
    validate_every: int = 0,
    show_progress: bool = True,
    noise_generator: torch.Generator | None = None,
) -> LoopResult:
    """Train from ``start_step`` to ``end_step`` (of ``settings.steps``), logging and checkpointing as configured.

    ``window_metrics()`` is called at each log step for metrics accumulated since the last one (and resets
    them); ``validate()`` every ``validate_every`` steps adds ``val_*`` entries to that step's log row;
    ``noise_generator`` (the run's generator of model noise) is saved with every checkpoint.
    """
    run = LoopRun(run_dir, model, config, run_info, noise_generator=noise_generator, validate=validate, window_metrics=window_metrics)
    return train_runs(
        trained=TrainedRuns([run], optimizer),
        batches=batches,
        settings=settings,
        device=device,
        step_loss=step_loss,
        start_step=start_step,
        end_step=end_step,
        description=description,
        validate_every=validate_every,
        show_progress=show_progress,
    )[0]


def train_runs(
    *,
    trained: TrainedRuns,
    batches: CachedBatches,
    settings: TrainSettings,
    device: torch.device,
    step_loss: StepLoss,
    start_step: int,
    end_step: int,
    description: str,
    validate_every: int = 0,
    show_progress: bool = True,
) -> list[LoopResult]:
    """``train_loop`` for K >= 1 runs sharing the batches and one optimizer step: one result per run.

    ``step_loss`` returns K losses (a scalar when K = 1); their sum is back-propagated, so each run's
    parameters get the gradient of its own loss. A non-finite loss stops training naming the run.
    """
    runs, optimizer = trained.runs, trained.optimizer
    logs = []
    for run in runs:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        logs.append(MetricsLog(run.run_dir, resume_from_step=start_step if start_step > 0 else None))
    results = [LoopResult(steps=end_step - start_step, seconds=0.0, wait_seconds=0.0) for _ in runs]
    last_good_step = start_step
    window_started, window_samples = time.perf_counter(), 0
    wait_before = batches.wait_seconds

    def checkpoint(step: int) -> None:
        trained.sync_models()
        shared_state = {
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": batches.state_dict(),
        }
        units = []
        for index, (run, log) in enumerate(zip(runs, logs)):
            train_state = {**shared_state, "optimizer": trained.optimizer_state(index)}
            if run.noise_generator is not None:
                train_state["noise_rng"] = run.noise_generator.get_state()
            info = {**run.run_info, "step": step, "metrics_rows": log.rows}
            units.append(Checkpoint(run.run_dir, run.model, run.config, info, train_state))
        save_checkpoints(units)  # one unit: a kill or full disk leaves every run at its previous checkpoint or all at this one

    trained.train()
    started = time.perf_counter()
    with progress_bar("samples", disable=not show_progress) as progress:
        task = progress.add_task(description, total=end_step - start_step, rate="")
        for step in range(start_step, end_step):
            learning_rate = settings.learning_rate_at(step)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            batch = batches.next()
            with autocast(device, settings.amp):
                loss, terms = step_loss(batch, step)
            losses = loss.reshape(-1)  # (K,): one loss per run
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                index = int((~finite).nonzero()[0])
                run = runs[index]
                raise FeatcacheError(
                    f"loss{' of ' + run.label if run.label else ''} became {losses[index].item()} at step {step}; "
                    f"the last good checkpoint is {run.run_dir} at step {last_good_step} (lower the learning rate or check the store)"
                )
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            trained.clip_gradients(settings.grad_clip)
            optimizer.step()
            window_samples += batch.features.shape[0]
            if len(results[0].first_losses) < 10:
                for result, value in zip(results, losses.tolist()):
                    result.first_losses.append(float(value))
            done = step + 1
            is_last = done == end_step
            if done % settings.log_every == 0 or is_last or step == 0:  # step 1 shows the starting point
                now = time.perf_counter()
                names = list(terms)
                # (terms, K): every term of every run, fetched from the device at once
                values = torch.stack(
                    [torch.as_tensor(terms[n], dtype=torch.float32, device=loss.device).detach().reshape(-1) for n in names]
                ).tolist()
                samples_per_second = window_samples / (now - window_started)
                validating = validate_every and (done % validate_every == 0 or is_last)
                if validating:
                    trained.sync_models()
                for index, (run, log, result) in enumerate(zip(runs, logs, results)):
                    row: dict[str, Any] = {"step": done, **{f"loss_{n}": v[index] for n, v in zip(names, values)}}
                    if run.window_metrics is not None:
                        row.update(run.window_metrics())
                    row["learning_rate"] = learning_rate
                    row["samples_per_second"] = samples_per_second
                    if run.validate is not None and validating:
                        run.model.eval()
                        row.update({f"val_{k}": v for k, v in run.validate().items()})
                        run.model.train()
                    log.append(row)
                    result.last_row = row
                window_started, window_samples = time.perf_counter(), 0
                progress.update(task, rate=format_rate(samples_per_second, 1.0, "samples"))
            if done % settings.checkpoint_every == 0 or is_last:
                checkpoint(done)
                last_good_step = done
            progress.update(task, advance=1)
    seconds = time.perf_counter() - started
    for result in results:
        result.seconds = seconds
        result.wait_seconds = batches.wait_seconds - wait_before
    return results
