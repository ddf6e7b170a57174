"""Datasets users already have as --input: nerfstudio / instant-ngp folders and COLMAP projects,
their cameras taken as given (no COLMAP run), written as the same poses/ dataset."""

import json

import imageio.v3 as iio
import numpy as np
import pycolmap
import pytest
from conftest import TINY_TRAINING as FAST
from conftest import error_line, run_cli, run_json, tree
from plyfile import PlyData

from vid3d.config import load_settings
from vid3d.pipeline import Context, run
from vid3d.poses import read_dataset
from vid3d.poses.dataset import APPLIED_TRANSFORM, OPENCV_TO_OPENGL, write_ply
from vid3d.project import Project
from vid3d.scenes import make_scene, orbit_cameras, render
from vid3d.scenes.cameras import Cameras, intrinsics

SIZE, VIEWS = 64, 10


@pytest.fixture(scope="module")
def scene():
    """A small orbit of a procedural scene: true cameras (OpenCV axes) and their images."""
    cameras = orbit_cameras(VIEWS, width=SIZE, height=SIZE, arc_deg=180, endpoint=True)
    return {"cameras": cameras, "images": render(make_scene(3, simple=True), cameras).images}


def write_nerfstudio(folder, cameras, images, per_frame=False, points=False):
    """transforms.json as ns-process-data writes it (OpenGL axes), images/frame_00001.png ..."""
    (folder / "images").mkdir(parents=True)
    frames = []
    for i, (c2w, K, image) in enumerate(zip(cameras.cam_to_world, cameras.K, images)):
        name = f"images/frame_{i + 1:05d}.png"
        iio.imwrite(folder / name, image)
        frame = {"file_path": name, "transform_matrix": (c2w @ OPENCV_TO_OPENGL).tolist()}
        if per_frame:
            frame.update(intrinsic_keys(K, cameras))
        frames.append(frame)
    meta = {"camera_model": "OPENCV", "frames": frames}
    if not per_frame:
        meta.update(intrinsic_keys(cameras.K[0], cameras))
    if points:
        xyz = np.random.default_rng(0).normal(scale=0.3, size=(200, 3))
        write_ply(xyz, np.full((200, 3), 200, np.uint8), folder / "points.ply")
        meta["ply_file_path"] = "points.ply"
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def intrinsic_keys(K, cameras):
    return {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": cameras.width, "h": cameras.height}


def write_colmap(folder, cameras, images, model_dir="sparse/0", text=False, radial=None):
    """A COLMAP project: images/ and a model with the true cameras and some points; with `radial`
    (one k per image) a SIMPLE_RADIAL camera per image, as COLMAP makes by default."""
    (folder / "images").mkdir(parents=True)
    model = pycolmap.Reconstruction()
    K = cameras.K[0]
    for i in range(1 if radial is None else len(images)):
        camera = pycolmap.Camera.create_from_model_name(
            i + 1, "PINHOLE" if radial is None else "SIMPLE_RADIAL", K[0, 0], cameras.width, cameras.height
        )
        camera.params = (
            [K[0, 0], K[1, 1], K[0, 2], K[1, 2]] if radial is None else [K[0, 0], K[0, 2], K[1, 2], radial[i]]
        )
        model.add_camera_with_trivial_rig(camera)
    for i, (world_to_cam, image) in enumerate(zip(cameras.world_to_cam(), images)):
        iio.imwrite(folder / "images" / f"view{i}.jpg", image, quality=95)
        camera_id = 1 if radial is None else i + 1
        model.add_image_with_trivial_frame(
            pycolmap.Image(name=f"view{i}.jpg", camera_id=camera_id, image_id=i + 1), pycolmap.Rigid3d(world_to_cam[:3])
        )
    for xyz in np.random.default_rng(0).normal(scale=0.3, size=(150, 3)):
        model.add_point3D(xyz, pycolmap.Track(), np.array([10, 200, 30], np.uint8))
    (folder / model_dir).mkdir(parents=True)
    (model.write_text if text else model.write)(folder / model_dir)
    return folder


def rotation_errors_deg(estimated_c2w, true_c2w):
    relative = np.einsum("nji,njk->nik", true_c2w[:, :3, :3], estimated_c2w[:, :3, :3])
    return np.degrees(np.arccos(np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def given_cameras(poses_dir):
    report = json.loads((poses_dir / "report.json").read_text())
    assert report["source"] == "dataset" and "registered" not in report and "matcher" not in report
    return report


def reconstruct(dataset, project):
    """`vid3d reconstruct --input dataset`, checked; the poses stage's report."""
    code, result = run_json("reconstruct", project, "--input", dataset, *FAST)
    assert code == 0, result
    return given_cameras(project / "poses")


@pytest.mark.slow
def test_nerfstudio_dataset_reconstructs_with_its_cameras(scene, tmp_path):
    dataset = write_nerfstudio(tmp_path / "ns", scene["cameras"], scene["images"])
    project = tmp_path / "p"
    report = reconstruct(dataset, project)
    assert report["cameras_given"] == VIEWS and report["points"].startswith("ball") and not report["undistorted"]

    poses = read_dataset(project / "poses")  # nerfstudio's world is kept: the cameras come back as written
    assert rotation_errors_deg(poses.cam_to_world, scene["cameras"].cam_to_world).max() < 0.1
    assert np.allclose(poses.cam_to_world[:, :3, 3], scene["cameras"].cam_to_world[:, :3, 3], atol=1e-6)
    assert np.allclose(poses.Ks, scene["cameras"].K)
    model = pycolmap.Reconstruction(project / "poses" / "sparse" / "0")
    assert {camera.model.name for camera in model.cameras.values()} == {"PINHOLE"}
    assert (project / "splats" / "splats.ply").is_file()
    index = json.loads((project / "frames" / "index.json").read_text())
    assert index["kind"] == "dataset" and [f["source"] for f in index["frames"]][:2] == [
        "images/frame_00001.png",
        "images/frame_00002.png",
    ]
    assert np.array_equal(iio.imread(project / "poses" / "images" / "00003.png"), scene["images"][3])

    _code, again = run_json("poses", project)  # the project remembers the dataset; nothing reruns
    assert {s["status"] for s in again["stages"].values()} == {"cached"}


@pytest.mark.slow
def test_colmap_project_reconstructs_with_its_cameras(scene, tmp_path):
    dataset = write_colmap(tmp_path / "colmap", scene["cameras"], scene["images"])
    project = tmp_path / "p"
    report = reconstruct(dataset, project)
    assert report["cameras_given"] == VIEWS and report["points"] == "dataset" and report["points3D"] == 150

    # poses/ is in nerfstudio's z-up world: COLMAP's world through applied_transform
    applied = np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]])
    expected = applied @ scene["cameras"].cam_to_world
    poses = read_dataset(project / "poses")
    assert rotation_errors_deg(poses.cam_to_world, expected).max() < 0.1
    assert np.allclose(poses.cam_to_world[:, :3, 3], expected[:, :3, 3], atol=1e-6)
    vertex = PlyData.read(project / "poses" / "sparse_pc.ply")["vertex"]
    assert len(vertex) == 150 and set(vertex["green"]) == {200}
    assert (project / "splats" / "splats.ply").is_file()


@pytest.mark.parametrize("kind", ["nerfstudio", "colmap"])
def test_no_colmap_step_runs(scene, tmp_path, monkeypatch, kind):
    """The poses stage of a dataset never reaches COLMAP's feature extraction, matching or mapping."""

    def refuse(*args, **kwargs):
        raise AssertionError("COLMAP ran on a dataset input")

    for name in ("extract_features", "match_exhaustive", "match_sequential", "incremental_mapping", "global_mapping"):
        monkeypatch.setattr(pycolmap, name, refuse)
    writer = write_nerfstudio if kind == "nerfstudio" else write_colmap
    dataset = writer(tmp_path / "ds", scene["cameras"], scene["images"])
    settings = load_settings(({"frames": {"input": str(dataset)}}, "test"))
    ctx = Context(Project(tmp_path / "p"), settings, "cpu")
    with Project(tmp_path / "p").lock():
        assert run(ctx, "poses").status == "complete"
    assert given_cameras(tmp_path / "p" / "poses")["cameras_given"] == VIEWS


@pytest.mark.slow
def test_instant_ngp_camera_angle(scene, tmp_path):
    """instant-ngp / NeRF-synthetic style: camera_angle_x only (no fl_x, w, h), file paths without suffix."""
    dataset = write_nerfstudio(tmp_path / "ngp", scene["cameras"], scene["images"])
    meta = json.loads((dataset / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model"):
        meta.pop(key)
    meta["camera_angle_x"] = 2 * np.arctan(SIZE / 2 / scene["cameras"].K[0, 0, 0])
    for frame in meta["frames"]:
        frame["file_path"] = "./" + frame["file_path"].removesuffix(".png")
    (dataset / "transforms.json").write_text(json.dumps(meta))
    code, result = run_json("poses", tmp_path / "p", "--input", dataset)
    assert code == 0, result
    poses = read_dataset(tmp_path / "p" / "poses")
    assert (poses.width, poses.height) == (SIZE, SIZE) and np.allclose(poses.Ks, scene["cameras"].K)
    assert rotation_errors_deg(poses.cam_to_world, scene["cameras"].cam_to_world).max() < 0.1


@pytest.mark.slow
def test_per_frame_intrinsics_and_dataset_points(scene, tmp_path):
    """Each frame with its own focal length (a zoom), and nerfstudio's ply_file_path as the points."""
    true = scene["cameras"]
    Ks = np.stack([intrinsics(SIZE, SIZE, fov) for fov in np.linspace(40, 60, VIEWS)])
    cameras = Cameras(Ks, true.cam_to_world, SIZE, SIZE)
    images = render(make_scene(3, simple=True), cameras).images
    dataset = write_nerfstudio(tmp_path / "zoom", cameras, images, per_frame=True, points=True)
    code, result = run_json("poses", tmp_path / "p", "--input", dataset)
    assert code == 0, result
    poses = read_dataset(tmp_path / "p" / "poses")
    assert np.allclose(poses.Ks, Ks) and rotation_errors_deg(poses.cam_to_world, true.cam_to_world).max() < 0.1
    assert given_cameras(tmp_path / "p" / "poses")["points"] == "dataset"
    xyz, _ = poses.points()
    source = PlyData.read(dataset / "points.ply")["vertex"]
    source_xyz = np.stack([source["x"], source["y"], source["z"]], axis=1)
    assert np.allclose(np.sort(xyz, axis=0), np.sort(source_xyz, axis=0), atol=1e-5)  # in any order


@pytest.mark.slow
def test_distorted_cameras_are_undistorted(scene, tmp_path):
    dataset = write_nerfstudio(tmp_path / "lens", scene["cameras"], scene["images"])
    meta = json.loads((dataset / "transforms.json").read_text())
    meta.update(k1=-0.05, k2=0.01)
    (dataset / "transforms.json").write_text(json.dumps(meta))
    code, result = run_json("poses", tmp_path / "p", "--input", dataset)
    assert code == 0, result
    assert given_cameras(tmp_path / "p" / "poses")["undistorted"]
    model = pycolmap.Reconstruction(tmp_path / "p" / "poses" / "sparse" / "0")
    assert {c.model.name for c in model.cameras.values()} == {"PINHOLE"}
    poses = read_dataset(tmp_path / "p" / "poses")
    assert iio.imread(poses.paths[0]).shape[:2] == (poses.height, poses.width)
    assert rotation_errors_deg(poses.cam_to_world, scene["cameras"].cam_to_world).max() < 0.1


@pytest.mark.slow
def test_colmap_text_model_in_sparse(scene, tmp_path):
    dataset = write_colmap(tmp_path / "colmap", scene["cameras"], scene["images"], model_dir="sparse", text=True)
    code, result = run_json("poses", tmp_path / "p", "--input", dataset)
    assert code == 0, result
    assert given_cameras(tmp_path / "p" / "poses")["points3D"] == 150


@pytest.mark.parametrize("kind", ["nerfstudio", "colmap"])
def test_frames_whose_images_are_missing_are_skipped(scene, tmp_path, kind):
    """As instant-ngp loads its own sample data (67 frames listed, 50 images): the frames without an
    image are skipped with one warning, each kept image keeps its own camera, and index.json records
    the skipped; too few left is refused."""
    if kind == "nerfstudio":
        dataset = write_nerfstudio(tmp_path / "ds", scene["cameras"], scene["images"])
        meta = json.loads((dataset / "transforms.json").read_text())
        for i in (1, 4, 6, 9):  # frames listed between the real ones, their images gone
            meta["frames"].insert(i, {"file_path": f"images/gone_{i}.jpg", "transform_matrix": np.eye(4).tolist()})
        (dataset / "transforms.json").write_text(json.dumps(meta))
        kept, missing = list(range(VIEWS)), ["images/gone_1.jpg", "images/gone_4.jpg", "images/gone_6.jpg"]
        args, skipped = (), 4
    else:
        dataset = write_colmap(tmp_path / "ds", scene["cameras"], scene["images"])
        for i in (2, 7):
            (dataset / "images" / f"view{i}.jpg").unlink()
        kept, missing = [0, 1, 3, 4, 5, 6, 8, 9], ["images/view2.jpg", "images/view7.jpg"]
        args, skipped = ("--set", "frames.min_frames=8"), 2
    project = tmp_path / "p"
    result = run_cli("poses", project, "--input", dataset, *args)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "missing" in line]
    assert len(warnings) == 1 and all(name in warnings[0] for name in missing), result.stderr
    assert f"names {skipped} images that are missing" in warnings[0] and f"kept {len(kept)}" in warnings[0]

    index = json.loads((project / "frames" / "index.json").read_text())
    assert len(index["frames"]) == len(kept) and len(index["skipped"]) == skipped
    assert index["source_frames"] == len(kept) + skipped
    poses = read_dataset(project / "poses")
    assert len(poses.names) == len(kept)
    true = scene["cameras"].cam_to_world[kept]
    if kind == "colmap":
        true = np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]]) @ true
    assert rotation_errors_deg(poses.cam_to_world, true).max() < 0.1
    assert np.allclose(poses.cam_to_world[:, :3, 3], true[:, :3, 3], atol=1e-6)

    first = dataset / "images" / ("frame_00001.png" if kind == "nerfstudio" else "view0.jpg")
    first.unlink()  # one fewer than frames.min_frames: refused, naming the setting
    line = refused(tmp_path / "p2", dataset, *args)
    assert f"{len(kept) - 1} images are there" in line and f"frames.min_frames={len(kept)}" in line


def refused(project, dataset, *args):
    """Run poses on the dataset: exit 2, and the project exactly as before. The error line."""
    before = tree(project)
    result = run_cli("poses", project, "--input", dataset, *args)
    assert result.returncode == 2, result.stderr
    assert tree(project) == before
    return error_line(result.stderr)


@pytest.mark.slow
def test_bad_datasets_are_refused_with_the_file_named(scene, tmp_path):
    dataset = write_nerfstudio(tmp_path / "ns", scene["cameras"][:3], scene["images"][:3])
    transforms = dataset / "transforms.json"
    good = transforms.read_text()
    project = tmp_path / "p"  # a new project: nothing of it may be left behind
    transforms.write_text(good[:-20])
    assert "transforms.json" in refused(project, dataset) and not project.exists()

    transforms.write_text(good.replace("images/frame_00002.png", "images/gone.png"))
    line = refused(project, dataset)
    assert "transforms.json" in line and "gone.png" in line

    meta = json.loads(good)
    meta["frames"][1]["transform_matrix"] = [[1, 0], [0, 1]]
    transforms.write_text(json.dumps(meta))
    assert "frames[1]" in refused(project, dataset)

    transforms.write_text(good)  # an existing project stays as it was too
    code, _ = run_json("frames", project, "--input", dataset, "--set", "frames.min_frames=3")
    assert code == 0
    (dataset / "images" / "frame_00003.png").unlink()
    assert "frame_00003.png" in refused(project, dataset)

    colmap = write_colmap(tmp_path / "colmap", scene["cameras"][:3], scene["images"][:3])
    (colmap / "images" / "view1.jpg").unlink()
    line = refused(project, colmap)
    assert "sparse/0" in line and "view1.jpg" in line
    (colmap / "sparse" / "0" / "cameras.bin").write_bytes(b"\x05\x00")
    assert "sparse/0" in refused(project, colmap)

    transforms.write_text(good)
    (dataset / "images" / "frame_00003.png").write_bytes(iio.imwrite("<bytes>", scene["images"][0], extension=".png"))
    assert "poses.cameras" in refused(project, dataset, "--poses", transforms)


@pytest.mark.slow
def test_cameras_of_different_lenses_are_cropped_to_one_size(scene, tmp_path):
    """A COLMAP project with a camera per image (COLMAP's default), distortions differing: the
    undistorted images differ in size and are cropped about their centres to the smallest."""
    dataset = write_colmap(
        tmp_path / "colmap", scene["cameras"][:4], scene["images"][:4], radial=[0, -0.05, -0.1, -0.15]
    )
    code, result = run_json("poses", tmp_path / "p", "--input", dataset, "--set", "frames.min_frames=4")
    assert code == 0, result
    poses = read_dataset(tmp_path / "p" / "poses")
    assert {iio.imread(path).shape[:2] for path in poses.paths} == {(poses.height, poses.width)}
    cropped = pycolmap.Reconstruction(tmp_path / "p" / "poses" / "sparse" / "0")
    assert {(c.width, c.height) for c in cropped.cameras.values()} == {(poses.width, poses.height)}
    assert poses.width < SIZE and np.allclose(poses.Ks[:, :2, 2], [poses.width / 2, poses.height / 2], atol=0.6)
