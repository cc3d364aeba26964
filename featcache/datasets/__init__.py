"""Dataset adapters behind one spec string: ``FORMAT:PATH`` or a plain path whose layout is detected."""

from __future__ import annotations

import os
import re
from pathlib import Path

from featcache.datasets.base import IGNORE_LABEL, MASK_DTYPE, Dataset, Sample
from featcache.datasets.clevrtex import ClevrTexDataset
from featcache.datasets.clips import ClipsDataset
from featcache.datasets.coco import CocoDataset
from featcache.datasets.folder import FolderDataset
from featcache.datasets.movi import MoviDataset
from featcache.datasets.synth import write_synthetic
from featcache.datasets.videofile import VideoFileDataset
from featcache.datasets.voc import VocDataset
from featcache.datasets.ytvis import YtvisDataset
from featcache.errors import DatasetError
from featcache.registry import Registry

DATASETS = Registry[type[Dataset]]("dataset format")
DATASETS.register("folder", FolderDataset)
DATASETS.register("coco", CocoDataset)
DATASETS.register("voc", VocDataset)
DATASETS.register("clevrtex", ClevrTexDataset)
DATASETS.register("clips", ClipsDataset)
DATASETS.register("movi", MoviDataset)
DATASETS.register("ytvis", YtvisDataset)
DATASETS.register("video", VideoFileDataset)

# Two or more characters before the colon, so a Windows drive letter ("C:\data") is never read as a format.
_FORMAT_PREFIX = re.compile(r"^(?P<format>[A-Za-z][A-Za-z0-9_-]+):(?P<path>.+)$")


def _visible_subfolders(path: Path) -> list[Path]:
    with os.scandir(path) as entries:
        return [Path(entry.path) for entry in entries if entry.is_dir() and not entry.name.startswith(".")]


def detect_format(path: Path, split: str | None = None) -> str:
    """``folder`` when the dataset folder holds images/, ``clips`` when each of its subfolders does.

    With a split, the folder looked at is ``path/split`` when it exists (how both layouts take splits).
    """
    directory = path / split if split is not None and (path / split).is_dir() else path
    if (directory / "images").is_dir():
        return "folder"
    subfolders = _visible_subfolders(directory)
    if subfolders and all((subfolder / "images").is_dir() for subfolder in subfolders):
        return "clips"
    raise DatasetError(
        f"cannot detect the dataset format of {directory} (no images/ folder, nor clip folders each with images/); "
        f"write FORMAT:PATH with FORMAT one of {', '.join(DATASETS.names())}"
    )


def parse_options(kind: type[Dataset], spec: str, path: str) -> tuple[str, dict[str, int | str | None]]:
    """Split ``PATH?name=value&...`` into the path and the adapter's typed options (``video:DIR?stride=2``).

    A ``?`` is only read as options by adapters that take options, so other paths may contain one.
    """
    if not kind.options or "?" not in path:
        return path, {}
    path, _, query = path.rpartition("?")
    values: dict[str, int | str | None] = {}
    for item in query.split("&"):
        name, equals, text = item.partition("=")
        if name not in kind.options or not equals:
            expected = ", ".join(f"{option}=..." for option in kind.options)
            raise DatasetError(f"dataset spec {spec!r}: option {item!r} is not one of {expected} for {kind.kind}")
        default = kind.options[name]
        if isinstance(default, int) or default is None:  # every numeric option is an integer (None = no limit)
            try:
                values[name] = int(text)
            except ValueError:
                raise DatasetError(f"dataset spec {spec!r}: option {name}={text!r} is not an integer") from None
        else:
            values[name] = text
    return path, values


def open_dataset(spec: str, split: str | None = None) -> Dataset:
    """Open ``FORMAT:PATH`` (e.g. ``coco:/data/coco``, ``video:/data/clips?stride=2``) or a plain path with a
    detectable layout."""
    match = _FORMAT_PREFIX.match(spec)
    if match is not None:
        # An unknown prefix whose whole spec is an existing path ("my:data") is a plain path, not a format.
        is_plain_path = match["format"] not in DATASETS and os.path.exists(os.path.expanduser(spec))
        if not is_plain_path:
            kind = DATASETS.get(match["format"])
            path, options = parse_options(kind, spec, match["path"])
            return kind(path, split, **options)
    path = Path(os.path.abspath(os.path.expanduser(spec)))
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"dataset path {path} is a file; expected a folder (or write FORMAT:PATH)")
    return DATASETS.get(detect_format(path, split))(str(path), split)


__all__ = [
    "DATASETS",
    "IGNORE_LABEL",
    "MASK_DTYPE",
    "Dataset",
    "Sample",
    "detect_format",
    "open_dataset",
    "write_synthetic",
]
