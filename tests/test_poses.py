"""Camera poses on procedural orbits with known cameras, through the command line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pycolmap
import pytest
from conftest import error_line, run_cli, run_json, tree
from plyfile import PlyData

from vid3d.metrics.poses import pose_errors
from vid3d.poses.colmap import numbered_series
from vid3d.poses.dataset import APPLIED_TRANSFORM, nerfstudio_to_colmap
from vid3d.scenes import make_scene, orbit_cameras, render

SEED, FRAMES = 1, 36


@pytest.fixture(scope="session")
def orbit(tmp_path_factory):
    """A closed orbit video of a procedural scene, its true cameras, and a project posed from it."""
    root = tmp_path_factory.mktemp("orbit")
    scene = make_scene(SEED)
    cameras = orbit_cameras(FRAMES, width=256, height=256)
    video = root / "orbit.mp4"
    iio.imwrite(video, render(scene, cameras).images, plugin="FFMPEG", fps=12, codec="libx264", quality=9)
    code, report = run_json("poses", root / "project", "--input", video)
    assert code == 0, report
    return {"scene": scene, "cameras": cameras, "video": video, "project": root / "project", "report": report}


def colmap_c2w(model):
    images = sorted(model.images.values(), key=lambda image: image.name)
    return [image.name for image in images], np.stack(
        [np.linalg.inv(np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]])) for image in images]
    )


@pytest.mark.slow
def test_registers_the_orbit_with_accurate_poses(orbit):
    project = orbit["project"]
    report = json.loads((project / "poses" / "report.json").read_text())
    assert report["registered"] >= 0.95 * FRAMES and report["total"] == FRAMES
    assert report["matcher"] == "sequential" and set(report["seconds"]) >= {"features", "matching", "mapping"}

    names, estimated = colmap_c2w(pycolmap.Reconstruction(project / "poses" / "sparse" / "0"))
    index = {
        e["file"]: e["source_index"] for e in json.loads((project / "frames" / "index.json").read_text())["frames"]
    }
    true = orbit["cameras"].cam_to_world[[index[name] for name in names]]
    errors = pose_errors(estimated, true)
    assert np.median(errors["rotation_deg"]) < 1.0
    assert np.median(errors["position"]) < 0.01 * orbit["scene"].extent


@pytest.mark.slow
def test_pose_errors_detect_a_wrong_camera(orbit):
    """The accuracy check above can fail: a swapped pair of cameras shows up in it."""
    true = orbit["cameras"].cam_to_world
    wrong = true.copy()
    wrong[[3, 20]] = wrong[[20, 3]]
    errors = pose_errors(wrong, true)
    assert errors["rotation_deg"][3] > 10 and np.median(errors["rotation_deg"]) < 1e-6


@pytest.mark.slow
def test_poses_folder_is_a_nerfstudio_and_colmap_dataset(orbit):
    poses = orbit["project"] / "poses"
    transforms = json.loads((poses / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model", "frames", "applied_transform", "ply_file_path"):
        assert key in transforms
    assert transforms["ply_file_path"] == "sparse_pc.ply"
    model = pycolmap.Reconstruction(poses / "sparse" / "0")
    assert {cam.model.name for cam in model.cameras.values()} == {"PINHOLE"}
    names, c2w = colmap_c2w(model)
    assert [f["file_path"] for f in transforms["frames"]] == [f"images/{n}" for n in names]
    for frame, cam_to_world in zip(transforms["frames"], c2w):
        assert (poses / frame["file_path"]).is_file()
        assert np.allclose(nerfstudio_to_colmap(frame["transform_matrix"]), np.linalg.inv(cam_to_world), atol=1e-8)
    width, height = transforms["w"], transforms["h"]
    assert iio.imread(poses / transforms["frames"][0]["file_path"]).shape[:2] == (height, width)

    vertex = PlyData.read(poses / "sparse_pc.ply")["vertex"]
    assert len(vertex) == model.num_points3D() > 500
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    colmap_xyz = np.array([p.xyz for p in model.points3D.values()])
    assert np.allclose(xyz, colmap_xyz @ APPLIED_TRANSFORM[:, :3].T, atol=1e-4)


@pytest.mark.slow
def test_rerun_is_cached_and_a_changed_setting_reruns_only_its_stage(orbit, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(orbit["project"], project)
    code, report = run_json("poses", project)
    assert code == 0 and {s["status"] for s in report["stages"].values()} == {"cached"}

    code, report = run_json("poses", project, "--set", "poses.loop_every=4")
    assert code == 0
    assert report["stages"]["frames"]["status"] == "cached" and report["stages"]["poses"]["status"] == "complete"

    code, report = run_json("frames", project, "--set", "frames.max_side=192")
    assert code == 0 and report["stages"]["frames"]["status"] == "complete"
    code, status = run_json("status", project)
    assert status["stages"]["poses"]["status"] == "stale"

    code, report = run_json("poses", project)  # the project remembers frames.max_side=192
    assert report["stages"]["frames"]["status"] == "cached" and report["stages"]["poses"]["status"] == "complete"
    assert json.loads((project / "poses" / "transforms.json").read_text())["w"] <= 192


@pytest.mark.slow
def test_killed_run_leaves_no_complete_stage_and_rerun_completes(orbit, tmp_path):
    project = tmp_path / "project"
    process = subprocess.Popen(
        [sys.executable, "-m", "vid3d.cli", "poses", str(project), "--input", str(orbit["video"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(project.glob(".tmp-poses-*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside pycolmap
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    code, status = run_json("status", project)
    assert status["stages"]["frames"]["status"] == "complete"
    assert status["stages"]["poses"]["status"] == "missing"
    code, report = run_json("poses", project)
    assert code == 0
    assert report["stages"]["frames"]["status"] == "cached" and report["stages"]["poses"]["status"] == "complete"
    assert not list(project.glob(".tmp-*"))


def test_numbered_file_names_are_a_series_other_names_are_not():
    assert numbered_series([f"IMG_{i:04d}.JPG" for i in range(1, 51)])
    assert numbered_series(["frame2.png", "frame10.png", "frame11.png"])  # natural order, gaps allowed
    assert not numbered_series(["IMG_0001.jpg", "DSC_0002.jpg"])
    assert not numbered_series(["kitchen.jpg", "hall.jpg"])
    assert not numbered_series(["a1.jpg"])


@pytest.mark.slow
def test_unordered_image_folder_is_matched_exhaustively(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    cameras = orbit_cameras(12, width=192, height=144, arc_deg=90, endpoint=True)
    for name, image in zip("kbdjfaglhcie", render(make_scene(2), cameras).images):
        iio.imwrite(folder / f"view_{name}.png", image)
    code, report = run_json("poses", tmp_path / "project", "--input", folder, "--set", "frames.min_frames=5")
    assert code == 0, report
    poses_report = json.loads((tmp_path / "project" / "poses" / "report.json").read_text())
    assert poses_report["matcher"] == "exhaustive" and poses_report["registered"] >= 11


@pytest.mark.slow
def test_unrelated_frames_fail_with_advice(tmp_path):
    folder = tmp_path / "unrelated"
    folder.mkdir()
    for seed in range(8):  # eight different scenes, seen once each: nothing to match
        camera = orbit_cameras(1, width=128, height=128, start_deg=45 * seed)
        iio.imwrite(folder / f"{seed}.png", render(make_scene(100 + seed), camera).images[0])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vid3d.cli",
            "poses",
            str(tmp_path / "p"),
            "--input",
            str(folder),
            "--set",
            "frames.min_frames=5",
            "--set",
            "poses.matcher=sequential",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    line = error_line(result.stderr)
    assert "frames registered" in line and "more overlap" in line
    _code, status = run_json("status", tmp_path / "p")
    assert status["stages"]["poses"]["status"] == "failed"
    assert status["stages"]["frames"]["status"] == "complete"


@pytest.mark.slow
def test_known_cameras_replace_colmap_for_frames_too_small_for_it(tmp_path):
    """A 64x64 orbit with its true cameras (as vid3d generate writes them): poses/ carries exactly
    those cameras in nerfstudio's convention, and the initial points surround the objects."""
    import imageio.v3 as iio
    from plyfile import PlyData

    from vid3d.poses.dataset import OPENCV_TO_OPENGL
    from vid3d.scenes import make_scene, orbit_cameras, render

    scene, cams = make_scene(5, simple=True), orbit_cameras(16, width=64, height=64)
    images = render(scene, cams).images
    folder = tmp_path / "generated"
    folder.mkdir()
    for i, image in enumerate(images):
        iio.imwrite(folder / f"{i:05d}.png", image)
    entries = [
        {
            "frame": i,
            "camera_to_world": cams.cam_to_world[i].tolist(),
            "K": cams.K[i].tolist(),
            "width": 64,
            "height": 64,
        }
        for i in range(len(cams))
    ]
    (tmp_path / "cameras.json").write_text(json.dumps({"frames": entries}))

    code, report = run_json(
        "poses",
        tmp_path / "p",
        "--input",
        folder,
        "--poses",
        tmp_path / "cameras.json",
        "--set",
        "frames.count=8",
        "--set",
        "frames.min_frames=8",
    )
    assert code == 0, report
    transforms = json.loads((tmp_path / "p" / "poses" / "transforms.json").read_text())
    assert len(transforms["frames"]) == 8
    for frame in transforms["frames"]:
        source = int(frame["file_path"].split("/")[-1].split(".")[0])
        kept = json.loads((tmp_path / "p" / "frames" / "index.json").read_text())["frames"][source]
        number = int(kept["source"].split(".")[0])
        expected = cams.cam_to_world[number] @ OPENCV_TO_OPENGL
        assert np.allclose(frame["transform_matrix"], expected)
        assert frame["fl_x"] == pytest.approx(cams.K[number][0, 0])
    vertex = PlyData.read(str(tmp_path / "p" / "poses" / "sparse_pc.ply"))["vertex"]
    centre = np.array([vertex["x"].mean(), vertex["y"].mean(), vertex["z"].mean()])
    assert np.linalg.norm(centre - np.array([0.0, 0.0, 0.4])) < 0.2  # orbit_cameras look at (0, 0, 0.4)

    broken = tmp_path / "broken.json"
    broken.write_text('{"frames": [{"frame": 0}]}')
    before = tree(tmp_path / "p")
    result = run_cli("poses", tmp_path / "p", "--poses", broken)
    assert result.returncode == 2 and "broken.json" in error_line(result.stderr)
    assert tree(tmp_path / "p") == before
