"""Procedural multi-object scenes with exact ground truth, for tests, demos and sanity checks without downloads.

Scenes are written in the ``folder`` layout (``clips`` for video) so they go through the same ingest path
as real data. Every scene draws from its own generator seeded by (seed, video, index), so output is
byte-identical for the same arguments and a shorter run is a prefix of a longer one.

Objects (7 shape types, solid or textured fills, small to large) are painted back to front; the instance
mask shows what stays visible. Objects that end up fully hidden are dropped and the rest renumbered, so
instance ids are always 1..K in depth order. Backgrounds are low-saturation textures and objects are
saturated colours, so objects stay distinguishable from the background.
"""

from __future__ import annotations

import colorsys
import contextlib
import functools
import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from featcache.datasets.folder import ANNOTATIONS_NAME
from featcache.errors import DatasetError

SHAPES = ("circle", "square", "triangle", "ellipse", "star", "diamond", "hexagon")
FILLS = ("solid", "stripes", "checkers", "noise")
BACKGROUNDS = ("gradient", "noise", "stripes")
GENERATOR_VERSION = 1
#: Written first into every output folder; its presence is what allows overwriting a non-empty folder.
MARKER_NAME = "synthetic.json"
#: Every annotated object shows at least this many pixels (in some frame); scenes with slivers are redrawn.
MIN_VISIBLE_PIXELS = 12
#: Chance of a solid fill; the rest is split evenly over the textured fills.
SOLID_PROBABILITY = 0.4
_MAX_ATTEMPTS = 200
# Object radius (circumradius: the whole shape fits in this disc) as a fraction of the image size.
_RADIUS_RANGE = (0.05, 0.22)
# Speed of video objects in image sizes per frame.
_SPEED_RANGE = (0.015, 0.05)
_PNG_COMPRESS_LEVEL = 1
# Runs with fewer frames than this stay in-process (starting workers costs about a second).
_PARALLEL_MIN_FRAMES = 256
_MAX_WORKERS = 8


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene; positions are pixel coordinates of its centre."""

    shape: int  # index into SHAPES, also the class id
    radius: float  # circumradius in pixels
    angle: float  # rotation in radians
    aspect: float  # minor / major axis for ellipse and diamond
    center: tuple[float, float]  # (x, y) at frame 0
    velocity: tuple[float, float]  # (x, y) pixels per frame; (0, 0) for still images
    fill: int  # index into FILLS
    colors: np.ndarray  # (2, 3) float32 RGB in 0..255; the second colour is used by textures
    texture_angle: float  # radians, for stripes and checkers
    texture_period: float  # pixels per stripe pair / checker pair
    noise: np.ndarray | None  # (N, N) float32 in 0..1 over object-local pixels, for the noise fill

    def position(self, frame: int, size: int) -> tuple[float, float]:
        """Centre at ``frame``: constant velocity, reflected at the borders (a closed-form bounce)."""
        if self.velocity == (0.0, 0.0):
            return self.center
        low, high = _center_bounds(self.radius, size)
        span = high - low
        coordinates = []
        for start, speed in zip(self.center, self.velocity):
            if span <= 0:
                coordinates.append(start)
                continue
            travelled = (start - low + speed * frame) % (2 * span)
            coordinates.append(low + (travelled if travelled <= span else 2 * span - travelled))
        return coordinates[0], coordinates[1]


@dataclass
class _Footprint:
    """Pixels of one object in one frame: a window of the image and the shape inside it."""

    rows: slice
    columns: slice
    inside: np.ndarray  # (h, w) bool
    local_u: np.ndarray  # (n,) object-local coordinates of the inside pixels (rotated with the object)
    local_v: np.ndarray  # (n,)


def _center_bounds(radius: float, size: int) -> tuple[float, float]:
    """Range a moving object's centre bounces in: mostly inside the image, never fully outside."""
    margin = min(0.6 * radius, size / 2)
    return margin, size - margin


def _regular_polygon(u: np.ndarray, v: np.ndarray, radius: float, sides: int) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    apothem = radius * math.cos(math.pi / sides)
    for side in range(sides):
        normal = 2 * math.pi * side / sides
        inside &= u * math.cos(normal) + v * math.sin(normal) <= apothem
    return inside


def _star(u: np.ndarray, v: np.ndarray, radius: float, points: int = 5, inner_ratio: float = 0.45) -> np.ndarray:
    """Five-pointed star: fold each pixel into the first half sector and test against the tip-to-notch edge."""
    sector = 2 * math.pi / points
    distance = np.hypot(u, v)
    angle = np.mod(np.arctan2(v, u), sector)
    angle = np.minimum(angle, sector - angle)  # in [0, sector / 2]
    folded_x, folded_y = distance * np.cos(angle), distance * np.sin(angle)
    notch_x, notch_y = inner_ratio * radius * math.cos(sector / 2), inner_ratio * radius * math.sin(sector / 2)
    edge_x, edge_y = notch_x - radius, notch_y
    return edge_x * folded_y - edge_y * (folded_x - radius) >= 0


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray, radius: float, aspect: float) -> np.ndarray:
    """(h, w) bool: which object-local coordinates fall inside ``shape`` of circumradius ``radius``."""
    if shape == "circle":
        return u * u + v * v <= radius * radius
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= radius / math.sqrt(2)
    if shape == "triangle":
        return _regular_polygon(u, v, radius, 3)
    if shape == "ellipse":
        return (u / radius) ** 2 + (v / (aspect * radius)) ** 2 <= 1
    if shape == "star":
        return _star(u, v, radius)
    if shape == "diamond":
        return np.abs(u) / radius + np.abs(v) / (aspect * radius) <= 1
    if shape == "hexagon":
        return _regular_polygon(u, v, radius, 6)
    raise ValueError(f"unknown shape {shape!r}")


def _footprint(item: SceneObject, center: tuple[float, float], size: int) -> _Footprint | None:
    """Rasterise ``item`` at ``center`` inside its bounding window; None when it lies outside the image."""
    center_x, center_y = center
    x0, x1 = max(0, math.floor(center_x - item.radius)), min(size, math.ceil(center_x + item.radius) + 1)
    y0, y1 = max(0, math.floor(center_y - item.radius)), min(size, math.ceil(center_y + item.radius) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    x = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - center_x  # (1, w) pixel centres
    y = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - center_y  # (h, 1)
    cosine, sine = math.cos(item.angle), math.sin(item.angle)
    u = x * cosine + y * sine  # (h, w) coordinates in the object's rotated frame
    v = y * cosine - x * sine
    inside = _shape_inside(SHAPES[item.shape], u, v, item.radius, item.aspect)
    if not inside.any():
        return None
    return _Footprint(slice(y0, y1), slice(x0, x1), inside, u[inside], v[inside])


def _fill(item: SceneObject, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n, 3) float32 colours of the object's pixels at object-local coordinates (textures move with it)."""
    first, second = item.colors
    fill = FILLS[item.fill]
    if fill == "solid":
        return np.broadcast_to(first, (u.size, 3))
    cosine, sine = math.cos(item.texture_angle), math.sin(item.texture_angle)
    along = u * cosine + v * sine
    across = v * cosine - u * sine
    half_period = item.texture_period / 2
    if fill == "stripes":
        weight = np.floor(along / half_period) % 2
    elif fill == "checkers":
        weight = (np.floor(along / half_period) + np.floor(across / half_period)) % 2
    elif fill == "noise":
        assert item.noise is not None
        side = item.noise.shape[0]
        columns = np.clip(np.floor(u).astype(np.int64) + side // 2, 0, side - 1)
        rows = np.clip(np.floor(v).astype(np.int64) + side // 2, 0, side - 1)
        weight = item.noise[rows, columns]
    else:
        raise ValueError(f"unknown fill {fill!r}")
    return _blend(first, second, weight.astype(np.float32))


def _smooth_noise(random: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """(side, side) float32 in 0..1: a ``cells`` x ``cells`` random grid upsampled bicubically (value noise)."""
    grid = (random.random((cells, cells)) * 255).astype(np.uint8)
    upsampled = Image.fromarray(grid).resize((side, side), Image.Resampling.BICUBIC)
    values = np.asarray(upsampled, dtype=np.float32) / 255
    return np.clip((values - 0.5) * 1.8 + 0.5, 0, 1)  # stretch contrast so blobs are visible


def _blend(first: np.ndarray, second: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(..., 3) colours ``first + (second - first) * weight``, one channel at a time (much faster than
    broadcasting over a trailing axis of 3)."""
    return np.stack([first[channel] + (second[channel] - first[channel]) * weight for channel in range(3)], axis=-1)


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32) * 255


def _object_colors(random: np.random.Generator) -> np.ndarray:
    """(2, 3): a saturated colour and a second one of clearly different hue (for textures)."""
    hue = random.random()
    first = _hsv(hue, random.uniform(0.65, 1.0), random.uniform(0.6, 1.0))
    second = _hsv(hue + random.uniform(0.25, 0.75), random.uniform(0.65, 1.0), random.uniform(0.4, 1.0))
    return np.stack([first, second])


def _background(random: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32: a gradient, smooth noise or soft stripes between two greyish colours."""
    hue = random.random()
    value = random.uniform(0.3, 0.75)
    first = _hsv(hue, random.uniform(0.0, 0.25), value)
    second_value = float(np.clip(value + random.choice([-1, 1]) * random.uniform(0.12, 0.25), 0.05, 0.95))
    second = _hsv(hue + random.uniform(-0.1, 0.1), random.uniform(0.0, 0.25), second_value)
    kind = BACKGROUNDS[random.integers(len(BACKGROUNDS))]
    angle = random.uniform(0, 2 * math.pi)
    coordinates = np.arange(size, dtype=np.float32) + 0.5
    along = coordinates[None, :] * math.cos(angle) + coordinates[:, None] * math.sin(angle)  # (size, size)
    if kind == "gradient":
        weight = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == "noise":
        weight = _smooth_noise(random, size, int(random.integers(3, 9)))
    else:
        period = random.uniform(size / 16, size / 5)
        weight = 0.5 + 0.5 * np.sin(along * (2 * math.pi / period))
    return _blend(first, second, np.clip(weight, 0, 1).astype(np.float32))


def _sample_object(random: np.random.Generator, size: int, video: bool) -> SceneObject:
    shape = int(random.integers(len(SHAPES)))
    # Log-uniform radius: as many small objects as large ones.
    radius = max(2.0, size * math.exp(random.uniform(math.log(_RADIUS_RANGE[0]), math.log(_RADIUS_RANGE[1]))))
    if video:
        low, high = _center_bounds(radius, size)
        center = (float(random.uniform(low, high)), float(random.uniform(low, high)))
        speed = max(1.0, size * random.uniform(*_SPEED_RANGE))
        heading = random.uniform(0, 2 * math.pi)
        velocity = (speed * math.cos(heading), speed * math.sin(heading))
    else:
        center = (float(random.uniform(0.05, 0.95) * size), float(random.uniform(0.05, 0.95) * size))
        velocity = (0.0, 0.0)
    fill = 0 if random.random() < SOLID_PROBABILITY else int(random.integers(1, len(FILLS)))  # FILLS[0] is solid
    side = 2 * math.ceil(radius) + 2
    return SceneObject(
        shape=shape,
        radius=radius,
        angle=float(random.uniform(0, 2 * math.pi)),
        aspect=float(random.uniform(0.45, 0.75)),
        center=center,
        velocity=velocity,
        fill=fill,
        colors=_object_colors(random),
        texture_angle=float(random.uniform(0, math.pi)),
        texture_period=max(4.0, radius * random.uniform(0.25, 0.6)),
        noise=_smooth_noise(random, side, int(random.integers(3, 7))) if FILLS[fill] == "noise" else None,
    )


def _rasterise(objects: list[SceneObject], size: int, frames: int) -> tuple[list[list[_Footprint | None]], np.ndarray]:
    """Footprints per frame and object, and visible pixel counts (frames, objects) after occlusion."""
    footprints = []
    visible = np.zeros((frames, len(objects)), dtype=np.int64)
    for frame in range(frames):
        labels = np.zeros((size, size), dtype=np.int32)  # (size, size) 1-based position in depth order
        frame_footprints = [_footprint(item, item.position(frame, size), size) for item in objects]
        for position, footprint in enumerate(frame_footprints, start=1):
            if footprint is not None:
                labels[footprint.rows, footprint.columns][footprint.inside] = position
        visible[frame] = np.bincount(labels.ravel(), minlength=len(objects) + 1)[1:]
        footprints.append(frame_footprints)
    return footprints, visible


@dataclass
class _Frame:
    image: np.ndarray  # (size, size, 3) uint8
    mask: np.ndarray  # (size, size) uint8, 0 = background, k = object k
    annotation: dict[str, list[Any]]


def _scene(
    random: np.random.Generator, size: int, frames: int, video: bool, minimum: int, maximum: int
) -> list[_Frame]:
    """Draw scenes until one shows at least ``minimum`` objects, then render its frames with ground truth."""
    for _ in range(_MAX_ATTEMPTS):
        candidates = [_sample_object(random, size, video) for _ in range(int(random.integers(minimum, maximum + 1)))]
        footprints, visible = _rasterise(candidates, size, frames)
        most_visible = visible.max(axis=0)  # (objects,) best frame of each object
        shown = most_visible > 0
        if shown.sum() >= minimum and (most_visible[shown] >= MIN_VISIBLE_PIXELS).all():
            break
    else:  # only when the image is far too small for the requested number of objects
        raise DatasetError(
            f"could not draw a scene with {minimum} visible objects in {_MAX_ATTEMPTS} tries at size {size}; "
            "expected fewer objects or a larger size"
        )
    # Hidden objects never contribute a pixel, so dropping them leaves the picture unchanged.
    objects = [item for item, keep in zip(candidates, shown) if keep]
    background = _background(random, size)
    return [
        _render(objects, [footprint for footprint, keep in zip(frame_footprints, shown) if keep], background)
        for frame_footprints in footprints
    ]


def _render(objects: list[SceneObject], footprints: list[_Footprint | None], background: np.ndarray) -> _Frame:
    """Paint objects back to front over ``background``; annotate classes and visible boxes/areas."""
    image = background.copy()  # (size, size, 3) float32
    mask = np.zeros(background.shape[:2], dtype=np.uint8)
    for instance_id, (item, footprint) in enumerate(zip(objects, footprints), start=1):
        if footprint is None:
            continue
        image[footprint.rows, footprint.columns][footprint.inside] = _fill(item, footprint.local_u, footprint.local_v)
        mask[footprint.rows, footprint.columns][footprint.inside] = instance_id
    boxes: list[list[int] | None] = []
    areas: list[int] = []
    full_areas: list[int] = []
    for instance_id, footprint in enumerate(footprints, start=1):
        if footprint is None:
            boxes.append(None)
            areas.append(0)
            full_areas.append(0)
            continue
        window = mask[footprint.rows, footprint.columns] == instance_id  # visible part inside the window
        rows, columns = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
        full_areas.append(int(footprint.inside.sum()))
        areas.append(int(window.sum()))
        if rows.size == 0:  # hidden in this frame (video): it keeps its id but has no box
            boxes.append(None)
            continue
        top, left = footprint.rows.start, footprint.columns.start
        boxes.append([int(left + columns[0]), int(top + rows[0]), int(left + columns[-1] + 1), int(top + rows[-1] + 1)])
    annotation = {
        "classes": [item.shape for item in objects],
        "boxes": boxes,
        "areas": areas,
        "full_areas": full_areas,
        "fills": [FILLS[item.fill] for item in objects],
    }
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return _Frame(image=pixels, mask=mask, annotation=annotation)


def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")


def _by_id(tables: dict[str, dict[str, Any]], sample_id: str, annotation: dict[str, list[Any]]) -> None:
    """File one image's annotation under ``sample_id`` in each per-key table (classes, boxes, ...)."""
    for key, value in annotation.items():
        tables.setdefault(key, {})[sample_id] = value


@dataclass(frozen=True)
class _Job:
    """Everything a (possibly separate) worker process needs to write scene ``index``."""

    out: Path
    seed: int
    size: int
    video: bool
    frames: int
    min_objects: int
    max_objects: int
    id_width: int
    generator: dict[str, Any]


def _write_scene(job: _Job, index: int) -> dict[str, list[Any]] | None:
    """Draw scene ``index`` from its own seed and write its PNGs (and, for a clip, its annotations.json).

    Returns the image's annotation (still images), or None for a clip, which is complete on disk.
    """
    random = np.random.default_rng([job.seed, int(job.video), index])
    scene = _scene(random, job.size, job.frames, job.video, job.min_objects, job.max_objects)
    sample_id = f"{index:0{job.id_width}d}"
    if not job.video:
        _write_png(scene[0].image, job.out / "images" / f"{sample_id}.png")
        _write_png(scene[0].mask, job.out / "masks" / f"{sample_id}.png")
        return scene[0].annotation
    clip = job.out / sample_id
    tables: dict[str, dict[str, Any]] = {}
    for folder in ("images", "masks"):
        (clip / folder).mkdir(parents=True, exist_ok=True)
    for frame_index, frame in enumerate(scene):
        frame_id = f"{frame_index:05d}"
        _write_png(frame.image, clip / "images" / f"{frame_id}.png")
        _write_png(frame.mask, clip / "masks" / f"{frame_id}.png")
        _by_id(tables, frame_id, frame.annotation)
    _write_json({**tables, "clip": sample_id, "generator": job.generator}, clip / ANNOTATIONS_NAME)
    return None


def _worker_count(frames_total: int) -> int:
    """Processes to use: one per available core for big runs, none (in-process) for small ones."""
    if frames_total < _PARALLEL_MIN_FRAMES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, _MAX_WORKERS))


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    generator = data.get("generator") if isinstance(data, dict) else None
    return generator if isinstance(generator, dict) else None


def _name_width(count: int) -> int:
    return max(6, len(str(max(count - 1, 0))))


def _clear_previous_output(out: Path) -> None:
    """Make ``out`` ready: refuse foreign non-empty folders, remove what an earlier generator run wrote."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file; expected a folder for the synthetic dataset")
    if not out.is_dir() or not any(out.iterdir()):
        return
    previous = _read_marker(out / MARKER_NAME)
    if previous is None:
        raise DatasetError(
            f"{out} is not empty and was not written by write_synthetic (no readable {MARKER_NAME}); "
            "expected an empty or new folder"
        )
    if previous.get("video"):
        count = int(previous.get("images", 0))
        for index in range(count):
            shutil.rmtree(out / f"{index:0{_name_width(count)}d}", ignore_errors=True)
    else:
        for folder in ("images", "masks"):
            shutil.rmtree(out / folder, ignore_errors=True)
        (out / ANNOTATIONS_NAME).unlink(missing_ok=True)


def _check_arguments(images: int, size: int, frames: int, min_objects: int, max_objects: int) -> None:
    if images < 1:
        raise DatasetError(f"synthetic image count {images} is invalid; expected at least 1")
    if size < 16:
        raise DatasetError(f"synthetic image size {size} is invalid; expected at least 16 pixels")
    if frames < 1:
        raise DatasetError(f"synthetic frame count {frames} is invalid; expected at least 1")
    if not 1 <= min_objects <= max_objects <= 255:
        raise DatasetError(
            f"synthetic object counts {min_objects}..{max_objects} are invalid; expected 1 <= min <= max <= 255"
        )


def write_synthetic(
    out: Path,
    images: int,
    seed: int = 0,
    size: int = 256,
    video: bool = False,
    frames: int = 8,
    min_objects: int = 3,
    max_objects: int = 7,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``images`` scenes (``images`` clips of ``frames`` frames when ``video``) into ``out`` and return it.

    Layout: ``out/images/<id>.png``, ``out/masks/<id>.png`` and ``out/annotations.json`` (folder format), or
    ``out/<clip_id>/images/<frame>.png`` etc. (clips format). annotations.json holds per id ``classes``
    (SHAPES index per instance), ``boxes`` ([x0, y0, x1, y1] of visible pixels, x1/y1 exclusive; null for a
    video object hidden in that frame), ``areas`` (visible pixels), ``full_areas`` (pixels of the whole shape
    inside the image), ``fills`` and the ``generator`` arguments. ``progress(n)`` is called after each image
    or clip with the number written so far. Large runs use one process per core; output is the same.
    """
    out = Path(out)
    _check_arguments(images, size, frames, min_objects, max_objects)
    frames = frames if video else 1
    generator = {
        "seed": seed,
        "size": size,
        "version": GENERATOR_VERSION,
        "images": images,
        "video": video,
        "frames": frames,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "shapes": list(SHAPES),
        "fills": list(FILLS),
    }
    _clear_previous_output(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json({"generator": generator}, out / MARKER_NAME)
    if not video:
        for folder in ("images", "masks"):
            (out / folder).mkdir(exist_ok=True)
    job = _Job(out, seed, size, video, frames, min_objects, max_objects, _name_width(images), generator)
    write_one = functools.partial(_write_scene, job)
    workers = _worker_count(images * frames)
    tables: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # spawn, not fork: the caller may run threads (a progress bar), which fork does not copy safely.
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            results: Iterator[dict[str, list[Any]] | None] = pool.map(write_one, range(images), chunksize=8)
        else:
            results = map(write_one, range(images))
        for index, annotation in enumerate(results):
            if annotation is not None:
                _by_id(tables, f"{index:0{job.id_width}d}", annotation)
            if progress is not None:
                progress(index + 1)
    if not video:
        _write_json({**tables, "generator": generator}, out / ANNOTATIONS_NAME)
    return out
