"""`vid3d demo`: the whole chain on the bundled example, and how close it came to the truth.

The example is a procedural scene (examples/orbit.json says which), so its true mesh and cameras
are known: the summary reports the mesh's Chamfer distance and F-score against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vid3d.export import mesh_path, read_mesh
from vid3d.generate.output import GeneratedVideo
from vid3d.ingest import FramesIndex
from vid3d.poses import read_dataset
from vid3d.project import Project

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_VIDEO = EXAMPLES / "orbit.mp4"


def summary(project_dir: Path) -> dict:
    """Frames, registered cameras, held-out PSNR, Gaussians, mesh faces and size, Chamfer, F-score and
    the precision of all the mesh's surface (background included)."""
    from vid3d.metrics.mesh import compare_to_truth
    from vid3d.metrics.scene3d import scene_region
    from vid3d.scenes import make_scene, orbit_cameras

    project = Project(project_dir)
    stages = project.manifest()["stages"]
    truth = json.loads(EXAMPLE_VIDEO.with_suffix(".json").read_text())
    scene = make_scene(truth["scene_seed"])
    true_cameras = orbit_cameras(truth["frames"], width=truth["width"], height=truth["height"])
    poses = read_dataset(project.stage_dir("poses"))
    source_index = {e.file: e.source_index for e in FramesIndex.read(project.stage_dir("frames")).frames}
    true = true_cameras.cam_to_world[[source_index[name] for name in poses.names]]
    mesh_file = mesh_path(project.stage_dir("export"))
    mesh = read_mesh(mesh_file)
    accuracy = compare_to_truth(mesh, poses.cam_to_world, true, scene.mesh(), scene_region(scene))
    return {
        "frames": stages["frames"]["metrics"]["frames"],
        "registered": f"{stages['poses']['metrics']['registered']}/{stages['poses']['metrics']['total']}",
        "held_out_psnr": stages["splats"]["metrics"]["psnr"],
        "gaussians": stages["splats"]["metrics"]["gaussians"],
        "mesh_faces": len(mesh.faces),
        "mesh_mb": round(mesh_file.stat().st_size / 1e6, 1),
        "chamfer_pct_of_diagonal": round(100 * accuracy["chamfer_fraction"], 3),
        "fscore_at_1pct": round(accuracy["fscore_1pct"], 4),
        "precision_at_1pct": round(accuracy["precision_all"], 4),
        "seconds": round(sum(s["timings"]["total"] for s in stages.values() if "timings" in s), 1),
    }


# The generation part: a held-out procedural scene's reference frame (examples/reference.json says
# which), never seen in training, turned into an orbit by the embedded model, then into Gaussians and a mesh.
EXAMPLE_REFERENCE = EXAMPLES / "reference.png"
# The demo's settings on top of the fast preset: configs/<name>.toml, with why each one is set.
VIDEO_CONFIG = "demo"
GENERATED_CONFIG = "demo-generate"


def generated_summary(project_dir: Path) -> dict:
    """Generation time and consistency, the generated frames' error against the true renders (and
    copying the reference, for scale), held-out PSNR of the Gaussians, mesh faces, and the 3D the
    orbit yields against the true scene (vid3d.metrics.scene3d: mesh Chamfer and F-score, the
    Gaussians' PSNR and SSIM off the orbit)."""
    from vid3d.generate.model.data import render_orbit
    from vid3d.metrics.scene3d import TrueOrbit, project_measures

    project = Project(project_dir)
    stages = project.manifest()["stages"]
    seed = json.loads(EXAMPLE_REFERENCE.with_suffix(".json").read_text())["scene_seed"]
    generated = GeneratedVideo.read(project.stage_dir("generate")).frames().astype(np.float32) / 255
    truth = render_orbit(seed, frames=len(generated)).astype(np.float32) / 255
    degrees = np.arange(len(generated)) * 360.0 / len(generated)
    far = np.minimum(degrees, 360 - degrees) >= 45
    mesh = read_mesh(mesh_path(project.stage_dir("export")))
    measures = project_measures(project_dir, TrueOrbit.of_reference(EXAMPLE_REFERENCE, len(generated)))
    return {
        "generated_frames": len(generated),
        "generate_seconds": stages["generate"]["timings"]["total"],
        "error_vs_truth_45deg": round(float(np.abs(generated[far] - truth[far]).mean()), 4),
        "copy_reference_error": round(float(np.abs(truth[:1] - truth[far]).mean()), 4),
        "loop_closure": stages["generate"]["metrics"]["loop_closure"],
        "held_out_psnr": stages["splats"]["metrics"]["psnr"],
        "gaussians": stages["splats"]["metrics"]["gaussians"],
        "mesh_faces": len(mesh.faces),
        "chamfer_pct_of_diagonal": measures["chamfer_pct"],
        "fscore_at_1pct": measures["fscore_1pct"],
        "off_orbit_psnr": measures["off_orbit_psnr"],
        "off_orbit_ssim": measures["off_orbit_ssim"],
        "seconds": round(sum(s["timings"]["total"] for s in stages.values() if "timings" in s), 1),
    }
