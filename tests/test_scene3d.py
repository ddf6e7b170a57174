"""The 3D measures of a video (vid3d.metrics.scene3d) on inputs with a known answer: the true
scene's own surface and renders, a world moved by a known similarity, and a video that shows no
3D at all (the reference frame held still)."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from vid3d.cameras import Camera
from vid3d.generate.model import RIG
from vid3d.generate.model.data import orbit
from vid3d.metrics.scene3d import (
    OFF_ORBIT_VIEWS,
    TrueOrbit,
    into_reconstruction,
    mesh_accuracy,
    orbit_measures,
    reconstructability,
    to_truth,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEED = 1_000_000  # a held-out scene of the embedded model


def moved_world(seed: int = 3) -> np.ndarray:
    """A similarity [4, 4] (scale 1.7, a rotation and a shift) standing in for a reconstruction's world."""
    world = np.eye(4)
    world[:3, :3] = 1.7 * Rotation.from_euler("xyz", [15, -30, 80], degrees=True).as_matrix()
    world[:3, 3] = [0.5, -2.0, 1.0]
    return world


def test_the_reference_sidecar_gives_the_true_cameras_of_the_bundled_reference():
    truth = TrueOrbit.of_reference(EXAMPLES / "reference.png", 48)
    first = truth.renders(truth.cameras[[0]])[0].astype(np.float32)
    assert np.abs(first - iio.imread(EXAMPLES / "reference.png").astype(np.float32)).mean() < 1.0
    assert TrueOrbit.of_reference(EXAMPLES / "orbit.mp4", 48) is None  # its sidecar names no reference camera


def test_off_orbit_cameras_are_higher_or_closer_and_look_at_the_orbits_centre():
    truth = TrueOrbit(SEED, orbit(SEED), RIG)
    centre = np.asarray(RIG["look_at"])
    views = truth.off_orbit()
    for name, cameras in views.items():
        offsets = cameras.centers() - centre
        distance = np.linalg.norm(offsets, axis=1)
        elevation = np.degrees(np.arcsin(offsets[:, 2] / distance))
        assert len(cameras) == OFF_ORBIT_VIEWS
        if name == "higher":
            assert np.allclose(distance, RIG["radius"]) and np.allclose(elevation, 40.0)
        else:
            assert np.allclose(distance, 0.75 * RIG["radius"]) and np.allclose(elevation, RIG["elevation_deg"])
        forward = cameras.cam_to_world[:, :3, 2]  # OpenCV: +z looks ahead
        assert np.allclose((forward * -offsets / distance[:, None]).sum(1), 1.0)
        orbit_centres = truth.cameras.centers()
        assert np.linalg.norm(cameras.centers()[:, None] - orbit_centres[None], axis=2).min() > 0.1


def test_cameras_go_into_a_moved_world_and_back():
    true = orbit(SEED).cam_to_world
    world = moved_world()
    reconstruction = np.linalg.inv(world) @ true  # what a reconstruction in that world would give
    reconstruction[:, :3, :3] /= np.cbrt(np.linalg.det(reconstruction[:, :3, :3]))[:, None, None]
    alignment = to_truth(reconstruction, true)
    assert alignment[0] == pytest.approx(1.7)
    assert np.allclose(into_reconstruction(true, alignment), reconstruction, atol=1e-9)


def test_the_true_surface_in_a_moved_world_is_at_zero_distance_and_a_shifted_one_is_not():
    truth = TrueOrbit(SEED, orbit(SEED), RIG)
    true = truth.cameras.cam_to_world
    world = moved_world()
    reconstruction = np.linalg.inv(world) @ true
    mesh = truth.scene().mesh()
    moved = trimesh.Trimesh(trimesh.transform_points(mesh.vertices, np.linalg.inv(world)), mesh.faces)
    same = mesh_accuracy(moved, reconstruction, truth, true)
    assert same["chamfer_pct"] < 0.1 and same["fscore_1pct"] > 0.99
    shifted = moved.copy()
    shifted.vertices += np.linalg.inv(world)[:3, :3] @ [0.0, 0.0, 0.2]  # 0.2 up in the true world
    off = mesh_accuracy(shifted, reconstruction, truth, true)
    assert off["chamfer_pct"] > 10 * same["chamfer_pct"] and off["fscore_1pct"] < 0.5


@pytest.mark.slow
def test_the_true_renders_reconstruct_close_to_the_truth_and_a_still_video_does_not():
    """The ceiling: the true renders of the orbit, through the splats and export stages, give a
    mesh within about 2% of the diagonal and views off the orbit near the true ones; the reference
    held still for the whole video gives neither."""
    truth = TrueOrbit(SEED, orbit(SEED), RIG)
    frames = truth.renders()
    cameras = [
        Camera(c, k, truth.cameras.width, truth.cameras.height)
        for c, k in zip(truth.cameras.cam_to_world, truth.cameras.K)
    ]
    ceiling = orbit_measures(frames, cameras, truth)
    still = orbit_measures(np.repeat(frames[:1], len(frames), axis=0), cameras, truth)
    assert ceiling["chamfer_pct"] < 2.5 and ceiling["fscore_1pct"] > 0.35, ceiling
    assert ceiling["held_out_psnr"] > 22 and ceiling["off_orbit_psnr"] > 15, ceiling
    # The ground fills most of the scene's region, and a still video gets it about right: the
    # objects tell the two apart.
    assert still["objects_chamfer_pct"] > 2 * ceiling["objects_chamfer_pct"], (still, ceiling)
    assert still["objects_fscore_1pct"] < 0.5 * ceiling["objects_fscore_1pct"], (still, ceiling)
    assert still["off_orbit_psnr"] < ceiling["off_orbit_psnr"] - 1, (still, ceiling)
    assert "colmap_registered" not in ceiling  # 64-pixel frames: too small for SIFT


@pytest.mark.slow
def test_colmap_reconstructs_the_true_renders_and_not_noise():
    truth = TrueOrbit(SEED, orbit(SEED, size=256), RIG)
    frames = truth.renders()
    good = reconstructability(frames)
    assert good["registered"] >= 0.9 and good["reprojection_px"] < 1.5 and good["track_length"] > 2.5
    noise = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    bad = reconstructability(noise)
    assert bad["registered"] < 0.5
    assert reconstructability(frames[:, :128, :128]) is None


def test_the_embedded_model_leaves_denormals_on_for_what_runs_after_it():
    """The model flushes denormals while it computes (for speed) and not after: with the flag left
    on, scipy's cKDTree recursed without end on this scene's surface (a crash of the 3D measures)."""
    import torch
    from scipy.spatial import cKDTree

    from vid3d.generate.adapters.orbit import OrbitVideoModel
    from vid3d.metrics.mesh import crop, sample_surface
    from vid3d.metrics.scene3d import scene_region

    model = OrbitVideoModel.load(None)
    model.decode_frames(torch.zeros(model.latent_shape(None, 2)))
    assert float(torch.tensor([1e-40]) * 1.0) != 0.0
    scene = TrueOrbit(SEED, orbit(SEED), RIG).scene()
    points = crop(sample_surface(scene.mesh(), 200_000), scene_region(scene))
    assert cKDTree(points).query(points[:5])[0].max() == 0.0


@pytest.mark.slow
def test_metrics_and_the_demo_summary_judge_a_project_generated_from_the_bundled_reference(tmp_path):
    """`vid3d metrics` on a project generated from examples/reference.png (whose sidecar names its
    true scene) reports the 3D measures, the same the demo's generated summary shows; a project of
    a video with no known scene reports none."""
    from conftest import run_json, set_flags

    from vid3d.demo import generated_summary

    project = tmp_path / "generated"
    config = ("--config", EXAMPLES.parent / "configs" / "demo-generate.toml")
    quick = set_flags(generate={"steps": 4}, splats={"steps": 60}, export={"mesh_format": "ply", "texture_size": 0})
    for command in (("generate", project, "--image", EXAMPLES / "reference.png"), ("export", project)):
        code, result = run_json(*command, *config, *quick)
        assert code == 0, result
    code, result = run_json("metrics", project)
    assert code == 0, result
    measures = result["metrics"]
    for key in ("chamfer_pct", "fscore_1pct", "precision_1pct", "recall_1pct", "off_orbit_psnr", "off_orbit_ssim"):
        assert key in measures, measures
    assert 0 < measures["chamfer_pct"] < 50 and 5 < measures["off_orbit_psnr"] < 40
    summary = generated_summary(project)
    assert summary["chamfer_pct_of_diagonal"] == measures["chamfer_pct"]
    assert summary["off_orbit_psnr"] == measures["off_orbit_psnr"]

    video = tmp_path / "video"
    code, result = run_json("frames", video, "--input", EXAMPLES / "orbit.mp4")
    assert code == 0, result
    code, result = run_json("metrics", video)
    assert code == 0 and "chamfer_pct" not in result["metrics"], result
