"""Video files as input: ``video:PATH?stride=N&max_frames=M`` with PATH one file or a folder of them.

Each file (.mp4, .webm, .mkv, .avi, .mov) is one clip without masks; frames are decoded with PyAV (FFmpeg
bundled in its wheels, no system FFmpeg). ``stride`` keeps every N-th frame (source frames 0, N, 2N, ...) and
``max_frames`` caps the frames kept per clip. The sample id names the source frame (``<clip>/<frame:06d>``); the
stored frame index counts the kept frames 0, 1, 2, ... so temporal models see consecutive steps.

Frames are counted at construction by demuxing (no decoding). Extraction asks for frames in order, so each
file keeps one forward decoder; a request behind it reopens the file (recently decoded kept frames are cached,
so decode threads finishing slightly out of order do not restart it).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from featcache.datasets.base import Dataset, Sample
from featcache.datasets.folder import natural_key, one_line
from featcache.errors import DatasetError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")
#: Decoded kept frames held per dataset (a few, so concurrent decode threads rarely force a reopen).
_CACHED_FRAMES = 8


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise DatasetError("reading video files needs PyAV: pip install av (FFmpeg comes with its wheels)") from None
    return av


def _unreadable(path: Path, error: BaseException) -> DatasetError:
    return DatasetError(f"cannot read video {path} ({one_line(error)}); expected a video file FFmpeg can decode")


def count_frames(path: Path) -> int:
    """Frames of the first video stream of ``path``, by demuxing its packets (no decoding)."""
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path} has no video stream; expected a video file")
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except DatasetError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise _unreadable(path, error) from None


class _ForwardDecoder:
    """Decodes one file front to back, yielding (source frame number, (H, W, 3) uint8 RGB)."""

    def __init__(self, path: Path) -> None:
        av = _import_av()
        self.path = path
        try:
            self._container = av.open(str(path))
            self._frames: Iterator[Any] = self._container.decode(video=0)
        except (av.FFmpegError, OSError, ValueError) as error:
            raise _unreadable(path, error) from None
        self.position = 0  # number of the next frame it yields

    def next(self) -> np.ndarray:
        av = _import_av()
        try:
            frame = next(self._frames)
        except StopIteration:
            raise DatasetError(f"video {self.path} ended after {self.position} frames; expected more (its packet count)") from None
        except (av.FFmpegError, OSError, ValueError) as error:
            raise _unreadable(self.path, error) from None
        self.position += 1
        return frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8

    def close(self) -> None:
        self._container.close()


class VideoFileDataset(Dataset):
    """Kept frames of every video file at ``PATH`` (a file, or the files of a folder, split subfolder if given)."""

    kind = "video"
    is_video = True
    has_masks = False
    options = {"stride": 1, "max_frames": None}

    def __init__(self, root: str, split: str | None = None, stride: int = 1, max_frames: int | None = None) -> None:
        path = Path(os.path.abspath(os.path.expanduser(root)))
        super().__init__(str(path), split)
        if stride < 1:
            raise DatasetError(f"video option stride={stride}; expected an integer of at least 1")
        if max_frames is not None and max_frames < 1:
            raise DatasetError(f"video option max_frames={max_frames}; expected an integer of at least 1")
        self.option_values = {"stride": stride, "max_frames": max_frames}
        self.files = self._list_files(path, split)
        stems = [file.stem for file in self.files]
        # Clip ids are file stems unless two files share one (a.mp4, a.webm): then the file names.
        self._clip_names = [file.name if stems.count(file.stem) > 1 else file.stem for file in self.files]
        # One entry per kept frame: (position of its file, source frame number, kept frame index).
        self._frames: list[tuple[int, int, int]] = []
        for file_position, file in enumerate(self.files):
            total = count_frames(file)
            if total == 0:
                raise DatasetError(f"video {file} holds no frames; expected at least one")
            kept = range(0, total, stride)[: max_frames if max_frames is not None else total]
            self._frames.extend((file_position, source, index) for index, source in enumerate(kept))
        self._ids = [f"{self._clip_names[file]}/{source:06d}" for file, source, _ in self._frames]
        self._init_decoding()

    @staticmethod
    def _list_files(path: Path, split: str | None) -> list[Path]:
        if not path.exists():
            raise DatasetError(f"video path {path} does not exist")
        if path.is_file():
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                raise DatasetError(f"{path} is not a video file; expected one of {', '.join(VIDEO_SUFFIXES)}")
            return [path]
        directory = path / split if split is not None else path
        if not directory.is_dir():
            raise DatasetError(f"split folder {directory} does not exist; expected PATH/{split}/ with video files")
        with os.scandir(directory) as entries:
            names = [
                entry.name
                for entry in entries
                if entry.is_file() and not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in VIDEO_SUFFIXES
            ]
        if not names:
            raise DatasetError(f"{directory} holds no video files; expected {', '.join(VIDEO_SUFFIXES)} files")
        return [directory / name for name in sorted(names, key=natural_key)]

    def _init_decoding(self) -> None:
        self._lock = threading.Lock()
        self._decoder: _ForwardDecoder | None = None
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._kept = {(file, source) for file, source, _ in self._frames}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_lock", "_decoder", "_cache", "_kept"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_decoding()

    def clip_ids(self) -> list[str | None]:
        return [self._clip_names[file] for file, _, _ in self._frames]

    def frame_indices(self) -> list[int]:
        return [index for _, _, index in self._frames]

    def _frame(self, file: int, source: int) -> np.ndarray:
        """Source frame ``source`` of file ``file``, decoding forward (reopening when it lies behind)."""
        with self._lock:
            cached = self._cache.get((file, source))
            if cached is not None:
                return cached
            decoder = self._decoder
            if decoder is None or decoder.path != self.files[file] or decoder.position > source:
                if decoder is not None:
                    decoder.close()
                decoder = self._decoder = _ForwardDecoder(self.files[file])
            while True:
                number = decoder.position
                frame = decoder.next()
                if (file, number) in self._kept:
                    self._cache[(file, number)] = frame
                    if len(self._cache) > _CACHED_FRAMES:
                        self._cache.popitem(last=False)
                if number == source:
                    return frame

    def load(self, index: int) -> Sample:
        file, source, frame_index = self._frames[index]
        return Sample(
            sample_id=self._ids[index],
            image=self._frame(file, source),
            clip_id=self._clip_names[file],
            frame_index=frame_index,
        )
