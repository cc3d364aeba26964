"""`featcache data synth`: procedural multi-object scenes with instance masks, classes and boxes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class SynthParams:
    out: str = param("", help="Folder to write (image-folder layout; clip folders with --video).", role="out", required=True)
    images: int = param(2000, help="Number of images (or clips with --video).")
    seed: int = param(0, help="Scenes are a pure function of the seed.")
    size: int = param(256, help="Image side in pixels.")
    video: bool = param(False, help="Write clips of moving, bouncing objects.")
    frames: int = param(8, help="Frames per clip with --video.")
    min_objects: int = param(3, help="Fewest objects per scene.")
    max_objects: int = param(7, help="Most objects per scene.")


class Synth(Operation):
    """Write procedural multi-object scenes with instance masks, classes and boxes."""

    name = "synth"
    command = ("data", "synth")
    params_type = SynthParams

    def outputs(self, params: SynthParams) -> dict[str, str]:
        return {"data": params.out}

    def run(self, params: SynthParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.console import progress_bar
        from featcache.datasets import write_synthetic

        with progress_bar("images", disable=not show_progress) as progress:
            task = progress.add_task("synth", total=params.images, rate="")
            write_synthetic(
                Path(params.out), images=params.images, seed=params.seed, size=params.size, video=params.video, frames=params.frames,
                min_objects=params.min_objects, max_objects=params.max_objects, progress=lambda n: progress.update(task, completed=n),
            )
        return f"wrote {params.images} {'clips' if params.video else 'images'} to {params.out}"


SYNTH = declare(Synth())
