"""A real client renders export's USD camera (issue 25): Blender (Debian's 3.4, Cycles on the CPU)
loads the mesh, through its glTF importer or from the USD scene's mesh prim, puts a camera where
the scene's animated camera is at some frames (tests/blender_render.py) and renders; and Blender 5
(PyPI's bpy, built with USD) imports scene.usda with its own USD importer, mesh, material and
animated camera, and renders (tests/blender_usd_import.py). The pictures match vid3d's own view of
the mesh through the same cameras (usd_scene.raycast_colours)."""

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import run_json
from scipy.ndimage import binary_erosion, maximum_filter, minimum_filter
from usd_scene import BPY_PYTHON, HEIGHT, STEP, WIDTH, blender_usd_render, export_usd, make_project, raycast_colours

from vid3d.export import mesh_path, read_mesh
from vid3d.poses import read_dataset

pytestmark = pytest.mark.slow
needs_blender = pytest.mark.skipif(
    shutil.which("blender") is None, reason="Blender is not installed (.ci/run installs it)"
)

SCRIPT = Path(__file__).with_name("blender_render.py")


def blender_render(scene: Path, mesh: str, times: list[int], size: tuple[int, int], out: Path) -> dict[int, np.ndarray]:
    """RGBA renders of the scene's solved camera at `times`, by time."""
    out.mkdir(parents=True, exist_ok=True)
    job = {
        "site_packages": sysconfig.get_paths()["purelib"],  # usd-core and numpy for Blender's Python 3.11
        "scene": str(scene),
        "mesh": mesh,
        "times": times,
        "width": size[0],
        "height": size[1],
        "samples": 8,
        "out": str(out),
    }
    (out / "job.json").write_text(json.dumps(job))
    result = subprocess.run(
        ["blender", "-b", "--factory-startup", "--python", str(SCRIPT), "--", str(out / "job.json")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and "Error" not in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    return {time: iio.imread(out / f"time_{time:g}.png") for time in times}


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / ((a[..., :3].astype(float) - b[..., :3]) ** 2)[mask].mean()))


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(0)


@needs_blender
@pytest.mark.parametrize("mesh", ["glb", "usd"])
def test_blender_renders_the_textured_cube_through_the_usd_camera_as_vid3d_sees_it(tmp_path, mesh):
    root = make_project(tmp_path, square_pixels=True)  # Blender's camera has one pixel aspect per scene
    out = export_usd(root)
    poses = read_dataset(root / "poses")
    cube = read_mesh(out / "mesh.glb")
    frames = {0: "00000.jpg", 3 * STEP: "00003.jpg"}  # time code -> poses/ image
    renders = blender_render(
        out / "scene.usda",
        str(out / "mesh.glb") if mesh == "glb" else "usd",
        list(frames),
        (WIDTH, HEIGHT),
        tmp_path / "blender",
    )
    for time, name in frames.items():
        i = poses.names.index(name)
        reference, covered = raycast_colours(cube, poses.Ks[i], poses.cam_to_world[i], WIDTH, HEIGHT)
        seen = renders[time][..., 3] > 127
        assert (seen & covered).sum() / (seen | covered).sum() > 0.97
        assert np.abs(centroid(seen) - centroid(covered)).max() < 0.3  # pixels: the principal point's shift is 1-4
        flat = flat_colour(reference, seen, covered)
        assert flat.sum() > 0.5 * covered.sum()
        assert psnr(renders[time], reference, flat) > 40


def flat_colour(reference: np.ndarray, seen: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Where vid3d's view is one colour over 3x3 pixels: away from the silhouette's anti-aliasing
    and the texture's colour edges, which Blender filters and vid3d's nearest texel does not."""
    return binary_erosion(seen & covered) & (
        maximum_filter(reference, (3, 3, 1)) == minimum_filter(reference, (3, 3, 1))
    ).all(-1)


@pytest.mark.skipif(not BPY_PYTHON.exists(), reason="no .venv-blender (scripts/setup_blender.sh; .ci/run makes it)")
def test_blenders_usd_importer_renders_the_scene_through_its_animated_camera_as_vid3d_sees_it(tmp_path):
    root = make_project(tmp_path, square_pixels=True)
    out = export_usd(root)
    poses = read_dataset(root / "poses")
    cube = read_mesh(out / "mesh.glb")
    frames = {0: "00000.jpg", 3 * STEP: "00003.jpg"}  # frame number (time code) -> poses/ image
    result = blender_usd_render(out / "scene.usda", "Solved", list(frames), (WIDTH, HEIGHT), tmp_path / "blender")
    assert '"MESH": 1' in result.stdout  # the mesh prim; and the animated camera plus one per poses/ camera
    for frame, name in frames.items():
        i = poses.names.index(name)
        render = iio.imread(tmp_path / "blender" / f"frame_{frame}.png")
        reference, covered = raycast_colours(cube, poses.Ks[i], poses.cam_to_world[i], WIDTH, HEIGHT)
        seen = render[..., 3] > 127
        assert (seen & covered).sum() / (seen | covered).sum() > 0.97
        assert np.abs(centroid(seen) - centroid(covered)).max() < 0.5
        flat = flat_colour(reference, seen, covered)
        assert flat.sum() > 0.5 * covered.sum()
        assert psnr(render, reference, flat) > 40


DEMO = os.environ.get("VID3D_DEMO_PROJECT")  # a trained demo project (vid3d demo), copied before export


@needs_blender
@pytest.mark.skipif(not DEMO, reason="set VID3D_DEMO_PROJECT to a trained demo project")
def test_blender_renders_the_demo_exports_usd_mesh_like_the_source_frames(tmp_path):
    project = tmp_path / "demo"
    shutil.copytree(DEMO, project, symlinks=True)
    code, report = run_json("export", project, "--usd")
    assert code == 0, report
    poses = read_dataset(project / "poses")
    mesh = read_mesh(mesh_path(project / "export"))
    times = [7, 27, 47]  # a video's frames: the time codes are its frame numbers
    renders = blender_render(
        project / "export" / "scene.usda", "usd", times, (poses.width, poses.height), tmp_path / "blender"
    )
    for time in times:
        i = poses.names.index(f"{time:05d}.jpg")
        reference, covered = raycast_colours(mesh, poses.Ks[i], poses.cam_to_world[i], poses.width, poses.height)
        seen = renders[time][..., 3] > 250
        both = seen & covered
        assert both.sum() / (seen | covered).sum() > 0.95
        assert psnr(renders[time], reference, both) > 32
        source = iio.imread(poses.paths[i])
        assert psnr(renders[time], source, both) > psnr(reference, source, both) - 0.5
