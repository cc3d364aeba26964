"""PNG figures drawn with matplotlib's Agg canvas directly (no pyplot global state, no display needed), and clip
pictures (grid PNG + animated GIF) drawn with Pillow."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from featcache.errors import FeatcacheError

if TYPE_CHECKING:
    import numpy as np


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


def label_palette() -> np.ndarray:
    """Colour (256, 3) uint8 of each segment id modulo 256 in mask pictures (the seed eval's masks.png uses)."""
    import numpy as np

    return np.random.default_rng(0).uniform(40, 255, size=(256, 3)).astype(np.uint8)  # (256, 3)


def write_clip_pictures(
    columns: dict[str, np.ndarray],
    png_path: Path,
    gif_path: Path | None = None,
    ignore_label: int | None = None,
    cell: int = 96,
    frame_ms: int = 300,
) -> list[Path]:
    """One clip as a grid PNG (rows = frames, one column per entry of ``columns``, titled by its name) and, with
    ``gif_path``, an animated GIF whose frames are the grid's rows.

    Each column is either images (T, I, I, 3) uint8 or label maps (T, M, M) drawn with :func:`label_palette`
    (``ignore_label`` pixels dark grey). Cells are resized to ``cell`` px (bilinear images, nearest labels).
    """
    import numpy as np
    from PIL import Image, ImageDraw

    palette = label_palette()
    frames = {len(values) for values in columns.values()}
    if len(frames) != 1:
        raise FeatcacheError(f"clip picture columns have {sorted(frames)} frames; expected the same count in each")

    def draw(values: np.ndarray) -> np.ndarray:
        if values.ndim == 3 and values.shape[-1] == 3 and values.dtype == np.uint8:
            return np.asarray(Image.fromarray(values).resize((cell, cell), Image.Resampling.BILINEAR))
        colours = palette[np.asarray(values, dtype=np.int64) % 256]
        if ignore_label is not None:
            colours[np.asarray(values) == ignore_label] = 30
        return np.asarray(Image.fromarray(colours).resize((cell, cell), Image.Resampling.NEAREST))

    rows = [np.concatenate([draw(values[t]) for values in columns.values()], axis=1) for t in range(frames.pop())]  # (cell, n*cell, 3)
    header = Image.new("RGB", (cell * len(columns), 14), (255, 255, 255))
    writer = ImageDraw.Draw(header)
    for position, name in enumerate(columns):
        writer.text((position * cell + 3, 1), name[: cell // 6], fill=(0, 0, 0))
    heading = np.asarray(header)
    Image.fromarray(np.concatenate([heading, *rows], axis=0)).save(png_path)
    written = [Path(png_path)]
    if gif_path is not None:
        pictures = [Image.fromarray(np.concatenate([heading, row], axis=0)) for row in rows]
        pictures[0].save(gif_path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
        written.append(Path(gif_path))
    return written


def write_panel_grid(columns: dict[str, np.ndarray], png_path: Path, ignore_label: int | None = None, cell: int = 96) -> Path:
    """``featcache show``'s picture: one row per sample (or per frame of a clip), one column per entry of ``columns``.

    Columns are images (N, H, W, 3) uint8 (resized bilinear; pass patch maps already enlarged with
    :func:`nearest_upsample` so each patch stays a sharp square) or label maps (N, H, W) drawn with
    :func:`label_palette`. The PNG is ``cell * len(columns)`` px wide and ``14 + cell * N`` px high (a title row).
    """
    write_clip_pictures(columns, png_path, None, ignore_label=ignore_label, cell=cell)
    return Path(png_path)


def nearest_upsample(values: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w, ...) -> (N, size, size, ...) by repeating each cell (nearest neighbour; patch maps stay blocky)."""
    import numpy as np

    rows = np.arange(size) * values.shape[1] // size
    cols = np.arange(size) * values.shape[2] // size
    return values[:, rows][:, :, cols]
