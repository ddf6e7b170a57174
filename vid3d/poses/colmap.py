"""Poses with COLMAP: frames/ -> poses/, a self-contained dataset (COLMAP and nerfstudio layouts) via pycolmap.

SIFT features, sequential matching for video (exhaustive for small unordered sets), the
incremental or global mapper, the LARGEST model (pycolmap may return a spurious small model as
key 0), undistortion to pinhole images.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pycolmap

from vid3d import ui
from vid3d.cameras import Camera
from vid3d.config import PosesSettings
from vid3d.errors import StageError
from vid3d.ingest import FramesIndex
from vid3d.poses.dataset import (
    IMAGES_DIR,
    POINTS_FILE,
    REPORT_FILE,
    SPARSE_DIR,
    TRANSFORMS_FILE,
    model_cameras,
    write_nerfstudio,
)
from vid3d.project import StageOutput
from vid3d.ui import keep_signal_handlers, log, progress

# poses.bundle_adjustment = fast: COLMAP's low-quality preset for the incremental mapper
# (option_manager.cc, ModifyForLowQuality), and a lighter local adjustment after each image, which on
# phone photos took a third off the mapping at the same rotation error (docs/benchmarks.md): the final
# global adjustment decides the accuracy. Dotted names are fields of the mapper's own options.
FAST_BUNDLE_ADJUSTMENT = {
    "ba_local_max_num_iterations": 6,
    "ba_global_max_num_iterations": 25,
    "ba_global_frames_ratio": 1.32,
    "ba_global_points_ratio": 1.32,
    "ba_global_max_refinements": 2,
    "ba_local_max_refinements": 1,  # COLMAP: 2
    "mapper.ba_local_num_images": 4,  # COLMAP: 6
    "ba_min_num_residuals_for_cpu_multi_threading": 1000,  # COLMAP: 50,000, so local adjustments ran on one core
}

keep_signal_handlers()  # importing pycolmap put glog's failure-signal handler on SIGTERM


def estimate_poses(frames_dir: Path, settings: PosesSettings, out_dir: Path, device: str = "cpu") -> StageOutput:
    index = FramesIndex.read(frames_dir)
    names = index.names
    scratch = out_dir / "colmap"
    scratch.mkdir()
    matcher = _resolve_matcher(settings, index.kind, [entry.source or "" for entry in index.frames], len(names))
    timings: dict[str, float] = {}
    model, retried = _register(frames_dir, names, matcher, settings, scratch, device, timings)
    with _timed(timings, "undistortion"):
        _undistort(model, frames_dir, scratch, out_dir)
    undistorted = pycolmap.Reconstruction(out_dir / SPARSE_DIR)
    write_nerfstudio(undistorted, out_dir)
    shutil.rmtree(scratch)

    registered = model.num_reg_images()
    report = {
        "registered": registered,
        "total": len(names),
        "registered_fraction": round(registered / len(names), 4),
        "mean_reprojection_error": round(float(undistorted.compute_mean_reprojection_error()), 4),
        "points3D": undistorted.num_points3D(),
        "matcher": matcher,
        "mapper": settings.mapper,
        "retried_exhaustive": retried,
        "unregistered": sorted(set(names) - {img.name for img in undistorted.images.values()}),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    metrics = {
        k: report[k] for k in ("registered", "total", "registered_fraction", "mean_reprojection_error", "points3D")
    }
    return StageOutput(
        outputs=[TRANSFORMS_FILE, SPARSE_DIR, IMAGES_DIR, POINTS_FILE, REPORT_FILE], metrics=metrics, timings=timings
    )


def estimate_cameras(frames: np.ndarray, settings: PosesSettings) -> list[Camera]:
    """Cameras of in-memory video frames (uint8 [F, H, W, 3]), camera i for frame i, through the same
    steps as the stage, in the world of the dataset it would write; every frame must register (a
    StageError otherwise)."""
    with registered_frames(frames, settings) as (model, scratch):
        undistorted = scratch / "undistorted_model"
        undistorted.mkdir()
        _undistort(model, scratch / "input", scratch, undistorted)
        cameras = model_cameras(pycolmap.Reconstruction(undistorted / SPARSE_DIR))
    return [cameras[f"{i:05d}.png"] for i in range(len(frames))]


@contextlib.contextmanager
def registered_frames(frames: np.ndarray, settings: PosesSettings) -> Iterator[tuple[pycolmap.Reconstruction, Path]]:
    """COLMAP's model of in-memory video frames (uint8 [F, H, W, 3]) through the stage's steps, the
    frames named 00000.png ... in the scratch folder's input/ while the context lasts (COLMAP reads
    images from files: they are written losslessly there, nothing else is); a StageError when
    fewer than poses.min_registered of them register."""
    names = [f"{i:05d}.png" for i in range(len(frames))]  # zero-padded: the sequential matcher goes by name
    with tempfile.TemporaryDirectory(prefix="vid3d-cameras-") as scratch:
        scratch = Path(scratch)
        images_dir = scratch / "input"
        images_dir.mkdir()
        for name, frame in zip(names, frames):
            iio.imwrite(images_dir / name, frame)
        matcher = _resolve_matcher(settings, "video", names, len(names))
        model, _ = _register(images_dir, names, matcher, settings, scratch, "cpu", {})
        yield model, scratch


def _register(
    images_dir: Path,
    names: list[str],
    matcher: str,
    settings: PosesSettings,
    scratch: Path,
    device: str,
    timings: dict[str, float],
) -> tuple[pycolmap.Reconstruction, bool]:
    """SIFT, matching and mapping of the images `names` in `images_dir`: the largest model, and whether
    it took a retry with exhaustive matching; a StageError when too few images register."""
    database = scratch / "database.db"
    colmap_device = pycolmap.Device.cuda if device.startswith("cuda") and pycolmap.has_cuda else pycolmap.Device.cpu
    pycolmap.set_random_seed(settings.seed)
    pycolmap.logging.minloglevel = 0 if ui.verbose else 2  # COLMAP's own log is very chatty

    with _timed(timings, "features"):
        log.info("poses: SIFT features of %d frames", len(names))
        pycolmap.extract_features(
            database,
            images_dir,
            image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE,  # ingest keeps frames of one size only
            reader_options=pycolmap.ImageReaderOptions(camera_model=settings.camera_model),
            extraction_options=_extraction_options(settings),
            device=colmap_device,
        )

    with _timed(timings, "matching"):
        _match(database, matcher, settings, names, scratch, colmap_device)
    with _timed(timings, "mapping"):
        model = _map(database, images_dir, scratch / "sparse", settings, len(names))

    retried = False
    if model.num_reg_images() < settings.min_registered * len(names) and matcher != "exhaustive":
        log.info(
            "poses: %d of %d frames registered; retrying with exhaustive matching", model.num_reg_images(), len(names)
        )
        retried = True
        with _timed(timings, "matching_exhaustive"):
            _match(database, "exhaustive", settings, names, scratch, colmap_device)
        with _timed(timings, "mapping_retry"):
            model = _map(database, images_dir, scratch / "sparse_retry", settings, len(names))

    registered = model.num_reg_images()
    if registered < settings.min_registered * len(names):
        raise StageError(
            f"poses: only {registered} of {len(names)} frames registered (poses.min_registered="
            f"{settings.min_registered}); try more overlap between frames (a slower camera or more frames), "
            "more texture in view, or fewer frames"
        )
    return model, retried


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    log.info("poses: %s took %.1fs", name, timings[name])


def _extraction_options(settings: PosesSettings) -> pycolmap.FeatureExtractionOptions:
    options = pycolmap.FeatureExtractionOptions()
    options.sift.max_num_features = settings.max_features
    options.max_image_size = settings.sift_max_side
    options.sift.first_octave = settings.sift_first_octave
    return options


def _resolve_matcher(settings: PosesSettings, kind: str, sources: list[str], count: int) -> str:
    """poses.matcher, or for `auto`: exhaustive for a small set of unordered images (`kind` "images",
    their source names no numbered series), sequential for the others."""
    if settings.matcher != "auto":
        return settings.matcher
    if kind == "images" and not numbered_series(sources) and count <= settings.exhaustive_max_images:
        return "exhaustive"
    return "sequential"


def numbered_series(names: list[str]) -> bool:
    """Whether file names are one numbered series in order (IMG_0001.jpg, IMG_0002.jpg, ... or
    0.png, 1.png, ...): a camera's or a renderer's sequence, so neighbours overlap."""
    parts = [re.fullmatch(r"(.*?)(\d+)(\D*)", name) for name in names]
    if len(names) < 2 or not all(parts):
        return False
    if len({(p.group(1), p.group(3).lower()) for p in parts}) != 1:
        return False
    numbers = [int(p.group(2)) for p in parts]
    return all(b > a for a, b in itertools.pairwise(numbers))


def _match(
    database: Path, matcher: str, settings: PosesSettings, names: list[str], scratch: Path, device: pycolmap.Device
) -> None:
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.max_num_trials = settings.verify_trials
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(database, verification_options=verification, device=device)
        return
    pairing = pycolmap.SequentialPairingOptions(overlap=settings.overlap)
    pycolmap.match_sequential(database, pairing_options=pairing, verification_options=verification, device=device)
    if settings.loop_every:
        # COLMAP's own loop detection needs a vocabulary-tree file that would have to be
        # downloaded; matching keyframes with each other closes the same loops on our frame counts.
        keyframes = names[:: settings.loop_every]
        pairs = scratch / "loop_pairs.txt"
        pairs.write_text("".join(f"{a} {b}\n" for a, b in itertools.combinations(keyframes, 2)))
        pycolmap.match_image_pairs(
            database,
            pairing_options=pycolmap.ImportedPairingOptions(match_list_path=pairs),
            verification_options=verification,
            device=device,
        )


def _map(
    database: Path, frames_dir: Path, sparse: Path, settings: PosesSettings, total: int
) -> pycolmap.Reconstruction:
    """Run the mapper and return the model with the most registered images (empty if none)."""
    sparse.mkdir(parents=True, exist_ok=True)
    if settings.mapper == "global":
        options = pycolmap.GlobalPipelineOptions(random_seed=settings.seed)
        models = pycolmap.global_mapping(database, frames_dir, sparse, options=options)
    else:
        options = pycolmap.IncrementalPipelineOptions(random_seed=settings.seed)
        if settings.bundle_adjustment == "fast":
            for name, value in FAST_BUNDLE_ADJUSTMENT.items():
                owner, _, field = name.rpartition(".")
                setattr(getattr(options, owner) if owner else options, field, value)
        with progress("poses: registering", total) as advance:
            models = pycolmap.incremental_mapping(
                database,
                frames_dir,
                sparse,
                options=options,
                initial_image_pair_callback=lambda: advance(2),
                next_image_callback=lambda: advance(1),
            )
    if not models:
        return pycolmap.Reconstruction()
    return max(models.values(), key=lambda m: m.num_reg_images())


def _undistort(model: pycolmap.Reconstruction, frames_dir: Path, scratch: Path, out_dir: Path) -> None:
    """Undistort to pinhole images: out_dir/images and out_dir/sparse/0."""
    model_dir = scratch / "largest"
    model_dir.mkdir()
    model.write(model_dir)
    undistorted = scratch / "undistorted"
    pycolmap.undistort_images(undistorted, model_dir, frames_dir, output_type="COLMAP")
    shutil.move(undistorted / "images", out_dir / IMAGES_DIR)
    (out_dir / SPARSE_DIR).parent.mkdir()
    shutil.move(undistorted / "sparse", out_dir / SPARSE_DIR)
