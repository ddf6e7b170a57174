"""The measures the slow tests grade with, on inputs with a known answer: pose errors after
alignment, Chamfer distance and F-score, and the training history's file (the fast tier's tests of
vid3d.metrics.poses, vid3d.metrics.mesh and vid3d.splats.results)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vid3d.metrics.mesh import chamfer_fscore
from vid3d.metrics.poses import pose_errors
from vid3d.scenes import orbit_cameras
from vid3d.splats.results import read_history, write_history
from vid3d.splats.train import HISTORY_FILE


def test_pose_errors_ignore_the_world_frame_and_find_the_one_turned_camera():
    true = orbit_cameras(8, width=64, height=64).cam_to_world
    world = np.eye(4)
    world[:3, :3] = Rotation.from_euler("xyz", [20, -40, 70], degrees=True).as_matrix()
    world[:3, 3] = [3, -1, 2]
    estimated = world @ true
    estimated[:, :3, 3] *= 2.5  # another scale too: the similarity takes it out
    estimated[5, :3, :3] = estimated[5, :3, :3] @ Rotation.from_euler("y", 10, degrees=True).as_matrix()
    errors = pose_errors(estimated, true)
    assert errors["position"].max() < 1e-6
    assert errors["rotation_deg"][5] == pytest.approx(10.0, abs=1e-6)
    assert np.delete(errors["rotation_deg"], 5).max() < 1e-4


def test_chamfer_of_a_shifted_copy_is_the_shift_and_its_fscore_turns_on_at_the_threshold():
    points = np.random.default_rng(0).uniform(-1, 1, (500, 3)) * [100, 100, 0]  # far apart in x, y
    shifted = points + [0, 0, 0.01]
    assert chamfer_fscore(shifted, points, threshold=0.02)["chamfer"] == pytest.approx(0.01)
    assert chamfer_fscore(shifted, points, threshold=0.02)["fscore"] == 1.0
    assert chamfer_fscore(shifted, points, threshold=0.005)["fscore"] == 0.0


def test_history_reads_back_what_training_wrote(tmp_path):
    write_history(tmp_path / HISTORY_FILE, [(1, 0.5, 12.25, 100), (2, 0.25, 14.5, 120)])
    history = read_history(tmp_path)
    assert history["step"].tolist() == [1, 2] and history["gaussians"].tolist() == [100, 120]
    assert history["loss"].tolist() == [0.5, 0.25] and history["psnr"].tolist() == [12.25, 14.5]
    assert read_history(tmp_path / "untrained") is None
