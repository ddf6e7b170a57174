"""Epipolar error: zero for projections of one 3D point set, small for a rendered orbit with its
true cameras, large when the frames disagree with the cameras."""

import numpy as np

from vid3d.metrics.epipolar import epipolar_error, fundamental, symmetric_distance
from vid3d.scenes import make_scene, orbit_cameras, render


def test_projections_of_one_scene_lie_on_their_epipolar_lines():
    cams = orbit_cameras(2, width=64, height=64, arc_deg=40.0)
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3)) + [0, 0, 0.4]
    pixels, _ = cams.project(points)
    F = fundamental(cams.K[0], cams.K[1], cams.cam_to_world[0], cams.cam_to_world[1])
    assert np.abs(symmetric_distance(F, pixels[0], pixels[1])).max() < 1e-6
    assert np.median(symmetric_distance(F, pixels[0], pixels[1] + [0, 3.0])) > 1.0  # moved off the lines


def test_a_rendered_orbit_is_consistent_with_its_cameras_and_not_with_others():
    cams = orbit_cameras(12, width=64, height=64, arc_deg=90.0)
    frames = render(make_scene(4, simple=True), cams, supersample=2).images
    right = epipolar_error(frames, cams.cam_to_world, cams.K)
    wrong_way = orbit_cameras(12, width=64, height=64, arc_deg=-90.0)  # the camera turning the other way
    wrong = epipolar_error(frames, wrong_way.cam_to_world, wrong_way.K)
    assert right["epipolar_px"] < 0.5 and right["epipolar_consistent"] > 0.8, right
    assert wrong["epipolar_px"] > 3 * right["epipolar_px"] and wrong["epipolar_consistent"] < 0.5, wrong
