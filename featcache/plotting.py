"""PNG figures drawn with matplotlib's Agg canvas directly (no pyplot global state, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def save_figure(draw: Callable[[Any], None], path: Path, size: tuple[float, float] = (6.0, 4.0)) -> Path:
    """Call ``draw(axes)`` on a fresh figure of ``size`` inches and save it as PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    draw(axes)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
