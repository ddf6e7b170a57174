"""vid3d's camera type: resizing, the cameras file (old files keep loading), and its conversions to the
training tensors and back."""

import json

import numpy as np
import pytest
import torch

from vid3d.cameras import Camera, read_cameras, scale_intrinsics, stacked, write_cameras
from vid3d.errors import UserError
from vid3d.scenes import orbit_cameras
from vid3d.splats.data import Dataset

K = np.array([[100.0, 0.0, 32.0], [0.0, 90.0, 24.0], [0.0, 0.0, 1.0]])


def test_resizing_scales_each_axis_of_the_intrinsics_with_the_images():
    camera = Camera(np.eye(4), K, 64, 48).resized(32, 12)
    assert np.allclose(camera.K, [[50.0, 0.0, 16.0], [0.0, 22.5, 6.0], [0.0, 0.0, 1.0]])
    assert (camera.width, camera.height) == (32, 12)


def test_a_camera_of_unknown_size_has_the_intrinsics_of_the_images_it_is_given():
    assert np.array_equal(Camera(np.eye(4), K).resized(32, 24).K, K)
    assert np.allclose(Camera(np.eye(4), K, 64).resized(32, 99).K[1], [0.0, 45.0, 12.0])  # the height with the width


def test_intrinsics_scale_alike_as_arrays_and_as_tensors():
    scaled = scale_intrinsics(np.stack([K, K]), 0.5, 0.25)
    assert np.allclose(scale_intrinsics(torch.tensor(np.stack([K, K])), 0.5, 0.25).numpy(), scaled)
    assert np.array_equal(K[0, 0], 100.0)  # the input is left as it was


def test_the_cameras_file_reads_back_what_was_written(tmp_path):
    cameras = orbit_cameras(3, width=64, height=48).as_cameras()
    write_cameras(tmp_path / "cameras.json", cameras)
    back = read_cameras(tmp_path / "cameras.json")
    assert sorted(back) == [0, 1, 2]
    for i, camera in enumerate(cameras):
        assert np.array_equal(back[i].cam_to_world, camera.cam_to_world) and np.array_equal(back[i].K, camera.K)
        assert (back[i].width, back[i].height) == (64, 48)


def test_an_older_cameras_file_keeps_loading(tmp_path):
    """Files written before the camera type: frames by number, no width or height, the orbit model's
    own keys beside the camera."""
    entry = {"frame": 7, "camera_to_world": np.eye(4).tolist(), "K": K.tolist(), "azimuth_deg": 30.0}
    (tmp_path / "old.json").write_text(json.dumps({"frames": [entry]}))
    camera = read_cameras(tmp_path / "old.json")[7]
    assert camera.width is None and np.array_equal(camera.K, K)
    (tmp_path / "bad.json").write_text(json.dumps({"frames": [{**entry, "K": [1, 2]}]}))
    with pytest.raises(UserError, match="bad.json"):
        read_cameras(tmp_path / "bad.json")


def test_training_tensors_convert_from_and_to_cameras():
    cameras = orbit_cameras(4, width=64, height=64).as_cameras()
    images = torch.zeros(4, 32, 32, 3)
    data = Dataset.of_cameras(names=list("abcd"), images=images, cameras=cameras, train=[0, 1, 2, 3], test=[])
    cam_to_world, Ks = stacked(data.cameras())
    assert np.allclose(cam_to_world, stacked(cameras)[0], atol=1e-5)
    assert np.allclose(Ks, scale_intrinsics(stacked(cameras)[1], 0.5, 0.5), atol=1e-4)
    assert data.cameras()[0].width == 32
