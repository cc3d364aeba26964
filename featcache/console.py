"""Shared rich console, progress bars and warnings for long-running work."""

from __future__ import annotations

import warnings

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class RandomWeightsWarning(UserWarning):
    """Features in a store come from randomly initialised weights, not a pretrained model."""


# Every read of a random-weights store should say so, not only the first one in a process.
warnings.simplefilter("always", RandomWeightsWarning)


def progress_bar(unit: str = "images", disable: bool = False) -> Progress:
    """A rich progress bar with count, rate in ``unit``/s and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def format_rate(count: float, seconds: float, unit: str) -> str:
    """``"12.3 images/s"``; empty before the first measurement."""
    if seconds <= 0 or count <= 0:
        return ""
    return f"{count / seconds:.1f} {unit}/s"
