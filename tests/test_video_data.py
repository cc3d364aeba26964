"""Video data adapters (MOVi layouts, YouTube-VIS, video files) on tiny layouts written here in each converter's
format: frames, stable instance ids, classes, boxes, clip ids / frame order, spec options, one-line errors, and
the round trip through extraction into a clip store."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featcache.datasets import IGNORE_LABEL, Dataset, open_dataset
from featcache.errors import DatasetError
from featcache.extraction import ExtractConfig, extract
from featcache.store import FeatureStore

SIZE = 48  # square frames of the extraction's mask size: the stored centre-view masks equal the source masks
FRAMES = 3


def clip_masks(seed: int, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """(frames, size, size) uint8 ids: 1 moves right, 2 stays, 3 appears in the last frame only."""
    masks = np.zeros((frames, size, size), dtype=np.uint8)
    for t in range(frames):
        masks[t, 4:14, 2 + (4 * t) % 16 + seed : 12 + (4 * t) % 16 + seed] = 1
        masks[t, 30:44, 30:40] = 2
    masks[-1, 20:26, 5:15] = 3
    return masks


def clip_video(seed: int, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """(frames, size, size, 3) uint8 random frames."""
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def expected_boxes(mask: np.ndarray) -> np.ndarray:
    """Hand rule: x0, y0, x1, y1 (exclusive) of each id 1..max, NaN when absent."""
    count = int(mask.max())
    boxes = np.full((count, 4), np.nan, dtype=np.float32)
    for k in range(1, count + 1):
        ys, xs = np.where(mask == k)
        if len(ys):
            boxes[k - 1] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return boxes


def frames_of(dataset: Dataset) -> list:
    return [dataset.load(index) for index in range(len(dataset))]


def save_image(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# --- MOVi: VideoSAUR webdataset shards ---------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_shard(path: Path, videos: dict[str, dict[str, np.ndarray]]) -> None:
    """A tar as webdataset's ShardWriter writes it: members ``<key>.<field>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, fields in videos.items():
            for field, array in fields.items():
                data = npy_bytes(array)
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def make_movi_shards(root: Path) -> Path:
    """validation: videos 0, 1 (shard 0) and 2 (shard 1) with segmentations; train: video only (--only-video)."""
    for shard, keys in (("000000", ("0", "1")), ("000001", ("2",))):
        write_shard(
            root / f"movi_c-validation-{shard}.tar",
            {key: {"video.npy": clip_video(int(key)), "segmentations.npy": clip_masks(int(key))[..., None]} for key in keys},
        )
    write_shard(root / "movi_c-train-000000.tar", {"0": {"video.npy": clip_video(9)}})
    return root


def test_movi_shards_read_frames_masks_and_boxes_in_place(tmp_path: Path) -> None:
    root = make_movi_shards(tmp_path / "movi_c")
    dataset = open_dataset(f"movi:{root}", "validation")
    assert dataset.has_masks and dataset.is_video and len(dataset) == 9
    assert dataset.clip_ids() == ["0"] * 3 + ["1"] * 3 + ["2"] * 3
    assert dataset.frame_indices() == [0, 1, 2] * 3
    assert dataset.sample_ids[:2] == ["0/00", "0/01"]
    for index, sample in enumerate(frames_of(dataset)):
        clip, frame = index // FRAMES, index % FRAMES
        np.testing.assert_array_equal(sample.image, clip_video(clip)[frame])
        np.testing.assert_array_equal(sample.instance_mask, clip_masks(clip)[frame])
        np.testing.assert_array_equal(sample.instance_boxes, expected_boxes(clip_masks(clip)[frame]))
        assert sample.instance_classes == [0] * int(clip_masks(clip)[frame].max())
    train = open_dataset(f"movi:{root}", "train")
    assert not train.has_masks and train.load(2).instance_mask is None
    np.testing.assert_array_equal(train.load(2).image, clip_video(9)[2])
    with pytest.raises(DatasetError, match="splits train, validation; pass --split"):
        open_dataset(f"movi:{root}")
    assert_reopens(dataset)


def assert_reopens(dataset: Dataset) -> None:
    """source() + split open the same samples; the adapter survives pickling (extraction workers get it so)."""
    again = open_dataset(dataset.source(), dataset.split)
    assert again.sample_ids == dataset.sample_ids and again.fingerprint() == dataset.fingerprint()
    copied = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(copied.load(len(dataset) - 1).image, dataset.load(len(dataset) - 1).image)


# --- MOVi: VVO's LMDB ---------------------------------------------------------------------------------------------


def encode_avi(video: np.ndarray, pixel_format: str) -> io.BytesIO:
    """Lossless in-memory AVI as VVO's VideoCodec writes it: rgb24 -> libx264rgb qp 0, gray -> ffv1."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        codec, options = ("libx264rgb", {"qp": "0", "preset": "ultrafast"}) if pixel_format == "rgb24" else ("ffv1", {"level": "3", "coder": "1"})
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt, stream.options = video.shape[2], video.shape[1], pixel_format, options
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format=pixel_format)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    return buffer


def movi_lmdb_record(seed: int) -> tuple[dict, np.ndarray]:
    """A record of VVO's converter (24 frames), and its bbox (T, n, 4) ltrb in 0..1 with zero rows when absent."""
    frames = 24
    video, masks = clip_video(seed, frames, 32), clip_masks(seed, frames, 32)
    bbox = np.zeros((frames, 3, 4), dtype=np.float32)
    for t in range(frames):
        for k, box in enumerate(expected_boxes(masks[t])):
            if not np.isnan(box).any():
                bbox[t, k] = box / 32
    flow = {"data": [encode_avi(np.zeros((frames, 32, 32, 3), np.uint8), "rgb24")], "min": np.float32(-1.5), "max": np.float32(2.0)}
    record = {"video": encode_avi(video, "rgb24"), "bbox": bbox, "segment": encode_avi(masks[..., None], "gray"), "flow": flow}
    return record, bbox


def write_movi_lmdb(path: Path, records: list[dict]) -> Path:
    lmdb = pytest.importorskip("lmdb", reason="the lmdb package (extra 'video') is not installed")
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=2**26, subdir=False)
    keys = [f"{index:06d}".encode() for index in range(len(records))]
    with env.begin(write=True) as transaction:
        for key, record in zip(keys, records):
            transaction.put(key, pickle.dumps(record))
        transaction.put(b"__keys__", pickle.dumps(keys))
    env.close()
    return path


def test_movi_lmdb_decodes_vvo_records_losslessly_with_their_boxes(tmp_path: Path) -> None:
    pytest.importorskip("av")
    record, bbox = movi_lmdb_record(0)
    root = tmp_path / "movi_d"
    write_movi_lmdb(root / "validation.lmdb", [record])
    dataset = open_dataset(f"movi:{root}")  # the only LMDB: its split is taken
    assert dataset.split == "validation" and len(dataset) == 24 and dataset.clip_ids()[0] == "000000"
    masks = clip_masks(0, 24, 32)
    for frame in (0, 5, 23):
        sample = dataset.load(frame)
        np.testing.assert_array_equal(sample.image, clip_video(0, 24, 32)[frame])
        np.testing.assert_array_equal(sample.instance_mask, masks[frame])
        # The source's boxes, in pixels; the object not yet visible (id 3 before the last frame) has none.
        np.testing.assert_allclose(sample.instance_boxes[:2], bbox[frame, :2] * 32)
        assert np.isnan(sample.instance_boxes[2]).all() == (frame != 23)
        assert sample.instance_classes == [0, 0, 0]
    assert_reopens(dataset)
    assert open_dataset(f"movi:{root / 'validation.lmdb'}").sample_ids == dataset.sample_ids


def test_movi_lmdb_refuses_records_that_would_run_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    path = write_movi_lmdb(tmp_path / "validation.lmdb", [{"video": Payload()}])
    dataset = open_dataset(f"movi:{path}")
    with pytest.raises(DatasetError, match=r"record 000000 of .*validation\.lmdb is unreadable.*builtins\.print is not allowed"):
        dataset.load(0)


# --- MOVi: frame folders (SlotFormer / STEVE) -------------------------------------------------------------------


def test_movi_slotformer_frame_folders(tmp_path: Path) -> None:
    root = tmp_path / "MOVi-C"
    for clip in range(2):
        for t in range(FRAMES):
            folder = root / "validation" / f"{clip:08d}"
            save_image(clip_video(clip)[t], folder / f"{t:06d}.jpg")  # SlotFormer saves frames as JPEG
            save_image(clip_masks(clip)[t], folder / f"{t:06d}_mask.png")
    (root / "train").mkdir()
    with pytest.raises(DatasetError, match="split folders train, validation; pass --split"):
        open_dataset(f"movi:{root}")
    dataset = open_dataset(f"movi:{root}", "validation")
    assert dataset.clip_ids() == ["00000000"] * 3 + ["00000001"] * 3
    sample = dataset.load(5)
    np.testing.assert_array_equal(sample.image, np.asarray(Image.open(root / "validation" / "00000001" / "000002.jpg").convert("RGB")))
    np.testing.assert_array_equal(sample.instance_mask, clip_masks(1)[2])
    np.testing.assert_array_equal(sample.instance_boxes, expected_boxes(clip_masks(1)[2]))


def test_movi_steve_per_id_masks(tmp_path: Path) -> None:
    root = tmp_path / "steve"
    masks = clip_masks(0)
    for t in range(FRAMES):
        folder = root / "00000000"
        save_image(clip_video(0)[t], folder / f"{t:08d}_image.png")
        for n in range(3):  # as with --max_num_objs 3: id 3 has no mask file
            binary = np.repeat(((masks[t] == n) * 255).astype(np.uint8)[..., None], 3, axis=2)  # save_image: 0/255 RGB
            save_image(binary, folder / f"{t:08d}_mask_{n:02d}.png")
    dataset = open_dataset(f"movi:{root}")
    last = dataset.load(2)
    expected = masks[2].astype(np.uint16)
    expected[masks[2] == 3] = IGNORE_LABEL  # no per-id mask claims these pixels
    np.testing.assert_array_equal(last.instance_mask, expected)
    np.testing.assert_array_equal(dataset.load(0).instance_mask, masks[0])


def test_movi_empty_or_unknown_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty holds no MOVi data; expected <split>\.lmdb"):
        open_dataset(f"movi:{tmp_path / 'empty'}")
    (tmp_path / "odd" / "video0").mkdir(parents=True)
    (tmp_path / "odd" / "video0" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="video folder .*video0 holds no frames"):
        open_dataset(f"movi:{tmp_path / 'odd'}")


def test_movi_damaged_shards_and_lmdb_are_one_line_errors(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    write_shard(root / "movi_c-validation-000000.tar", {"0": {"video.npy": clip_video(0)[..., :2]}})
    with pytest.raises(DatasetError, match=r"video\.npy of video 0 in .*movi_c-validation-000000\.tar is uint8 \(3, 48, 48, 2\); expected uint8 \(T, H, W, 3\)"):
        open_dataset(f"movi:{root}")
    write_shard(root / "movi_c-validation-000000.tar", {"0": {"video.npy": clip_video(0), "segmentations.npy": clip_masks(0)[..., None]}})
    data = (root / "movi_c-validation-000000.tar").read_bytes()
    dataset = open_dataset(f"movi:{root}")
    (root / "movi_c-validation-000000.tar").write_bytes(data[:3000])  # cut inside the first video's frames
    with pytest.raises(DatasetError, match=r"shard .*movi_c-validation-000000\.tar is truncated at frame 1"):
        dataset.load(1)
    lmdb = pytest.importorskip("lmdb", reason="the lmdb package (extra 'video') is not installed")
    env = lmdb.open(str(tmp_path / "train.lmdb"), map_size=2**20, subdir=False)
    with env.begin(write=True) as transaction:
        transaction.put(b"000000", pickle.dumps({}))
    env.close()
    with pytest.raises(DatasetError, match=r"LMDB .*train\.lmdb has no '__keys__' entry; expected an LMDB written by VVO's MOVi converter"):
        open_dataset(f"movi:{tmp_path / 'train.lmdb'}")
    path = write_movi_lmdb(tmp_path / "validation.lmdb", [{"bbox": np.zeros((24, 1, 4), np.float32)}])
    with pytest.raises(DatasetError, match=r"record 000000 of .*validation\.lmdb has keys \['bbox'\]; expected 'video' and 'segment'"):
        open_dataset(f"movi:{path}").load(0)


# --- YouTube-VIS --------------------------------------------------------------------------------------------------


def rle(region: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of a bool (H, W) region: compressed (string counts) or uncompressed (column-major run lengths)."""
    from pycocotools import mask as mask_utils

    if compressed:
        encoded = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
        return {"size": list(region.shape), "counts": encoded["counts"].decode()}
    flat = region.T.reshape(-1).astype(np.uint8)  # column-major
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return {"size": list(region.shape), "counts": runs}


def ytvis_annotations(videos: int = 2, frames: int = FRAMES) -> dict:
    """Video v: instance 1 (category 7) as compressed RLE with bboxes, instance 2 (category 3) as uncompressed RLE
    (absent, null, in frame 0), instance 3 (category 5) a polygon in the last frame only; one crowd annotation."""
    data: dict = {"videos": [], "annotations": [], "categories": [{"id": 3}, {"id": 5}, {"id": 7}]}
    for v in range(videos):
        name = f"vid{v:03d}"
        data["videos"].append({"id": v + 1, "height": SIZE, "width": SIZE, "length": frames, "file_names": [f"{name}/{t:05d}.jpg" for t in range(frames)]})
        masks = clip_masks(v, frames)
        data["annotations"].append({
            "video_id": v + 1, "category_id": 7, "iscrowd": 0,
            "segmentations": [rle(masks[t] == 1) for t in range(frames)],
            "bboxes": [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in (expected_boxes(masks[t])[0] for t in range(frames))],
        })
        data["annotations"].append({"video_id": v + 1, "category_id": 3, "iscrowd": 1, "segmentations": [rle(masks[t] == 2) for t in range(frames)]})
        data["annotations"].append({
            "video_id": v + 1, "category_id": 3, "iscrowd": 0,
            "segmentations": [None] + [rle(masks[t] == 2, compressed=False) for t in range(1, frames)],
        })
        data["annotations"].append({
            "video_id": v + 1, "category_id": 5, "iscrowd": 0,
            "segmentations": [None] * (frames - 1) + [[[5.0, 20.0, 15.0, 20.0, 15.0, 26.0, 5.0, 26.0]]],
        })
    return data


def write_ytvis(root: Path, layout: str, split: str = "train", data: dict | None = None) -> Path:
    data = ytvis_annotations() if data is None else data
    frames_dir = {"2021": root / split / "JPEGImages", "2019": root / split / "JPEGImages", "hq": root / "JPEGImages"}[layout]
    annotation_file = {"2021": root / split / "instances.json", "2019": root / f"{split}.json", "hq": root / f"ytvis_hq-{split}.json"}[layout]
    for video in data["videos"]:
        for t, name in enumerate(video["file_names"]):
            path = frames_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(clip_video(video["id"])[t]).save(path, quality=95)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("layout", ["2021", "2019", "hq"])
def test_ytvis_masks_keep_annotation_order_over_the_video(tmp_path: Path, layout: str) -> None:
    split = "val" if layout == "hq" else "train"
    root = write_ytvis(tmp_path / "ytvis", layout, split)
    dataset = open_dataset(f"ytvis:{root}", split)
    assert dataset.has_masks and len(dataset) == 6
    assert dataset.clip_ids() == ["vid000"] * 3 + ["vid001"] * 3 and dataset.frame_indices() == [0, 1, 2, 0, 1, 2]
    assert dataset.sample_ids[:2] == ["vid000/00000", "vid000/00001"]
    for index, sample in enumerate(frames_of(dataset)):
        v, t = index // FRAMES, index % FRAMES
        masks = clip_masks(v)
        assert sample.instance_classes == [7, 3, 5]  # crowd dropped, annotation order kept
        np.testing.assert_array_equal(sample.instance_mask == 1, masks[t] == 1)
        np.testing.assert_array_equal(sample.instance_mask == 2, (masks[t] == 2) & (t > 0))  # null in frame 0: absent
        if t == FRAMES - 1:  # the polygon covers the rectangle up to rasterisation of its edges
            polygon = sample.instance_mask == 3
            assert polygon[21:25, 6:14].all() and not polygon[:18].any() and not polygon[28:].any()
            np.testing.assert_array_equal(sample.instance_boxes[0], expected_boxes(masks[t])[0])
        else:
            assert not (sample.instance_mask == 3).any() and np.isnan(sample.instance_boxes[2]).all()
        frames_dir = root / "JPEGImages" if layout == "hq" else root / split / "JPEGImages"
        np.testing.assert_array_equal(sample.image, np.asarray(Image.open(frames_dir / f"vid{v:03d}" / f"{t:05d}.jpg").convert("RGB")))
    assert_reopens(dataset)


def test_ytvis_split_without_annotations_has_no_masks(tmp_path: Path) -> None:
    data = ytvis_annotations(videos=1)
    data["annotations"] = None  # the official valid.json
    root = write_ytvis(tmp_path / "ytvis", "2019", "valid", data)
    dataset = open_dataset(f"ytvis:{root}", "valid")
    assert not dataset.has_masks and dataset.load(0).instance_mask is None and len(dataset) == 3


def test_ytvis_bad_annotations_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no YouTube-VIS annotations for split 'train'; expected train/instances.json"):
        open_dataset(f"ytvis:{tmp_path}")
    data = ytvis_annotations(videos=1)
    del data["videos"][0]["file_names"]
    root = tmp_path / "a"
    (root / "train" / "JPEGImages").mkdir(parents=True)
    (root / "train" / "instances.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances\.json: an entry of 'videos' has no 'file_names'"):
        open_dataset(f"ytvis:{root}")
    data = ytvis_annotations(videos=1)
    data["annotations"][0]["segmentations"].pop()
    root = write_ytvis(tmp_path / "b", "2021", data=data)
    with pytest.raises(DatasetError, match="has 2 segmentations; expected one per frame"):
        open_dataset(f"ytvis:{root}")
    data = ytvis_annotations(videos=1)
    data["annotations"][0]["segmentations"][1]["size"] = [SIZE, SIZE + 1]
    dataset = open_dataset(f"ytvis:{write_ytvis(tmp_path / 'c', '2021', data=data)}")
    with pytest.raises(DatasetError, match=r"instances\.json: a segmentation of video 1 is an RLE of size \[48, 49\]; expected the video's \[48, 48\]"):
        dataset.load(1)


# --- video files --------------------------------------------------------------------------------------------------


def write_video(path: Path, levels: list[int], codec: str) -> Path:
    """Frames of constant grey ``levels`` (identifiable after lossy coding), 32 x 32."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


LEVELS = [20 * k + 10 for k in range(7)]


def decoded_levels(dataset: Dataset) -> list[int]:
    """The grey level each loaded frame shows, snapped to the nearest written level."""
    return [min(LEVELS, key=lambda level: abs(level - float(sample.image.mean()))) for sample in frames_of(dataset)]


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "libx264"), (".webm", "libvpx-vp9"), (".mkv", "mpeg4"), (".avi", "mpeg4")])
def test_video_files_decode_every_container(tmp_path: Path, suffix: str, codec: str) -> None:
    pytest.importorskip("av")
    path = write_video(tmp_path / f"clip{suffix}", LEVELS, codec)
    dataset = open_dataset(f"video:{path}")
    assert len(dataset) == 7 and not dataset.has_masks and dataset.clip_ids() == ["clip"] * 7
    assert decoded_levels(dataset) == LEVELS
    assert dataset.load(0).image.shape == (32, 32, 3)


def test_video_folder_stride_and_max_frames(tmp_path: Path) -> None:
    pytest.importorskip("av")
    write_video(tmp_path / "videos" / "b.mp4", LEVELS, "libx264")
    write_video(tmp_path / "videos" / "a.mp4", LEVELS[:4], "libx264")
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    dataset = open_dataset(f"video:{tmp_path / 'videos'}?stride=3&max_frames=2")
    assert dataset.sample_ids == ["a/000000", "a/000003", "b/000000", "b/000003"]
    assert dataset.clip_ids() == ["a", "a", "b", "b"] and dataset.frame_indices() == [0, 1, 0, 1]
    assert decoded_levels(dataset) == [LEVELS[0], LEVELS[3], LEVELS[0], LEVELS[3]]
    assert dataset.source() == f"video:{tmp_path / 'videos'}?stride=3&max_frames=2"
    assert_reopens(dataset)
    # Out-of-order requests (decode threads) reopen the file instead of returning a wrong frame.
    every = open_dataset(f"video:{tmp_path / 'videos' / 'b.mp4'}?stride=2")
    assert [min(LEVELS, key=lambda lv: abs(lv - float(every.load(i).image.mean()))) for i in (3, 0, 2, 1)] == [LEVELS[6], LEVELS[0], LEVELS[4], LEVELS[2]]
    assert every.fingerprint() != open_dataset(f"video:{tmp_path / 'videos' / 'b.mp4'}").fingerprint()


def test_video_bad_input_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("av")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty holds no video files; expected \.mp4"):
        open_dataset(f"video:{tmp_path / 'empty'}")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 10)
    with pytest.raises(DatasetError, match=r"cannot read video .*broken\.mp4 \(.*\); expected a video file FFmpeg can decode"):
        open_dataset(f"video:{broken}")
    write_video(tmp_path / "ok.mp4", LEVELS[:2], "libx264")
    with pytest.raises(DatasetError, match=r"option 'step=2' is not one of stride=\.\.\., max_frames=\.\.\. for video"):
        open_dataset(f"video:{tmp_path / 'ok.mp4'}?step=2")
    with pytest.raises(DatasetError, match=r"option stride='x' is not an integer"):
        open_dataset(f"video:{tmp_path / 'ok.mp4'}?stride=x")
    with pytest.raises(DatasetError, match="stride=0; expected an integer of at least 1"):
        open_dataset(f"video:{tmp_path / 'ok.mp4'}?stride=0")


# --- into a clip store --------------------------------------------------------------------------------------------


def _shards(tmp_path: Path) -> tuple[str, str | None]:
    return f"movi:{make_movi_shards(tmp_path / 'movi')}", "validation"


def _lmdb(tmp_path: Path) -> tuple[str, str | None]:
    pytest.importorskip("av")
    record, _ = movi_lmdb_record(1)
    return f"movi:{write_movi_lmdb(tmp_path / 'validation.lmdb', [record])}", None


def _ytvis(tmp_path: Path) -> tuple[str, str | None]:
    return f"ytvis:{write_ytvis(tmp_path / 'ytvis', '2021')}", "train"


def _video(tmp_path: Path) -> tuple[str, str | None]:
    pytest.importorskip("av")
    write_video(tmp_path / "videos" / "a.mp4", LEVELS[:3], "libx264")
    write_video(tmp_path / "videos" / "b.webm", LEVELS, "libvpx-vp9")
    return f"video:{tmp_path / 'videos'}?stride=2", None


@pytest.mark.parametrize("make", [_shards, _lmdb, _ytvis, _video], ids=["movi-shards", "movi-lmdb", "ytvis", "video"])
def test_clip_stores_keep_frame_order_clip_ids_and_instance_ids(tmp_path: Path, make, tiny_config: ExtractConfig) -> None:
    spec, split = make(tmp_path)
    dataset = open_dataset(spec, split)
    out = tmp_path / "store.zarr"
    extract(dataset, out, tiny_config, device="cpu", show_progress=False)
    store = FeatureStore(out, warn_random=False)
    assert store.layout.is_video and store.sample_ids == dataset.sample_ids
    assert store.clip_ids == dataset.clip_ids()
    np.testing.assert_array_equal(store.frame_indices, dataset.frame_indices())
    assert store.has_masks == dataset.has_masks
    if dataset.has_masks:
        stored = store.masks(np.arange(len(dataset)), view="center")  # (N, M, M)
        for index in range(len(dataset)):
            source = dataset.load(index).instance_mask
            if source.shape == stored.shape[1:]:  # square frames at the mask size: stored as they are
                np.testing.assert_array_equal(stored[index], source)
            else:  # upsampled (MOVi LMDB fixture: 32 px): the same ids, stable over the clip, none lost or invented
                assert set(np.unique(stored[index])) == set(np.unique(source))
