"""Gaussian splatting on a procedural orbit: quality floor, the .ply round trip, resume after a kill."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from conftest import INTERRUPTED_TRAINING as SHORT
from conftest import QUALITY_TRAINING as QUICK
from conftest import error_line, run_cli, run_json
from plyfile import PlyData

from vid3d.export import read_mesh
from vid3d.scenes import make_scene, orbit_cameras, render
from vid3d.splats.data import load_dataset
from vid3d.splats.model import PARAM_NAMES, load_ply
from vid3d.splats.model import render as render_splats
from vid3d.splats.results import read_history

pytestmark = pytest.mark.slow  # every test reads a module fixture trained through the command line (500 steps)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reconstruct")
    video = root / "orbit.mp4"
    images = render(make_scene(3), orbit_cameras(32, width=128, height=128)).images
    iio.imwrite(video, images, plugin="FFMPEG", fps=12, codec="libx264", quality=9)
    code, report = run_json("poses", root / "posed", "--input", video)
    assert code == 0, report
    shutil.copytree(root / "posed", root / "project")
    code, report = run_json("reconstruct", root / "project", *QUICK)
    assert code == 0, report
    return root


def wait_for_checkpoint(project, process, step: int, timeout: float = 300) -> None:
    """Until the running training has checkpointed at `step` or later (or the process ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        checkpoints = list(project.glob(".resume/splats-*/ckpt.pt"))
        if checkpoints and torch.load(checkpoints[0], weights_only=False)["step"] >= step:
            return
        time.sleep(0.5)


def psnr(a, b):
    return float(-10 * torch.log10(((a.clamp(0, 1) - b) ** 2).mean()))


def test_training_reaches_a_quality_floor_on_held_out_frames(trained):
    metrics = json.loads((trained / "project" / "splats" / "metrics.json").read_text())
    data = load_dataset(trained / "project" / "poses", test_every=8)
    # pycolmap's multi-threaded mapper does not register the same frames every run (one CI run: under 25 of 32)
    assert len(data.names) >= 16
    assert metrics["held_out"] and metrics["eval_frames"] == len(data.test) and metrics["steps"] == 500
    # what the frames give without learning: every held-out frame predicted by its mean colour
    flat = [psnr(data.images[i].mean((0, 1)).expand_as(data.images[i]), data.images[i]) for i in data.test]
    assert metrics["psnr"] >= 20.0 and metrics["psnr"] >= sum(flat) / len(flat) + 7
    assert metrics["gaussians"] > 0 and metrics["backend"] == "torch"
    renders = sorted((trained / "project" / "splats" / "renders").glob("*.png"))
    assert [p.stem for p in renders] == [Path(data.names[i]).stem for i in data.test]
    assert iio.imread(renders[0]).shape == (data.height, 2 * data.width, 3)  # render beside original


def test_splats_ply_reads_back_into_the_same_gaussians(trained):
    splats_dir = trained / "project" / "splats"
    names = PlyData.read(str(splats_dir / "splats.ply"))["vertex"].data.dtype.names
    assert names[:3] == ("x", "y", "z") and "opacity" in names and "rot_3" in names and "scale_2" in names
    assert [n for n in names if n.startswith("f_dc_")] == ["f_dc_0", "f_dc_1", "f_dc_2"]
    assert len([n for n in names if n.startswith("f_rest_")]) == 45

    loaded = load_ply(splats_dir / "splats.ply")
    saved = torch.load(splats_dir / "ckpt" / "ckpt.pt", weights_only=False)["splats"]
    for name in PARAM_NAMES:
        assert torch.allclose(loaded[name], saved[name]), name

    data = load_dataset(trained / "project" / "poses", test_every=8)
    metrics = json.loads((splats_dir / "metrics.json").read_text())
    background = torch.tensor([metrics["background"]])
    with torch.no_grad():
        scores = [
            psnr(
                render_splats(
                    loaded,
                    data.viewmats[i : i + 1],
                    data.Ks[i : i + 1],
                    data.width,
                    data.height,
                    3,
                    backend="torch",
                    backgrounds=background,
                )[0][0],
                data.images[i],
            )
            for i in data.test
        ]
    assert sum(scores) / len(scores) == pytest.approx(metrics["psnr"], abs=1e-2)


def test_rerun_is_cached(trained, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(trained / "project", project)
    code, report = run_json("reconstruct", project)
    assert code == 0 and {s["status"] for s in report["stages"].values()} == {"cached"}


def test_killed_training_resumes_from_its_checkpoint(trained, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(trained / "posed", project)
    command = [sys.executable, "-m", "vid3d.cli", "reconstruct", str(project), *SHORT]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(project, process, step=50)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (project / "splats").exists()

    result = run_cli("reconstruct", project, "--json")  # no flags: the killed run's settings are remembered
    assert result.returncode == 0, result.stderr
    resumed_at = int(re.search(r"resuming from the checkpoint at step (\d+)", result.stderr)[1])
    assert 50 <= resumed_at < 150 and json.loads(result.stdout)["metrics"]["steps"] == 150
    assert not list(project.glob(".resume/splats-*"))
    # one curve: the checkpoint's steps, then the resumed ones, each step once; and the resumed steps
    # start where the checkpoint left off, well above where training from scratch starts
    history = read_history(project / "splats")
    assert history["step"].tolist() == list(range(1, 151))
    assert history["psnr"][resumed_at : resumed_at + 10].mean() > history["psnr"][:10].mean() + 2


def test_gsplat_backend_without_cuda_is_a_usage_error(trained, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the gsplat backend runs")
    project = tmp_path / "project"
    shutil.copytree(trained / "posed", project)
    result = run_cli("reconstruct", project, "--backend", "gsplat", "--device", "cpu")
    assert result.returncode == 2 and "needs a CUDA GPU" in error_line(result.stderr)
    assert not (project / "splats").exists()


def test_export_writes_every_asset_in_the_cameras_frame(trained, tmp_path):
    from vid3d.metrics.mesh import compare_to_truth

    project = tmp_path / "project"
    shutil.copytree(trained / "project", project)
    code, report = run_json(
        "export", project, "--mesh", "--format", "glb", "--splat", "ply", "--pointcloud", "--cameras"
    )
    assert code == 0, report
    assert report["stages"]["splats"]["status"] == "cached"
    export = project / "export"
    assert sorted(p.name for p in export.iterdir() if not p.name.startswith(".")) == [
        "camera.chan",
        "camera_path.json",
        "mesh.glb",
        "pointcloud.ply",
        "poses_cameras.json",
        "splat.ply",
    ]

    mesh = read_mesh(export / "mesh.glb")
    assert len(mesh.faces) == report["metrics"]["mesh_faces"] > 1000
    assert mesh.visual.kind == "texture"  # glb: a uv atlas and its baked texture
    texture = np.asarray(mesh.visual.material.baseColorTexture)[..., :3].astype(int)
    assert texture.std() > 10  # real colours, not one flat default
    names = PlyData.read(str(export / "splat.ply"))["vertex"].data.dtype.names
    assert {"x", "f_dc_0", "f_rest_44", "opacity", "scale_2", "rot_3"} <= set(names)
    cameras = json.loads((export / "poses_cameras.json").read_text())
    transforms = json.loads((project / "poses" / "transforms.json").read_text())
    assert len(cameras["cameras"]) == len(transforms["frames"]) and cameras["width"] == transforms["w"]
    assert np.allclose(
        cameras["cameras"][0]["transform_matrix"], transforms["frames"][0]["transform_matrix"], atol=1e-5
    )
    assert len(trimesh.load(export / "pointcloud.ply").vertices) == report["metrics"]["points"] > 100

    # against the true scene: the mesh lies on its surfaces once the cameras are aligned
    index = {
        e["file"]: e["source_index"] for e in json.loads((project / "frames" / "index.json").read_text())["frames"]
    }
    estimated = np.stack([np.asarray(f["transform_matrix"]) @ np.diag([1.0, -1, -1, 1]) for f in transforms["frames"]])
    true = orbit_cameras(32, width=128, height=128).cam_to_world[
        [index[Path(f["file_path"]).name] for f in transforms["frames"]]
    ]
    scene = make_scene(3)
    low, high = scene.object_bounds
    region = np.array([[low[0] - 0.5, low[1] - 0.5, -0.05], [high[0] + 0.5, high[1] + 0.5, high[2] + 0.1]])
    accuracy = compare_to_truth(mesh, estimated, true, scene.mesh(), region, samples=50_000)
    assert accuracy["chamfer_fraction"] < 0.02 and accuracy["fscore_1pct"] > 0.5, accuracy


def test_run_twice_is_all_cached_and_bad_bbox_is_a_usage_error(trained, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(trained / "project", project)
    code, first = run_json("run", project)
    assert code == 0 and first["stages"]["export"]["status"] == "complete"
    code, second = run_json("run", project)
    assert code == 0 and {s["status"] for s in second["stages"].values()} == {"cached"}
    before = sorted(p.name for p in (project / "export").iterdir())
    result = run_cli("export", project, "--bbox", "1,2,3")
    assert result.returncode == 2 and "export.bbox" in error_line(result.stderr)
    assert sorted(p.name for p in (project / "export").iterdir()) == before


def test_sigterm_after_colmap_checkpoints_and_resumes(trained, tmp_path):
    """A farm stops `reconstruct` with SIGTERM after it ran COLMAP in the same process (pycolmap's
    glog handler must not take the signal): one line, a checkpoint, and a rerun that resumes."""
    project = tmp_path / "project"
    command = [
        sys.executable,
        "-m",
        "vid3d.cli",
        "reconstruct",
        str(project),
        "--input",
        str(trained / "orbit.mp4"),
        *SHORT,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(project, process, step=50)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr
    assert process.returncode == 143 and "saved a checkpoint" in stderr  # 128 + SIGTERM
    assert error_line(stderr) == "error: interrupted; rerun the same command, or it without flags, to continue"
    assert (project / "poses").is_dir() and not (project / "splats").exists()

    status = run_cli("status", project, "--json")
    checkpoint = json.loads(status.stdout)["stages"]["splats"]["checkpoint"]
    assert checkpoint["step"] >= 50 and checkpoint["steps"] == 150 and checkpoint["remembered"]
    assert checkpoint["command"].startswith(f"vid3d reconstruct {project} --input ")
    line = f"a checkpoint waits at step {checkpoint['step']} of 150"
    assert line in run_cli("status", project).stderr

    result = run_cli("reconstruct", project, "--json")  # a farm script's bare rerun continues it
    assert result.returncode == 0, result.stderr
    assert f"resuming from the checkpoint at step {checkpoint['step']}" in result.stderr
    assert "checkpoint" not in json.loads(run_cli("status", project, "--json").stdout)["stages"]["splats"]
    stages = json.loads(result.stdout)["stages"]
    assert stages["frames"]["status"] == stages["poses"]["status"] == "cached"


def test_metrics_name_the_held_out_frames(trained):
    """Every 8th frame of transforms.json, by name, so a user can hold out the same in nerfstudio."""
    metrics = json.loads((trained / "project" / "splats" / "metrics.json").read_text())
    data = load_dataset(trained / "project" / "poses", test_every=8)
    assert metrics["held_out_frames"] == [data.names[i] for i in range(0, len(data.names), 8)]
