"""A video judged by the 3D it yields, against the true procedural scene it shows.

Generation exists so that a reference image becomes a 3D asset, so its last word is the 3D made
from its frames: the splats and export stages run on the frames with their cameras, and what they
make is compared with the truth.

- mesh: the exported mesh against the true surface (Chamfer distance as a fraction of the
  truth's diagonal, precision, recall and F-score at 1% of it; vid3d.metrics.mesh);
- off orbit: the Gaussians rendered at cameras the video never had (higher, and closer) against
  the true renders there (PSNR, SSIM);
- reconstructability: COLMAP on the frames alone (the poses stage's SIFT, matching and mapper):
  registration rate, reprojection error and mean track length, where the frames are large
  enough for SIFT.

The true renders of the same cameras, measured the same way, are the ceiling (`TrueOrbit.renders`).
The reconstruction's world is put in the truth's by the similarity between the poses' camera
centres and the true ones, so estimated cameras work as well as given ones.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from vid3d.scenes import Cameras, make_scene, orbit_cameras, render

# Cameras the orbit never had, around the same point: (name, changes to the orbit's rig).
OFF_ORBIT = {"higher": {"elevation_deg": 40.0}, "closer": {"radius_scale": 0.75}}
OFF_ORBIT_VIEWS = 8  # per kind, halfway between the orbit's azimuths where they can be
# Frames whose shorter side is smaller give COLMAP too few features to judge by: of the true renders
# of a 48-frame orbit, 2 registered at 128 pixels, all 48 at 256.
MIN_SIFT_SIDE = 256
# The reconstruction the measures make from frames: the demo's generated part (configs/demo-generate),
# a mesh without texture (its geometry is what is measured).
RECONSTRUCT_CONFIG = "demo-generate"
MESH_ONLY = {"export.mesh_format": "ply", "export.texture_size": 0}


@dataclass(frozen=True)
class TrueOrbit:
    """The true scene of an orbit video and the true cameras of its frames (the scene's world)."""

    seed: int  # vid3d.scenes.make_scene(seed, simple=True)
    cameras: Cameras  # camera i for the video's frame i
    rig: dict  # radius, elevation_deg, fov_deg, look_at of the orbit

    @classmethod
    def of_reference(cls, image: Path, frames: int, orbit_degrees: float = 360.0) -> TrueOrbit | None:
        """The orbit from a reference image whose sidecar (`reference.json` beside `reference.png`,
        as examples/ has) names its procedural scene and camera; None without one."""
        sidecar = Path(image).with_suffix(".json")
        if not sidecar.is_file():
            return None
        meta = json.loads(sidecar.read_text())
        if "scene_seed" not in meta or "camera" not in meta:
            return None
        camera = dict(meta["camera"])
        start = camera.pop("azimuth_deg")
        rig = {k: camera[k] for k in ("radius", "elevation_deg", "fov_deg", "look_at")}
        cameras = orbit_cameras(
            frames, width=meta["width"], height=meta["height"], start_deg=start, arc_deg=orbit_degrees, **rig
        )
        return cls(int(meta["scene_seed"]), cameras, rig)

    def scene(self):
        return make_scene(self.seed, simple=True)

    def renders(self, cameras: Cameras | None = None) -> np.ndarray:
        """uint8 true renders at `cameras` (default: the video's)."""
        return render(self.scene(), self.cameras if cameras is None else cameras, supersample=2).images

    def off_orbit(self) -> dict[str, Cameras]:
        """Per kind of OFF_ORBIT, its cameras at the video's frame size."""
        centres = self.cameras.centers() - np.asarray(self.rig["look_at"])
        start = float(np.degrees(np.arctan2(centres[0, 1], centres[0, 0])))
        step = 360.0 / OFF_ORBIT_VIEWS
        views = {}
        for name, change in OFF_ORBIT.items():
            rig = {**self.rig, "radius": self.rig["radius"] * change.get("radius_scale", 1.0)}
            rig["elevation_deg"] = change.get("elevation_deg", rig["elevation_deg"])
            views[name] = orbit_cameras(
                OFF_ORBIT_VIEWS,
                width=self.cameras.width,
                height=self.cameras.height,
                start_deg=start + step / 2,
                **rig,
            )
        return views


def scene_region(scene) -> np.ndarray:
    """The part of a procedural scene a mesh is judged on (2, 3): its objects with a margin, and
    the ground under them (what the cameras look at, without the ground past it)."""
    low, high = scene.object_bounds
    margin = 0.5 * scene.extent
    return np.array([[low[0] - margin, low[1] - margin, -0.05], [high[0] + margin, high[1] + margin, high[2] + 0.1]])


def to_truth(rec_cam_to_world: np.ndarray, true_cam_to_world: np.ndarray):
    """(scale, rotation, translation) that take the reconstruction's world into the truth's:
    x_true = scale * rotation @ x + translation, from the camera centres."""
    from vid3d.metrics.poses import similarity

    return similarity(rec_cam_to_world[:, :3, 3], true_cam_to_world[:, :3, 3])


def into_reconstruction(true_cam_to_world: np.ndarray, alignment) -> np.ndarray:
    """Cameras of the true world [N, 4, 4] in the reconstruction's world (the inverse similarity;
    the image a camera sees is the same in both, its scale aside)."""
    scale, rotation, translation = alignment
    cams = np.array(true_cam_to_world, dtype=np.float64)
    cams[:, :3, :3] = rotation.T @ cams[:, :3, :3]
    cams[:, :3, 3] = (cams[:, :3, 3] - translation) @ rotation / scale
    return cams


def object_region(scene) -> np.ndarray:
    """The scene's objects without the ground (2, 3): what a generated orbit must get right, and
    what a still video cannot."""
    low, high = scene.object_bounds
    margin = 0.05 * scene.extent
    return np.array([[low[0] - margin, low[1] - margin, 0.02], [high[0] + margin, high[1] + margin, high[2] + margin]])


def mesh_accuracy(mesh, rec_cam_to_world: np.ndarray, truth: TrueOrbit, true_cam_to_world: np.ndarray) -> dict:
    """The mesh against the true surface (vid3d.metrics.mesh.compare_to_truth) in the scene's region
    (the ground around the objects included), and on the objects alone (`objects_*`)."""
    from vid3d.metrics.mesh import compare_in_regions

    scene = truth.scene()
    regions = {"": scene_region(scene), "objects_": object_region(scene)}
    results = compare_in_regions(mesh, rec_cam_to_world, true_cam_to_world, scene.mesh(), regions)
    measures = {}
    for prefix, result in results.items():
        measures.update(
            {
                f"{prefix}chamfer_pct": round(100 * result["chamfer_fraction"], 3),
                f"{prefix}precision_1pct": round(result["precision"], 4),
                f"{prefix}recall_1pct": round(result["recall"], 4),
                f"{prefix}fscore_1pct": round(result["fscore_1pct"], 4),
            }
        )
    return measures


@torch.no_grad()
def off_orbit_quality(splats_dir: Path, rec_cam_to_world: np.ndarray, truth: TrueOrbit, true_cam_to_world) -> dict:
    """PSNR and SSIM of the Gaussians of a splats/ folder at the off-orbit cameras, against the true
    renders there, per kind and over all of them."""
    from pytorch_msssim import ssim

    from vid3d.project import Project
    from vid3d.splats.model import read_splats, render

    splats = read_splats(splats_dir)
    record = Project(splats_dir.parent).manifest()["stages"]["splats"]
    background = torch.tensor(record["metrics"]["background"], dtype=torch.float32)[None]
    sh_degree = round((splats["shN"].shape[1] + 1) ** 0.5) - 1
    alignment = to_truth(rec_cam_to_world, true_cam_to_world)
    measures, psnrs, ssims = {}, [], []
    for name, cameras in truth.off_orbit().items():
        target = torch.from_numpy(truth.renders(cameras)).float() / 255
        viewmats = torch.from_numpy(np.linalg.inv(into_reconstruction(cameras.cam_to_world, alignment))).float()
        image, _, _ = render(
            splats,
            viewmats,
            torch.from_numpy(cameras.K).float(),
            cameras.width,
            cameras.height,
            sh_degree,
            backgrounds=background.expand(len(cameras), -1),
        )
        image = image.clamp(0, 1)
        psnr = (-10 * torch.log10(((image - target) ** 2).mean(dim=(1, 2, 3)))).tolist()
        quality = float(ssim(image.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=1.0))
        measures[f"{name}_psnr"] = round(float(np.mean(psnr)), 3)
        psnrs += psnr
        ssims.append(quality)
    overall = {"off_orbit_psnr": round(float(np.mean(psnrs)), 3), "off_orbit_ssim": round(float(np.mean(ssims)), 4)}
    return {**overall, **measures}


def reconstructability(frames: np.ndarray, seed: int = 0) -> dict | None:
    """COLMAP on the frames alone (uint8 [F, H, W, 3]): the share of frames registered, the mean
    reprojection error (pixels) and the mean track length; None when the frames are too small."""
    from vid3d.config import PosesSettings
    from vid3d.errors import StageError
    from vid3d.poses.colmap import registered_frames

    if min(frames.shape[1:3]) < MIN_SIFT_SIDE:
        return None
    settings = PosesSettings(camera_model="PINHOLE", min_registered=0.0, seed=seed)
    try:
        with registered_frames(frames, settings) as (model, _):
            return {
                "registered": round(model.num_reg_images() / len(frames), 4),
                "reprojection_px": round(float(model.compute_mean_reprojection_error()), 4),
                "track_length": round(float(model.compute_mean_track_length()), 3),
            }
    except StageError:  # not even a first pair
        return {"registered": 0.0, "reprojection_px": None, "track_length": None}


# -- a project's 3D, and frames' -------------------------------------------------------------------
def project_truth(project_dir: Path) -> TrueOrbit | None:
    """The true orbit of a project generated from a reference image whose sidecar names its scene
    (examples/reference.png); None for any other project."""
    from vid3d.generate.output import GeneratedVideo
    from vid3d.project import Project

    project = Project(project_dir)
    settings = project.saved_settings()[0]
    image = settings.get("generate", {}).get("image")
    if not image or settings.get("frames", {}).get("input"):
        return None
    frames = GeneratedVideo.read(project.stage_dir("generate")).frame_paths()
    return TrueOrbit.of_reference(Path(image), len(frames)) if frames else None


def measurable(project_dir: Path) -> bool:
    """Whether the project's splats and export stages are complete, with a mesh."""
    from vid3d.export import mesh_path
    from vid3d.project import Project

    project = Project(project_dir)
    return all(project.is_complete(name) for name in ("splats", "export")) and bool(
        mesh_path(project.stage_dir("export"))
    )


def project_measures(project_dir: Path, truth: TrueOrbit, frames: np.ndarray | None = None) -> dict:
    """The 3D measures of a project whose splats and export stages ran on the orbit's frames; with
    the `frames` themselves, COLMAP's reconstructability of them too (`colmap_*`, where they are
    large enough for SIFT)."""
    from vid3d.export import mesh_path, read_mesh
    from vid3d.ingest import FramesIndex
    from vid3d.poses import read_dataset
    from vid3d.poses.given import source_number
    from vid3d.project import Project

    project = Project(project_dir)
    poses = read_dataset(project.stage_dir("poses"))
    source = {e.file: source_number(e) for e in FramesIndex.read(project.stage_dir("frames")).frames}
    true = truth.cameras.cam_to_world[[source[name] for name in poses.names]]
    mesh = read_mesh(mesh_path(project.stage_dir("export")))
    colmap = reconstructability(frames) if frames is not None else None  # None too when too small
    return {
        "held_out_psnr": project.manifest()["stages"]["splats"]["metrics"]["psnr"],
        **mesh_accuracy(mesh, poses.cam_to_world, truth, true),
        **off_orbit_quality(project.stage_dir("splats"), poses.cam_to_world, truth, true),
        **{f"colmap_{k}": v for k, v in (colmap or {}).items()},
    }


def orbit_measures(frames: np.ndarray, cameras: list, truth: TrueOrbit, device: str = "cpu") -> dict:
    """The 3D measures of orbit frames (uint8 [F, H, W, 3]) with their cameras (camera i for frame
    i, in any world): the splats and export stages run on them in a scratch project, with the
    settings of RECONSTRUCT_CONFIG; COLMAP's reconstructability of the frames alone beside."""
    from vid3d import pipeline
    from vid3d.cameras import write_cameras
    from vid3d.config import load_settings, read_config, read_preset, set_layer
    from vid3d.project import Project

    with tempfile.TemporaryDirectory(prefix="vid3d-scene3d-") as scratch:
        scratch = Path(scratch)
        (scratch / "input").mkdir()
        for i, frame in enumerate(frames):
            iio.imwrite(scratch / "input" / f"{i:05d}.png", frame)
        write_cameras(scratch / "cameras.json", cameras)
        overrides = {
            "frames.input": str(scratch / "input"),
            "frames.count": len(frames),
            "frames.max_side": 0,
            "poses.cameras": str(scratch / "cameras.json"),
            **MESH_ONLY,
        }
        settings = load_settings(
            read_preset("fast"), read_config(RECONSTRUCT_CONFIG), *(set_layer(f"{k}={v}") for k, v in overrides.items())
        )
        project_dir = scratch / "project"
        pipeline.run(pipeline.Context(Project(project_dir), settings, device), "export")
        return project_measures(project_dir, truth, frames)
