"""MOVi-C/D/E (Kubric) in the layouts the public converters of the TFDS ``movi_c/d/e`` release write.

``movi:ROOT [--split train|validation|test]`` detects which one ROOT holds:

=====================  ==========================================================  ===========================================
layout                 files                                                       written by
=====================  ==========================================================  ===========================================
LMDB (VVO)             ``ROOT/<split>.lmdb`` (or ROOT is the .lmdb file)           ``MOVi.convert_dataset`` of the VQ-VFM-OCL
                                                                                   code (object_centric_bench/datum/
                                                                                   dataset_movi.py; Genera1Z/VQ-VFM-OCL)
webdataset shards      ``ROOT/movi_<level>-<split>-NNNNNN.tar`` holding            ``data/save_movi.py`` of VideoSAUR
                       ``<key>.video.npy`` (T, H, W, 3) uint8 and, unless          (martius-lab/videosaur)
                       ``--only-video``, ``<key>.segmentations.npy`` (T, H, W, 1)
frame folders          ``ROOT[/split]/<video>/<t:06d>.jpg`` + ``<t:06d>_mask.png``  ``scripts/data_utils/download_movi.py`` of
                       (one uint8 id image per frame)                              SlotFormer / SlotDiffusion (Wuziyi616)
per-id mask folders    ``ROOT[/split]/<video>/<t:08d>_image.png`` + optional       ``download_movi(_with_masks).py`` of STEVE
                       ``<t:08d>_mask_<n:02d>.png`` (binary, one per id n < 25)     (singhgautam/steve)
=====================  ==========================================================  ===========================================

The TFDS ``segmentations`` are kept as they are: 0 = background, k = the k-th instance of the video, the same id
in every frame (24 frames per video). Pixels no per-id mask claims (ids past STEVE's ``max_num_objs``) are
IGNORE_LABEL. Boxes: the LMDB keeps TFDS's per-frame ``bboxes`` (converted to pixels); the other layouts have
none, so boxes are derived from the masks. MOVi has no class labels in these exports: every class is 0.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from featcache.datasets.base import IGNORE_LABEL, MASK_DTYPE, Dataset, Sample, boxes_from_mask
from featcache.datasets.folder import (
    DEFAULT_MAX_INSTANCES,
    check_same_size,
    dataset_root,
    highest_instance_id,
    natural_key,
    one_line,
    read_image,
    read_instance_mask,
)
from featcache.errors import DatasetError

#: Frames per MOVi video (VVO's converter asserts it; the LMDB is listed without decoding every video).
MOVI_FRAMES = 24
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<split>[A-Za-z]+)-(?P<number>\d+)\.tar$")
_SLOTFORMER_FRAME = re.compile(r"^(?P<t>\d+)\.(?:jpg|jpeg|png)$")
_STEVE_FRAME = re.compile(r"^(?P<t>\d+)_image\.png$")
_STEVE_MASK = re.compile(r"^(?P<t>\d+)_mask_(?P<n>\d+)\.png$")
EXPECTED_LAYOUTS = (
    "expected <split>.lmdb (VVO), movi_<level>-<split>-NNNNNN.tar shards (VideoSAUR), or video folders of frames "
    "(<t>.jpg + <t>_mask.png: SlotFormer; <t>_image.png + <t>_mask_<n>.png: STEVE)"
)


def _lmdb_record(data: bytes, where: str) -> Any:
    """Unpickle an LMDB record allowing only what VVO's records hold (dicts, numpy arrays, BytesIO videos):
    a dataset file must not be able to run code."""

    allowed = {
        ("_io", "BytesIO"),
        ("io", "BytesIO"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a MOVi record")
            return super().find_class(module, name)

    try:
        return Restricted(io.BytesIO(data)).load()
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file, named below
        raise DatasetError(f"{where} is unreadable ({one_line(error)}); expected a pickled record of VVO's MOVi converter") from None


def _decode_avi(buffer: Any, where: str) -> np.ndarray:
    """Frames of an in-memory AVI (VVO's lossless libx264rgb video / ffv1 gray segment) as (T, H, W, C) uint8."""
    from featcache.datasets.videofile import _import_av

    av = _import_av()
    if not isinstance(buffer, io.BytesIO):
        raise DatasetError(f"{where} is a {type(buffer).__name__}; expected an AVI in a BytesIO (VVO's VideoCodec)")
    try:
        with av.open(io.BytesIO(buffer.getvalue()), mode="r", format="avi") as container:
            frames = [frame.to_ndarray() for frame in container.decode(video=0)]
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DatasetError(f"cannot decode {where} ({one_line(error)}); expected an AVI video") from None
    if not frames:
        raise DatasetError(f"{where} holds no frames; expected {MOVI_FRAMES}")
    video = np.stack(frames)
    return video if video.ndim == 4 else video[..., None]


class _Source(ABC):
    """One MOVi layout: its videos (clip id, frame count) and a per-frame reader."""

    has_masks: bool
    clips: list[str]
    frame_counts: list[int]

    @abstractmethod
    def read(self, clip: int, frame: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int | None]:
        """Image (H, W, 3) uint8, mask (H, W) uint16 or None, boxes (K, 4) float32 pixels or None, and the video's
        instance count when the source knows it (else None: the frame's highest id)."""



#: LMDB environments open in this process, by path: lmdb refuses to open one file twice in a process, and every
#: adapter (a reopened or unpickled copy) reads through the same read-only environment.
_ENVIRONMENTS: dict[str, Any] = {}
_ENVIRONMENTS_LOCK = threading.Lock()


def _open_lmdb(path: Path) -> Any:
    try:
        import lmdb
    except ImportError:
        raise DatasetError(f"reading {path} needs the lmdb package: pip install 'featcache[video]'") from None
    with _ENVIRONMENTS_LOCK:
        if str(path) not in _ENVIRONMENTS:
            try:
                _ENVIRONMENTS[str(path)] = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
            except lmdb.Error as error:
                raise DatasetError(f"cannot open LMDB {path} ({one_line(error)}); expected an LMDB file") from None
        return _ENVIRONMENTS[str(path)]


class _LmdbSource(_Source):
    """VVO's LMDB: key ``__keys__`` -> pickled list of keys; each key -> pickled dict with ``video`` (AVI BytesIO,
    libx264rgb), ``segment`` (AVI BytesIO, ffv1 gray), ``bbox`` (T, n, 4) float32 left-top-right-bottom in 0..1
    (0 where the object has no box), ``flow``, ``depth``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._env: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        with self._environment().begin(write=False) as transaction:
            keys = transaction.get(b"__keys__")
        if keys is None:
            raise DatasetError(f"LMDB {path} has no '__keys__' entry; expected an LMDB written by VVO's MOVi converter")
        keys = _lmdb_record(keys, f"'__keys__' of {path}")
        if not isinstance(keys, list) or not all(isinstance(key, bytes) for key in keys):
            raise DatasetError(f"'__keys__' of {path} is not a list of byte keys; expected VVO's MOVi converter output")
        if not keys:
            raise DatasetError(f"LMDB {path} lists no videos")
        self.keys: list[bytes] = keys
        self.clips = [key.decode("ascii", "replace") for key in keys]
        self.frame_counts = [MOVI_FRAMES] * len(keys)
        self.has_masks = True

    def _environment(self) -> Any:
        if self._env is None:
            self._env = _open_lmdb(self.path)
        return self._env

    def _video(self, clip: int) -> dict[str, np.ndarray]:
        """Decoded video, segment and boxes of one video (the last few are cached: frames are asked for in order)."""
        with self._lock:
            if clip in self._cache:
                return self._cache[clip]
            key = self.keys[clip]
            where = f"record {key.decode('ascii', 'replace')} of {self.path}"
            with self._environment().begin(write=False) as transaction:
                data = transaction.get(key)
            if data is None:
                raise DatasetError(f"LMDB {self.path} has no record {key!r} listed in '__keys__'")
            record = _lmdb_record(data, where)
            if not isinstance(record, dict) or "video" not in record or "segment" not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DatasetError(f"{where} has keys {keys}; expected 'video' and 'segment' (VVO's MOVi converter)")
            video = _decode_avi(record["video"], f"'video' of {where}")  # (T, H, W, 3)
            segment = _decode_avi(record["segment"], f"'segment' of {where}")[..., 0]  # (T, H, W)
            if video.shape[-1] != 3 or video.shape[0] != MOVI_FRAMES or segment.shape != video.shape[:3]:
                raise DatasetError(
                    f"{where}: video {video.shape} and segment {segment.shape}; expected ({MOVI_FRAMES}, H, W, 3) and ({MOVI_FRAMES}, H, W)"
                )
            decoded = {"video": video, "segment": segment}
            bbox = record.get("bbox")
            if bbox is not None:
                bbox = np.asarray(bbox, dtype=np.float32)
                if bbox.ndim != 3 or bbox.shape[0] != MOVI_FRAMES or bbox.shape[2] != 4:
                    raise DatasetError(f"'bbox' of {where} has shape {bbox.shape}; expected ({MOVI_FRAMES}, instances, 4)")
                decoded["bbox"] = bbox
            self._cache[clip] = decoded
            if len(self._cache) > 2:
                self._cache.popitem(last=False)
            return decoded

    def read(self, clip: int, frame: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int | None]:
        decoded = self._video(clip)
        image = decoded["video"][frame]
        mask = decoded["segment"][frame].astype(MASK_DTYPE)
        if "bbox" not in decoded:
            return image, mask, None, None
        height, width = mask.shape
        boxes = decoded["bbox"][frame] * np.array([width, height, width, height], dtype=np.float32)  # (n, 4) pixels
        boxes[~decoded["bbox"][frame].any(axis=1)] = np.nan  # all-zero rows: no box in this frame
        return image, mask, boxes, len(boxes)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "keys": self.keys, "clips": self.clips, "frame_counts": self.frame_counts, "has_masks": self.has_masks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._env, self._lock, self._cache = None, threading.Lock(), OrderedDict()


def _npy_header(handle: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of the .npy file starting at ``handle``'s position."""
    try:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
    except (ValueError, OSError) as error:
        raise DatasetError(f"{where} is not a readable .npy array ({one_line(error)})") from None
    if fortran:
        raise DatasetError(f"{where} is stored in Fortran order; expected a C-order array (np.save of a numpy array)")
    return tuple(shape), np.dtype(dtype), handle.tell()


class _ShardSource(_Source):
    """VideoSAUR's webdataset tar shards: members ``<key>.video.npy`` and ``<key>.segmentations.npy``, read in place
    (one frame is one contiguous slice of the uncompressed .npy)."""

    def __init__(self, shards: list[Path]) -> None:
        # Per clip: (shard, video offset, video shape, segmentation offset or None).
        entries: dict[str, dict[str, Any]] = {}
        for shard in shards:
            try:
                with tarfile.open(shard, mode="r:") as archive, open(shard, "rb") as handle:
                    for member in archive:
                        if not member.isfile():
                            continue
                        base = os.path.basename(member.name)
                        key, _, field = base.partition(".")
                        if field not in ("video.npy", "segmentations.npy"):
                            continue
                        where = f"{field} of video {key} in {shard}"
                        handle.seek(member.offset_data)
                        shape, dtype, offset = _npy_header(handle, where)
                        entry = entries.setdefault(key, {"shard": shard})
                        entry[field] = (shape, dtype, offset)
            except (tarfile.TarError, OSError) as error:
                raise DatasetError(f"cannot read shard {shard} ({one_line(error)}); expected an uncompressed tar (webdataset)") from None
        if not entries:
            raise DatasetError(f"shards {shards[0]}... hold no <key>.video.npy members; expected VideoSAUR's save_movi.py output")
        self.clips = sorted(entries, key=natural_key)
        self._entries = [entries[clip] for clip in self.clips]
        self.frame_counts = []
        for clip, entry in zip(self.clips, self._entries):
            where = f"video {clip} in {entry['shard']}"
            if "video.npy" not in entry:
                raise DatasetError(f"{where} has segmentations but no video.npy; expected both")
            shape, dtype, _ = entry["video.npy"]
            if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
                raise DatasetError(f"video.npy of {where} is {dtype} {shape}; expected uint8 (T, H, W, 3)")
            if "segmentations.npy" in entry:
                mask_shape, mask_dtype, _ = entry["segmentations.npy"]
                if mask_shape not in (shape[:3], (*shape[:3], 1)) or mask_dtype.kind not in "ui":
                    raise DatasetError(f"segmentations.npy of {where} is {mask_dtype} {mask_shape}; expected integer {(*shape[:3], 1)}")
            self.frame_counts.append(shape[0])
        with_masks = ["segmentations.npy" in entry for entry in self._entries]
        if any(with_masks) and not all(with_masks):
            missing = self.clips[with_masks.index(False)]
            raise DatasetError(f"video {missing} in {self._entries[with_masks.index(False)]['shard']} has no segmentations.npy; expected one for every video once any has")
        self.has_masks = all(with_masks)

    @staticmethod
    def _slice(shard: Path, header: tuple[tuple[int, ...], np.dtype, int], frame: int) -> np.ndarray:
        shape, dtype, offset = header
        frame_shape = shape[1:]
        size = int(np.prod(frame_shape)) * dtype.itemsize
        with open(shard, "rb") as handle:
            handle.seek(offset + frame * size)
            data = handle.read(size)
        if len(data) != size:
            raise DatasetError(f"shard {shard} is truncated at frame {frame}; expected {size} bytes of .npy data")
        return np.frombuffer(data, dtype=dtype).reshape(frame_shape)

    def read(self, clip: int, frame: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int | None]:
        entry = self._entries[clip]
        image = self._slice(entry["shard"], entry["video.npy"], frame).copy()  # (H, W, 3)
        if "segmentations.npy" not in entry:
            return image, None, None, None
        mask = self._slice(entry["shard"], entry["segmentations.npy"], frame).reshape(image.shape[:2])
        if mask.size and (mask.min() < 0 or mask.max() >= IGNORE_LABEL):
            raise DatasetError(f"segmentations.npy of video {self.clips[clip]} in {entry['shard']} holds ids outside 0..65534")
        return image, mask.astype(MASK_DTYPE), None, None


class _FrameFolderSource(_Source):
    """Video folders of frame files: SlotFormer's ``<t>.jpg`` + ``<t>_mask.png`` or STEVE's ``<t>_image.png`` +
    ``<t>_mask_<n>.png``."""

    def __init__(self, videos: list[Path]) -> None:
        self.clips = [video.name for video in videos]
        # Per clip: the frame files in time order, and per frame the mask file(s).
        self._frames: list[list[Path]] = []
        self._masks: list[list[Path | list[Path] | None]] = []
        for video in videos:
            with os.scandir(video) as entries:
                names = [entry.name for entry in entries if entry.is_file()]
            steve = {int(m["t"]): name for name in names if (m := _STEVE_FRAME.match(name))}
            slotformer = {int(m["t"]): name for name in names if (m := _SLOTFORMER_FRAME.match(name))}
            frames = steve or slotformer
            if not frames:
                raise DatasetError(f"video folder {video} holds no frames; {EXPECTED_LAYOUTS}")
            times = sorted(frames)
            self._frames.append([video / frames[t] for t in times])
            if steve:
                per_id: dict[int, dict[int, Path]] = {}
                for name in names:
                    if m := _STEVE_MASK.match(name):
                        per_id.setdefault(int(m["t"]), {})[int(m["n"])] = video / name
                self._masks.append([[per_id[t][n] for n in sorted(per_id[t])] if t in per_id else None for t in times])
            else:
                masks = [video / f"{frames[t].rsplit('.', 1)[0]}_mask.png" for t in times]
                self._masks.append([mask if mask.is_file() else None for mask in masks])
        self.frame_counts = [len(frames) for frames in self._frames]
        with_masks = [[mask is not None for mask in masks] for masks in self._masks]
        self.has_masks = all(all(flags) for flags in with_masks)
        if not self.has_masks and any(any(flags) for flags in with_masks):
            clip = next(c for c, flags in enumerate(with_masks) if not all(flags))
            frame = self._frames[clip][with_masks[clip].index(False)]
            raise DatasetError(f"frame {frame} has no mask file; expected a mask for every frame once masks are present")

    def read(self, clip: int, frame: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int | None]:
        image_path = self._frames[clip][frame]
        image = read_image(image_path)
        masks = self._masks[clip][frame]
        if masks is None:
            return image, None, None, None
        if isinstance(masks, Path):
            return image, read_instance_mask(masks, image, image_path), None, None
        mask = np.full(image.shape[:2], IGNORE_LABEL, dtype=MASK_DTYPE)  # ids no per-id mask covers stay ignored
        for mask_path in masks:
            instance_id = int(_STEVE_MASK.match(mask_path.name)["n"])  # type: ignore[index]
            region = read_image(mask_path)[..., 0] > 127  # (H, W): STEVE saves 0/255 RGB (torchvision save_image)
            check_same_size(region, image, mask_path, image_path)
            mask[region] = instance_id
        return image, mask, None, None


def _pick_split(found: list[str], split: str | None, what: str, root: Path) -> str:
    if split is not None:
        if split not in found:
            raise DatasetError(f"{root} has no {what} for split {split!r}; found splits {', '.join(found)}")
        return split
    if len(found) > 1:
        raise DatasetError(f"{root} holds {what} for splits {', '.join(found)}; pass --split with one of them")
    return found[0]


class MoviDataset(Dataset):
    """Every frame of every MOVi video; sample id ``<video>/<frame:02d>``, clip id the video key or folder."""

    kind = "movi"
    is_video = True

    def __init__(self, root: str, split: str | None = None) -> None:
        path = Path(os.path.abspath(os.path.expanduser(root)))
        if path.is_file() and path.suffix == ".lmdb":  # VVO names the file after its split
            if split is not None and split != path.stem:
                raise DatasetError(f"--split {split} does not match LMDB {path}; expected {path.stem} (or ROOT/{split}.lmdb)")
            super().__init__(str(path), path.stem)
            self.layout = "lmdb"
            self._source: _Source = _LmdbSource(path)
        else:
            root_path = dataset_root(root)
            split, self.layout, self._source = self._detect(root_path, split)
            super().__init__(str(root_path), split)
        self.has_masks = self._source.has_masks
        self._frames = [(clip, frame) for clip, count in enumerate(self._source.frame_counts) for frame in range(count)]
        self._ids = [f"{self._source.clips[clip]}/{frame:02d}" for clip, frame in self._frames]

    @staticmethod
    def _detect(root: Path, split: str | None) -> tuple[str | None, str, _Source]:
        with os.scandir(root) as entries:
            files = sorted(entry.name for entry in entries if entry.is_file())
        lmdbs = [name[: -len(".lmdb")] for name in files if name.endswith(".lmdb")]
        if lmdbs:
            split = _pick_split(lmdbs, split, "an LMDB (<split>.lmdb)", root)
            return split, "lmdb", _LmdbSource(root / f"{split}.lmdb")
        shards: dict[str, list[Path]] = {}
        for name in files:
            if match := _SHARD_NAME.match(name):
                shards.setdefault(match["split"], []).append(root / name)
        if shards:
            split = _pick_split(sorted(shards), split, "shards (movi_<level>-<split>-NNNNNN.tar)", root)
            return split, "shards", _ShardSource(sorted(shards[split], key=lambda shard: natural_key(shard.name)))
        directory = root / split if split is not None else root
        if not directory.is_dir():
            raise DatasetError(f"split folder {directory} does not exist; {EXPECTED_LAYOUTS}")
        with os.scandir(directory) as entries:
            videos = sorted((Path(entry.path) for entry in entries if entry.is_dir() and not entry.name.startswith(".")), key=lambda p: natural_key(p.name))
        if not videos:
            raise DatasetError(f"{directory} holds no MOVi data; {EXPECTED_LAYOUTS}")
        if split is None and all(video.name in ("train", "validation", "test") for video in videos):
            raise DatasetError(f"{directory} holds split folders {', '.join(v.name for v in videos)}; pass --split with one of them")
        return split, "frames", _FrameFolderSource(videos)

    @property
    def max_instances(self) -> int:
        return DEFAULT_MAX_INSTANCES

    def clip_ids(self) -> list[str | None]:
        return [self._source.clips[clip] for clip, _ in self._frames]

    def frame_indices(self) -> list[int]:
        return [frame for _, frame in self._frames]

    def load(self, index: int) -> Sample:
        clip, frame = self._frames[index]
        image, mask, boxes, count = self._source.read(clip, frame)
        if mask is not None:
            count = max(count or 0, highest_instance_id(mask))
            if boxes is None:
                boxes = boxes_from_mask(mask, count)
            elif len(boxes) < count:
                raise DatasetError(f"video {self._source.clips[clip]} of {self.root}: mask id {count} but {len(boxes)} boxes; expected a box per instance")
        return Sample(
            sample_id=self._ids[index],
            image=np.ascontiguousarray(image),
            instance_mask=mask,
            instance_classes=[0] * (count or 0),
            clip_id=self._source.clips[clip],
            frame_index=frame,
            instance_boxes=boxes,
        )
