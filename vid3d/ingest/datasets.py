"""A dataset as --input: a nerfstudio or instant-ngp folder (transforms.json + images) or a COLMAP
project (sparse/0 or sparse/ + images/), its cameras taken as given (read by dataset_readers).

frames/ of a dataset holds every posed image, in natural order of its path in the dataset, written
as 00000.png ... (00000.jpg for JPEG sources) like any frames, so frames/ reads the same for every
input; index.json with kind "dataset" and each frame's `source` (its path in the dataset); and
cameras/, the dataset's cameras as a COLMAP model (binary, COLMAP's world) whose images are named as
the frames, with the dataset's points when it has them (their tracks are not kept). The poses stage
turns that model into poses/ without running COLMAP (poses.imported). frames.count, frames.max_side
and the sharpness selection do not apply: the cameras belong to the images as they are
(splats.max_side sets the training size). frames.min_frames does: frames whose images are missing
are skipped (index.json's `skipped`), and too few left is a UserError.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pycolmap

from vid3d.errors import UserError
from vid3d.ingest import INDEX_FILE, FrameEntry, FramesIndex, read_image, write_frame
from vid3d.ingest.dataset_layout import dataset_format
from vid3d.ingest.dataset_readers import DatasetInput, read_colmap_project, read_transforms
from vid3d.project import StageOutput, content_hash, file_fingerprint
from vid3d.ui import log, progress

DATASET_KIND = "dataset"  # FramesIndex.kind of frames from a dataset
CAMERAS_DIR = "cameras"  # frames/cameras/: the dataset's cameras (a COLMAP model)
NAMED_MISSING = 3  # the warning about missing images names this many


def read_dataset_input(path: Path, min_frames: int) -> DatasetInput:
    """The dataset's posed images and cameras; a malformed file, or fewer than `min_frames` images
    that are there, is a UserError."""
    dataset = read_transforms(path) if dataset_format(path) == "nerfstudio" else read_colmap_project(path)
    if len(dataset.files) < min_frames:
        missing = f", {len(dataset.missing)} missing ({missing_names(dataset)})" if dataset.missing else ""
        raise UserError(
            f"{dataset.described_by[0]}: {len(dataset.files)} images are there{missing}; training needs "
            f"frames.min_frames={min_frames}: put the images there or lower frames.min_frames"
        )
    _check_one_size(dataset)
    return dataset


def missing_names(dataset: DatasetInput) -> str:
    names = ", ".join(dataset.missing[:NAMED_MISSING])
    return names + (", ..." if len(dataset.missing) > NAMED_MISSING else "")


def _check_one_size(dataset: DatasetInput) -> None:
    first: dict[tuple[int, int], str] = {}
    for image_id in dataset.ordered_ids():
        image = dataset.model.images[image_id]
        camera = dataset.model.cameras[image.camera_id]
        first.setdefault((camera.width, camera.height), image.name)
    if len(first) > 1:
        (size_a, name_a), (size_b, name_b) = list(first.items())[:2]
        raise UserError(
            f"{dataset.described_by[0]}: {name_a} is {size_a[0]}x{size_a[1]} and {name_b} "
            f"{size_b[0]}x{size_b[1]}; the Gaussians train on images of one size: pass a dataset of "
            "one image size"
        )


def dataset_fingerprint(dataset: DatasetInput) -> str:
    """The cameras' files in full, and every posed image's path and content sample."""
    digest = hashlib.sha256(dataset.format.encode())
    for file in dataset.described_by:
        digest.update(os.path.relpath(file, dataset.folder).encode() + content_hash(file).encode())
    for image_id in dataset.ordered_ids():
        file = dataset.files[image_id]
        digest.update(os.path.relpath(file, dataset.folder).encode() + file_fingerprint(file, chunk=64 << 10).encode())
    return digest.hexdigest()[:16]


def ingest_dataset(dataset: DatasetInput, out_dir: Path) -> StageOutput:
    """frames/ of a dataset: its images as 00000.png ..., index.json and cameras/ (see the module's notes)."""
    ids = dataset.ordered_ids()
    if dataset.missing:
        log.warning(
            "frames: %s names %d images that are missing (%s); skipped those frames, as instant-ngp does, and kept %d",
            dataset.described_by[0],
            len(dataset.missing),
            missing_names(dataset),
            len(ids),
        )
    entries = []
    with progress("frames", len(ids)) as advance:
        for n, image_id in enumerate(ids):
            image = dataset.model.images[image_id]
            camera = dataset.model.cameras[image.camera_id]
            file = dataset.files[image_id]
            pixels = read_image(file, "replace it or remove it from the dataset")
            if pixels.shape[:2] != (camera.height, camera.width):
                raise UserError(
                    f"{file}: is {pixels.shape[1]}x{pixels.shape[0]} but {dataset.described_by[0]} "
                    f"gives its camera {camera.width}x{camera.height}; fix the image size or the cameras"
                )
            name = write_frame(out_dir, n, DATASET_KIND, file.name, pixels)  # .jpg for JPEG images, .png for others
            entries.append(FrameEntry(name, source=os.path.relpath(file, dataset.folder)))
            image.name = name
            advance()
    (out_dir / CAMERAS_DIR).mkdir()
    dataset.model.write(out_dir / CAMERAS_DIR)
    camera = dataset.model.cameras[dataset.model.images[ids[0]].camera_id]
    FramesIndex(
        source=str(dataset.folder),
        kind=DATASET_KIND,
        source_frames=len(ids) + len(dataset.missing),
        fps=None,
        width=camera.width,
        height=camera.height,
        frames=entries,
        skipped=dataset.missing,
    ).write(out_dir)
    return StageOutput(
        outputs=[INDEX_FILE, CAMERAS_DIR],
        metrics={
            "frames": len(ids),
            "source_frames": len(ids) + len(dataset.missing),
            "skipped": len(dataset.missing),
            "width": camera.width,
            "height": camera.height,
            "dataset": dataset.format,
        },
    )


def is_dataset_frames(frames_dir: Path) -> bool:
    """Whether frames/ came from a dataset, and so carries its cameras."""
    return FramesIndex.read(frames_dir).kind == DATASET_KIND


def read_dataset_cameras(frames_dir: Path) -> pycolmap.Reconstruction:
    """frames/cameras/: the dataset's cameras and points, its images named as the frames."""
    return pycolmap.Reconstruction(frames_dir / CAMERAS_DIR)
