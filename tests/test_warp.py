"""The orbit model's reprojection of the reference over horizontal planes, against the cameras of the
procedural renderer: a point on the plane seen by a target pixel must come from the reference pixel
that sees the same point."""

import numpy as np
import pytest
import torch

from vid3d.generate.model.data import RIG
from vid3d.generate.model.warp import GROUND_HALF_SIZE, warp_grid
from vid3d.scenes import orbit_cameras

SIZE = 32


@pytest.mark.parametrize("height", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("degrees", [30.0, 100.0, 250.0])
def test_plane_points_come_from_the_reference_pixel_that_sees_them(height, degrees):
    # The rig is symmetric about the vertical axis: any start azimuth gives the same warp.
    cams = orbit_cameras(2, width=SIZE, height=SIZE, start_deg=37.0, arc_deg=degrees, endpoint=True, **RIG)
    target = cams[1]
    on_ray = target.backproject(np.ones((1, SIZE, SIZE)))[0]  # a point on each pixel's ray
    eye = target.centers()[0]
    s = (height - eye[2]) / (on_ray[..., 2] - eye[2])
    points = eye + s[..., None] * (on_ray - eye)
    # within the disc inscribed in the ground square: the square's corners depend on the absolute azimuth
    hits = (s > 0) & (np.linalg.norm(points[..., :2], axis=-1) <= GROUND_HALF_SIZE)
    pix, depth = cams[0].project(points[hits])
    expected = pix[0] / SIZE * 2 - 1  # grid_sample coordinates, align_corners=False
    visible = (depth[0] > 0) & (np.abs(expected).max(-1) < 2)
    assert visible.sum() > 100

    grid = warp_grid(torch.tensor([np.radians(degrees)]), SIZE, height=height, **RIG)[0].numpy()
    np.testing.assert_allclose(grid[hits][visible], expected[visible], atol=1e-4)


def test_sky_pixels_keep_their_place():
    grid = warp_grid(torch.tensor([1.0]), SIZE, **RIG)[0].numpy()
    centres = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    # the top rows look above the horizon at this elevation and field of view
    np.testing.assert_allclose(grid[0, :, 0], centres, atol=1e-6)
    np.testing.assert_allclose(grid[0, :, 1], centres[0], atol=1e-6)
