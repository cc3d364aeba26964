"""The training loop every stage shares: schedule, autocast, clipping, NaN guard, logging, checkpoints, resume.

A stage supplies the model, the batches and a ``step_loss(batch, step)`` function; the loop does the rest,
so VQ pre-training and OCL training cannot drift apart in how they schedule, log, checkpoint or resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from featcache.console import error_console, format_rate, progress_bar
from featcache.errors import FeatcacheError
from featcache.quantize.schedules import warmup_cosine_lr
from featcache.runtime import autocast
from featcache.training.checkpoint import load_train_state, load_weights, save_checkpoint
from featcache.training.loader import Batch, CachedBatches
from featcache.training.metrics_log import MetricsLog


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    learning_rate: float
    warmup_fraction: float
    final_lr_ratio: float
    grad_clip: float
    amp: bool
    log_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, config: Any) -> "LoopSettings":
        """The loop's fields of a stage config (every training config names them the same)."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


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


#: step_loss(batch, step) -> (loss to minimise, named floats/tensors to log for this step)
StepLoss = Callable[[Batch, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: CachedBatches) -> int:
    """Load weights, optimizer, random generators and sampler of ``run_dir``; returns the step to continue from."""
    state = load_train_state(run_dir)
    load_weights(run_dir, model)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    batches.load_state_dict(state["loader"])
    return int(state["step"])


def train_loop(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: CachedBatches,
    settings: LoopSettings,
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
) -> LoopResult:
    """Train from ``start_step`` to ``end_step`` (of ``settings.steps``), logging and checkpointing as configured.

    ``window_metrics()`` is called at each log step for metrics accumulated since the last one (and resets
    them); ``validate()`` every ``validate_every`` steps adds ``val_*`` entries to that step's log row.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir, resume_from_step=start_step if start_step > 0 else None)
    result = LoopResult(steps=end_step - start_step, seconds=0.0, wait_seconds=0.0)
    last_good_step = start_step
    window_started, window_samples = time.perf_counter(), 0
    wait_before = batches.wait_seconds

    def checkpoint(step: int) -> None:
        train_state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": batches.state_dict(),
        }
        save_checkpoint(run_dir, model, config, {**run_info, "step": step}, train_state)

    model.train()
    started = time.perf_counter()
    with progress_bar("samples", disable=not show_progress) as progress:
        task = progress.add_task(description, total=end_step - start_step, rate="")
        for step in range(start_step, end_step):
            learning_rate = warmup_cosine_lr(step, settings.steps, settings.learning_rate, settings.warmup_fraction, settings.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            batch = batches.next()
            with autocast(device, settings.amp):
                loss, terms = step_loss(batch, step)
            if not torch.isfinite(loss):
                raise FeatcacheError(
                    f"loss became {loss.item()} at step {step}; the last good checkpoint is {run_dir} at step {last_good_step}"
                    " (lower the learning rate or check the store)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            window_samples += batch.features.shape[0]
            if len(result.first_losses) < 10:
                result.first_losses.append(float(loss.item()))
            done = step + 1
            is_last = done == end_step
            if done % settings.log_every == 0 or is_last or step == 0:  # step 1 shows the starting point
                now = time.perf_counter()
                names = list(terms)
                values = torch.stack([torch.as_tensor(terms[n], dtype=torch.float32, device=loss.device).detach() for n in names]).tolist()
                row: dict[str, Any] = {"step": done, **{f"loss_{n}": v for n, v in zip(names, values)}}
                if window_metrics is not None:
                    row.update(window_metrics())
                row["learning_rate"] = learning_rate
                row["samples_per_second"] = window_samples / (now - window_started)
                if validate is not None and validate_every and (done % validate_every == 0 or is_last):
                    model.eval()
                    row.update({f"val_{k}": v for k, v in validate().items()})
                    model.train()
                log.append(row)
                result.last_row = row
                window_started, window_samples = time.perf_counter(), 0
                progress.update(task, rate=format_rate(row["samples_per_second"], 1.0, "samples"))
            if done % settings.checkpoint_every == 0 or is_last:
                checkpoint(done)
                last_good_step = done
            progress.update(task, advance=1)
    result.seconds = time.perf_counter() - started
    result.wait_seconds = batches.wait_seconds - wait_before
    return result
