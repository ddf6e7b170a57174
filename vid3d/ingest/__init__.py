"""Ingest: a video or a folder of images -> `frames/` (00000.jpg or 00000.png ..., index.json).

This package owns frames/: `ingest` (`datasets.ingest_dataset` for datasets, `write_frames` for frames in
memory) writes it, naming frames with `frame_name`, and `FramesIndex.read` is how every other module reads it.

Frames are sampled evenly: the input is cut into `count` intervals and the sharpest frame of each
(variance of the Laplacian) is kept, so motion-blurred frames are dropped. Blank frames (nearly
uniform, e.g. black) are never kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vid3d.config import FramesSettings
from vid3d.errors import UserError
from vid3d.project import StageOutput, file_fingerprint
from vid3d.ui import progress

if TYPE_CHECKING:  # numpy, OpenCV and imageio load where frames are read: a cached rerun only fingerprints
    import numpy as np

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".avi", ".mkv", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
BLANK_STD = 2.0  # grey-level standard deviation below which a frame is blank
SHARPNESS_SIDE = 512  # sharpness is measured at this size, so it is comparable across resolutions
INDEX_FILE = "index.json"


@dataclass
class FrameEntry:
    """One kept frame: its file in frames/ and where it came from."""

    file: str  # 00000.jpg (videos, lossy images) or 00000.png ...
    sharpness: float = 0.0  # variance of the Laplacian (SHARPNESS_SIDE px)
    source: str | None = None  # image folders: the source image's file name
    source_index: int | None = None  # videos: the frame's number in the video
    timestamp: float | None = None  # videos: seconds from the start

    def as_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class FramesIndex:
    """frames/index.json: the kept frames in order, and the input they came from."""

    source: str  # the input's path
    kind: str  # "video" or "images"
    source_frames: int  # frames (or images) in the input
    fps: float | None  # videos' frame rate
    width: int
    height: int
    frames: list[FrameEntry]
    skipped: list[str] = field(default_factory=list)  # datasets: frames whose images were missing
    folder: Path = field(default=Path("."), compare=False)  # the frames/ folder read from

    @classmethod
    def read(cls, frames_dir: Path) -> FramesIndex:
        meta = json.loads((frames_dir / INDEX_FILE).read_text())
        entries = [FrameEntry(**entry) for entry in meta.pop("frames")]
        return cls(**meta, frames=entries, folder=frames_dir)

    def write(self, frames_dir: Path) -> None:
        meta = {k: v for k, v in asdict(self).items() if k not in ("folder", "frames")}
        meta["frames"] = [entry.as_json() for entry in self.frames]
        (frames_dir / INDEX_FILE).write_text(json.dumps(meta, indent=1))

    @property
    def names(self) -> list[str]:
        return [entry.file for entry in self.frames]

    def paths(self) -> list[Path]:
        return [self.folder / entry.file for entry in self.frames]


@dataclass
class Source:
    """One candidate frame of the input: where it came from, and how to load it."""

    index: int
    load: Callable[[], np.ndarray]
    name: str | None = None  # source file name for image folders
    timestamp: float | None = None  # seconds, for videos


def check_input(path: Path) -> str:
    """'video' or 'images'; a missing or unsupported input is a UserError naming it."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; pass a video file or a folder of images")
    if path.is_dir():
        if not image_files(path):
            raise UserError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return "images"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"{path}: is a single image; pass a folder of images or a video to --input")
    import imageio.v3 as iio

    try:
        iio.immeta(path, plugin="FFMPEG")
    except Exception as exc:  # noqa: BLE001  # imageio raises many kinds: each is an unreadable video
        if "matches no streams" in str(exc) or "does not contain any stream" in str(exc):
            raise UserError(f"{path}: has no video stream (audio only?); pass a video or a folder of images") from None
        raise UserError(
            f"{path}: not a readable video (ffmpeg cannot decode it); pass an mp4, mov, webm, "
            "avi or mkv file, or a folder of images"
        ) from None
    return "video"


def input_fingerprint(path: Path) -> str:
    """Content fingerprint of the input: the video file, or every image's name and content sample."""
    if path.is_file():
        return file_fingerprint(path)
    digest = hashlib.sha256()
    for file in image_files(path):
        digest.update(file.name.encode() + file_fingerprint(file, chunk=64 << 10).encode())
    return digest.hexdigest()[:16]


def image_files(folder: Path) -> list[Path]:
    """Images in a folder in natural order (frame2 before frame10)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)])


def ingest(path: Path, settings: FramesSettings, out_dir: Path) -> StageOutput:
    """Write the selected frames to out_dir as 00000.jpg or .png ... (frame_name) and index.json (FramesIndex)."""
    kind = check_input(path)
    sources, total, fps = _video_sources(path) if kind == "video" else _image_sources(path)
    if total == 0:
        raise UserError(f"{path}: has no frames; pass a video with at least {settings.min_frames} frames")

    entries = []
    first = first_name = None  # the first kept frame and its file: every frame must have its size
    with progress("frames", total) as advance:
        for n, (source, image, sharpness) in enumerate(select_sharpest(sources, total, settings.count, advance)):
            image = resize_max_side(image, settings.max_side)
            if first is None:
                first, first_name = image, source.name
            elif image.shape != first.shape:
                raise UserError(
                    f"{path}: {source.name} is {image.shape[1]}x{image.shape[0]} and {first_name} "
                    f"{first.shape[1]}x{first.shape[0]} (after resizing); the Gaussians train on frames "
                    "of one size: crop or rotate the images to one size, or ingest each size separately"
                )
            name = write_frame(out_dir, n, kind, source.name, image)
            entries.append(
                FrameEntry(name, round(sharpness, 2), source=source.name)
                if source.name
                else FrameEntry(
                    name, round(sharpness, 2), source_index=source.index, timestamp=round(source.timestamp, 4)
                )
            )

    if len(entries) < settings.min_frames:
        raise UserError(
            f"{path}: only {len(entries)} usable frames (need frames.min_frames="
            f"{settings.min_frames}); use a longer video or more images"
        )
    height, width = first.shape[:2]  # every frame was written at this size
    FramesIndex(
        source=str(path), kind=kind, source_frames=total, fps=fps, width=width, height=height, frames=entries
    ).write(out_dir)
    return StageOutput(
        outputs=[INDEX_FILE], metrics={"frames": len(entries), "source_frames": total, "width": width, "height": height}
    )


# Frames from lossy sources (video, JPEG) are kept as JPEG at a quality that adds little to what the
# source lost: writing a 720x1280 frame as PNG takes about 20 times as long (0.5-0.7 s against 0.03 s).
# Frames from lossless sources stay lossless, as PNG with fast compression.
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}
FRAME_FORMATS = {".jpg": {"quality": 95}, ".png": {"compress_level": 1}}


def frame_name(number: int, kind: str, source_name: str | None) -> str:
    """00000.jpg for frames of videos and lossy images, 00000.png for the others."""
    lossy = kind == "video" or Path(source_name or "").suffix.lower() in LOSSY_SUFFIXES
    return f"{number:05d}.{'jpg' if lossy else 'png'}"


def write_frame(out_dir: Path, number: int, kind: str, source_name: str | None, image: np.ndarray) -> str:
    """Frame `number` (uint8 [H, W, 3]) into frames/ as `frame_name` names it; returns its file name."""
    import imageio.v3 as iio

    name = frame_name(number, kind, source_name)
    iio.imwrite(out_dir / name, image, **FRAME_FORMATS[Path(name).suffix])
    return name


def write_frames(out_dir: Path, images: Sequence[np.ndarray], source: str) -> FramesIndex:
    """frames/ of frames in memory (uint8 [H, W, 3], one size, e.g. generated ones), every one kept, as
    ingest keeps a folder of PNG images named 00000.png ...: frame n is image n, its source "0000n.png"."""
    entries = []
    for n, image in enumerate(images):
        source_name = frame_name(n, "images", None)  # the name a generated video's frame n has
        entries.append(FrameEntry(write_frame(out_dir, n, "images", source_name, image), source=source_name))
    height, width = images[0].shape[:2]
    index = FramesIndex(
        source=source, kind="images", source_frames=len(entries), fps=None, width=width, height=height, frames=entries
    )
    index.write(out_dir)
    return index


def select_sharpest(
    sources: Iterable[Source], total: int, count: int, advance: Callable[..., None] = lambda n=1: None
) -> Iterator[tuple[Source, np.ndarray, float]]:
    """Cut `total` sources into `count` even intervals; yield the sharpest non-blank frame of each.

    Streams: only the current interval's best frame is held in memory.
    """
    count = min(count, total)
    best: tuple[Source, np.ndarray, float] | None = None
    current = 0
    for source in sources:
        interval = min(source.index * count // total, count - 1)
        if interval != current and best is not None:
            yield best
            best = None
        current = interval
        image = source.load()
        advance()
        score = sharpness(image)
        if score is not None and (best is None or score > best[2]):
            best = (source, image, score)
    if best is not None:
        yield best


def sharpness(image: np.ndarray) -> float | None:
    """Variance of the Laplacian at a fixed size; None for a blank frame."""
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    scale = SHARPNESS_SIDE / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if grey.std() < BLANK_STD:
        return None
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _video_sources(path: Path) -> tuple[Iterator[Source], int, float]:
    import imageio.v3 as iio
    import imageio_ffmpeg

    meta = iio.immeta(path, plugin="FFMPEG")
    fps = float(meta.get("fps") or 0.0) or 30.0
    try:
        total, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError):
        total = 0

    def sources() -> Iterator[Source]:
        for index, frame in enumerate(iio.imiter(path, plugin="FFMPEG")):
            if index >= total:  # the count is an estimate; never index past the last interval
                return
            yield Source(index=index, load=lambda frame=frame: _rgb(frame), timestamp=index / fps)

    return sources(), total, fps


def _image_sources(folder: Path) -> tuple[Iterator[Source], int, None]:
    files = image_files(folder)
    fix = "remove it from the folder or replace it"
    sources = (Source(index=i, load=lambda f=f: read_image(f, fix), name=f.name) for i, f in enumerate(files))
    return sources, len(files), None


def read_image(path: Path, fix: str) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB; one that cannot be read is a UserError naming it and `fix`."""
    import imageio.v3 as iio

    try:
        image = iio.imread(path)
    except Exception:  # noqa: BLE001  # each reader raises its own kind: all mean unreadable
        raise UserError(f"{path}: not a readable image; {fix}") from None
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise UserError(f"{path}: expected an RGB image, got shape {image.shape}; {fix}")
    return _rgb(image)


def _rgb(image: np.ndarray) -> np.ndarray:
    """Any decoded image as HxWx3 uint8 RGB."""
    import numpy as np

    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    if np.issubdtype(image.dtype, np.floating):
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = (image.astype(np.float64) / np.iinfo(image.dtype).max * 255).round().astype(np.uint8)
    return np.ascontiguousarray(image)
