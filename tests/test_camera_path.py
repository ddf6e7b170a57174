"""export's camera files from known cameras, in-process (the fast tier's export test; test_export
checks the same files through the command line)."""

from pathlib import Path

import numpy as np
import pytest

from vid3d.export.cameras import camera_path, nerfstudio_camera_path
from vid3d.poses import PosesDataset
from vid3d.poses.dataset import OPENCV_TO_OPENGL


def two_cameras() -> PosesDataset:
    """Two 200x100 cameras listed out of name order; fy = 50 px over 100 rows is a 90 degree fov."""
    K = np.array([[50.0, 0, 100], [0, 50, 50], [0, 0, 1]])
    moved = np.eye(4)
    moved[:3, 3] = [1, 2, 3]
    return PosesDataset(Path("poses"), ["b.png", "a.png"], np.stack([moved, np.eye(4)]), np.stack([K, K]), 200, 100)


def test_nerfstudio_camera_path_is_in_name_order_with_the_vertical_fov():
    path = nerfstudio_camera_path(two_cameras())
    assert (path["render_width"], path["render_height"]) == (200, 100)
    first, second = path["camera_path"]
    assert first["fov"] == pytest.approx(90.0) and first["aspect"] == 2.0
    assert np.allclose(np.reshape(first["camera_to_world"], (4, 4)), OPENCV_TO_OPENGL)  # a.png: at the origin
    assert np.reshape(second["camera_to_world"], (4, 4))[:3, 3].tolist() == [1, 2, 3]
    assert path["seconds"] * path["fps"] == pytest.approx(2)


def test_cameras_json_keeps_both_axis_conventions():
    cameras = camera_path(two_cameras())["cameras"]
    assert [c["name"] for c in cameras] == ["b.png", "a.png"]
    assert (cameras[0]["fx"], cameras[0]["cy"]) == (50.0, 50.0)
    assert np.allclose(np.array(cameras[1]["transform_matrix"]), OPENCV_TO_OPENGL)
