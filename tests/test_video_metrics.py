"""Video consistency metrics on videos whose answers are known."""

import numpy as np
import pytest

from vid3d.metrics.video import flicker, loop_closure, object_motion, optical_flow, video_metrics, warping_error
from vid3d.scenes import make_scene, orbit_cameras, render


@pytest.fixture(scope="module")
def orbit():
    """A closed orbit: 72 frames, 5 degrees apart, of a procedural scene at 96x96."""
    return list(render(make_scene(5), orbit_cameras(72, width=96, height=96)).images)


def test_flow_recovers_a_known_shift():
    rng = np.random.default_rng(0)
    texture = (rng.random((80, 120, 3)) * 255).astype(np.uint8)
    texture = np.repeat(np.repeat(texture, 2, 0), 2, 1)  # blobs of 2x2 pixels
    a, b = texture[20:120, 20:180], texture[20:120, 23:183]  # b is a moved 3 pixels left
    flow = optical_flow(a, b)
    assert np.median(flow[..., 0]) == pytest.approx(-3, abs=0.2) and np.median(flow[..., 1]) == pytest.approx(
        0, abs=0.2
    )


def test_object_motion_of_a_square_moving_right():
    """A textured blob moving 1 px a frame to the right: the same video moves the right way in every
    pair by the true amount, the reversed one the wrong way, a still one not at all."""
    rng = np.random.default_rng(2)
    blob = np.repeat(np.repeat((rng.random((6, 6, 3)) * 255).astype(np.uint8), 2, 0), 2, 1)
    frames, masks = np.full((8, 64, 64, 3), 90, np.uint8), np.zeros((8, 64, 64), bool)
    for i in range(8):
        frames[i, 26:38, 20 + i : 32 + i], masks[i, 26:38, 20 + i : 32 + i] = blob, True
    right, share = object_motion(frames, frames, masks)
    assert right.all() and right.size == 7 and share == pytest.approx(1.0)
    right, share = object_motion(frames[::-1], frames, masks)
    assert not right.any() and share < 0
    right, share = object_motion(np.repeat(frames[:1], 8, 0), frames, masks)
    assert abs(share) < 0.2


def test_a_consistent_orbit_warps_well_and_a_boiling_one_does_not(orbit):
    rng = np.random.default_rng(1)
    boiling = [np.clip(f.astype(int) + rng.integers(-40, 41, f.shape), 0, 255).astype(np.uint8) for f in orbit]
    steady, noisy = warping_error(orbit), warping_error(boiling)
    assert noisy > 5 * steady
    assert flicker(boiling) > flicker(orbit)


def test_loop_closure_is_about_one_for_a_closed_orbit_and_large_for_an_open_one(orbit):
    # the closed orbit's last frame is 5 degrees before its first, like any two neighbours
    assert loop_closure(orbit) == pytest.approx(1.0, abs=0.3)
    quarter = list(render(make_scene(5), orbit_cameras(18, width=96, height=96, arc_deg=90)).images)
    assert loop_closure(quarter) > 3


def test_video_metrics_report():
    frames = [np.full((32, 32, 3), v, np.uint8) for v in (0, 51, 102)]
    report = video_metrics(frames)
    assert report["frames"] == 3 and report["flicker"] == pytest.approx(0.2)
    assert report["loop_closure"] == pytest.approx(2.0, rel=1e-3)  # |0 - 102| against a median step of 51


def test_metrics_command_on_a_video_and_on_bad_input(tmp_path, orbit):
    import imageio.v3 as iio
    from conftest import error_line, run_cli, run_json

    video = tmp_path / "orbit.mp4"
    iio.imwrite(video, np.stack(orbit[:20]), plugin="FFMPEG", fps=12, codec="libx264", quality=9)
    code, report = run_json("metrics", video)
    assert code == 0 and report["metrics"]["frames"] == 20 and report["metrics"]["warping_error"] < 0.02
    result = run_cli("metrics", tmp_path / "missing.mp4")
    assert result.returncode == 2 and "no such file" in error_line(result.stderr)


def test_warping_error_that_compared_nothing_is_not_a_perfect_score(monkeypatch):
    """Flow that leaves the frame everywhere leaves no pixel to compare: not measured, not 0."""
    from vid3d.metrics import video

    monkeypatch.setattr(video, "optical_flow", lambda a, b: np.full((*a.shape[:2], 2), 1000.0, np.float32))
    frames = [np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)]
    assert np.isnan(video.warping_error(frames))
    assert video.video_metrics(frames)["warping_error"] is None
