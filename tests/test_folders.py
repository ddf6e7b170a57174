"""Each stage's folder read back through its owner's reader, against what was written into it."""

import json

import imageio.v3 as iio
import numpy as np
import torch
from plyfile import PlyData

from vid3d import pipeline
from vid3d.cameras import Camera
from vid3d.generate.output import GeneratedVideo, write_video
from vid3d.ingest import FrameEntry, FramesIndex
from vid3d.poses import read_dataset
from vid3d.poses.dataset import OPENCV_TO_OPENGL, flip_camera_axes
from vid3d.poses.given import poses_from_cameras
from vid3d.project import STAGES
from vid3d.scenes import make_scene, orbit_cameras, render
from vid3d.splats.model import PARAM_NAMES, init_splats, load_ply, save_ply

FRAMES = 6


def test_frames_index_reads_back_what_was_written(tmp_path):
    video = [
        FrameEntry("00000.png", 12.5, source_index=3, timestamp=0.25),
        FrameEntry("00001.png", 8.0, source_index=9, timestamp=0.75),
    ]
    index = FramesIndex(source="in.mp4", kind="video", source_frames=12, fps=12.0, width=32, height=24, frames=video)
    index.write(tmp_path)
    read = FramesIndex.read(tmp_path)
    assert read == index and read.folder == tmp_path
    assert read.names == ["00000.png", "00001.png"] and read.paths() == [tmp_path / "00000.png", tmp_path / "00001.png"]
    # absent fields stay out of the file (an image folder's entries have no timestamp)
    FramesIndex("photos", "images", 1, None, 32, 24, [FrameEntry("00000.png", 1.0, source="a.jpg")]).write(tmp_path)
    assert json.loads((tmp_path / "index.json").read_text())["frames"] == [
        {"file": "00000.png", "sharpness": 1.0, "source": "a.jpg"}
    ]


def test_known_cameras_come_back_from_poses_in_opencv_axes(tmp_path):
    """Generated frames and cameras -> generate/ -> frames at half size -> poses/ -> read_dataset:
    the same camera-to-world matrices, the intrinsics scaled with the frames."""
    cameras = orbit_cameras(FRAMES, width=64, height=64)
    images = render(make_scene(2, simple=True), cameras).images
    generate_dir, frames_dir, poses_dir = (tmp_path / name for name in ("generate", "frames", "poses"))
    for folder in (generate_dir, frames_dir, poses_dir):
        folder.mkdir()
    entries = [Camera(cameras.cam_to_world[i], cameras.K[i], 64) for i in range(FRAMES)]
    write_video(generate_dir, images, fps=12, cameras=entries, metrics={})
    generated = GeneratedVideo.read(generate_dir)
    assert np.array_equal(generated.frames(), images)

    files = []  # ingest at half size, keeping every other frame's number
    for n, path in enumerate(generated.frame_paths()[::2]):
        iio.imwrite(frames_dir / f"{n:05d}.png", iio.imread(path)[::2, ::2])
        files.append(FrameEntry(f"{n:05d}.png", source=path.name))
    FramesIndex("generate/frames", "images", FRAMES, None, 32, 32, files).write(frames_dir)
    result = poses_from_cameras(frames_dir, generated.cameras_file, poses_dir, points=500)
    # given cameras are not reported under COLMAP's measured "registered"
    assert result.metrics["cameras_given"] == FRAMES // 2 and "registered_fraction" not in result.metrics

    poses = read_dataset(poses_dir)
    kept = list(range(0, FRAMES, 2))
    assert poses.names == [f.file for f in files] and (poses.width, poses.height) == (32, 32)
    assert np.allclose(poses.cam_to_world, cameras.cam_to_world[kept])
    assert np.allclose(poses.Ks[:, :2], cameras.K[kept][:, :2] / 2) and np.allclose(poses.Ks[:, 2], [0, 0, 1])
    assert poses.images().shape == (len(kept), 32, 32, 3) and len(poses.points()[0]) == 500
    # transforms.json itself holds OpenGL axes, as nerfstudio reads them
    transforms = json.loads((poses_dir / "transforms.json").read_text())
    assert np.allclose(transforms["frames"][0]["transform_matrix"], cameras.cam_to_world[0] @ OPENCV_TO_OPENGL)


def test_the_axis_flip_is_its_own_inverse():
    matrix = orbit_cameras(1).cam_to_world[0]
    assert np.array_equal(flip_camera_axes(flip_camera_axes(matrix)), matrix)
    assert not np.allclose(flip_camera_axes(matrix), matrix)


def test_the_pipeline_table_lists_the_project_stages_in_order():
    assert tuple(pipeline.STAGE_TABLE) == STAGES


def test_splats_ply_has_inria_layout_and_reads_back(tmp_path):
    """62 float properties in Inria's order at SH degree 3 (fixed-record readers need the normals)."""
    points = np.random.default_rng(0).normal(size=(20, 3))
    splats = init_splats(points, np.full((20, 3), 0.5), 3, 0.1, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        splats["shN"].normal_(generator=torch.Generator().manual_seed(1))
    save_ply(splats, tmp_path / "splats.ply")
    vertex = PlyData.read(str(tmp_path / "splats.ply"))["vertex"]
    names = [p.name for p in vertex.properties]
    assert len(names) == 62 and names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in names)
    assert not np.any(vertex["nx"]) and not np.any(vertex["nz"])
    # f_rest is channel-major: all red coefficients, then green, then blue
    assert np.allclose(vertex["f_rest_15"], splats["shN"][:, 0, 1].detach().numpy())
    back = load_ply(tmp_path / "splats.ply")
    for name in PARAM_NAMES:
        assert torch.allclose(back[name], splats[name].detach()), name
