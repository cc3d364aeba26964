"""Shared rich console, progress bars and warnings for long-running work."""

from __future__ import annotations

import sys
import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: Width for output that is not a terminal (pipes, logs, CI): wide enough that tables are not truncated.
_PIPE_WIDTH = 200
#: Results (tables, summaries) go to stdout so they can be piped.
console = Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)
#: Progress, warnings and errors go to stderr.
error_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPE_WIDTH)


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
        console=error_console,
        disable=disable,
        transient=False,
    )


def format_rate(count: float, seconds: float, unit: str) -> str:
    """``"12.3 images/s"``; empty before the first measurement."""
    if seconds <= 0 or count <= 0:
        return ""
    return f"{count / seconds:.1f} {unit}/s"
