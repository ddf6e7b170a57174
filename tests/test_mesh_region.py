"""The region export fuses into the mesh (export.bbox): the sparse points' hull without outliers,
with a margin, or a given box; depth outside it carries nothing (issue 25)."""

import numpy as np
import pytest
import torch

from vid3d.config import ExportSettings
from vid3d.errors import UserError
from vid3d.export import parse_bbox
from vid3d.export.mesh import REGION_MARGIN, Region, _inside, observed_region, voxel_size
from vid3d.splats.data import Dataset


def ground_and_sky_points(seed=0):
    """A 2 x 2 ground at z = 0 and a 0.5 cube on it, with a few far 'sky' points."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-1, 1, (2000, 2)), np.zeros(2000)]
    cube = rng.uniform(-0.25, 0.25, (500, 3)) + [0, 0, 0.25]
    sky = rng.uniform(-1, 1, (10, 3)) * [4, 4, 0] + [0, 0, 5]
    return np.concatenate([ground, cube, sky])


def test_the_observed_region_is_the_points_hull_with_a_margin_and_no_outliers():
    region = observed_region(ground_and_sky_points())
    diagonal = np.linalg.norm([2, 2, 0.5])  # of the ground and cube, the sky points dropped
    margin = REGION_MARGIN * diagonal
    assert region.diagonal == pytest.approx(diagonal * (1 + 2 * REGION_MARGIN), rel=0.02)
    # The hull's sides lean in from the ground's edge to the cube's top: the margin, along their
    # normals, reaches farther than `margin` along the ground, less than 2 margins.
    inside = [[0, 0, 0.4], [0.99, -0.99, 0], [1 + 0.8 * margin, 0, 0], [0, 0, 0.5 + 0.8 * margin]]
    outside = [[1 + 2 * margin, 0, 0], [0, 0, 0.5 + 1.2 * margin], [0, 0, 5], [0.9, 0.9, 0.5], [0, 0, -1.2 * margin]]
    assert region.contains(np.array(inside)).all()
    assert not region.contains(np.array(outside)).any()


def test_a_given_box_is_the_region_and_malformed_boxes_are_one_line_errors():
    region = Region.box(parse_bbox("-1,-2,-3,1,2,3"))
    assert region.contains(np.array([[0.9, -1.9, 2.9], [-1, 2, 0]])).all()
    assert not region.contains(np.array([[1.1, 0, 0], [0, 0, -3.1]])).any()
    assert region.diagonal == pytest.approx(np.linalg.norm([2, 4, 6]))
    assert parse_bbox("auto") is None and parse_bbox("none") is None and parse_bbox("") is None
    for text in ("1,2,3", "1,1,1,0,2,2", "auto,1"):
        with pytest.raises(UserError, match=r"^export.bbox = .*: expected auto, none or xmin"):
            parse_bbox(text)


def camera_looking_down(height=2.0, size=8):
    """A camera at (0, 0, height) looking along -z (OpenCV axes: x right, y down, z forward)."""
    cam_to_world = torch.eye(4)
    cam_to_world[:3, :3] = torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    cam_to_world[2, 3] = height
    K = torch.tensor([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1.0]])  # 90 degrees field of view
    images = torch.zeros(1, size, size, 3)
    return Dataset(["a.png"], images, torch.linalg.inv(cam_to_world)[None], K[None], [0], [])


def test_only_depth_that_lands_inside_the_region_is_fused_and_the_voxel_follows_the_region():
    data = camera_looking_down()
    region = Region.box(np.array([[-0.5, -0.5, -0.1], [0.5, 0.5, 0.1]]))
    inside = _inside(region, torch.full((8, 8), 2.0), data, 0)  # the plane z = 0 spans [-2, 2]: the middle quarter
    assert inside.sum() == 4 and inside[3:5, 3:5].all()
    assert not _inside(region, torch.full((8, 8), 4.0), data, 0).any()  # z = -2: below the box
    assert voxel_size(data, ExportSettings(), region) == pytest.approx(region.diagonal / 640)
    assert voxel_size(data, ExportSettings(voxel_size=0.1), region) == 0.1


def test_depth_seen_at_a_grazing_angle_carries_none():
    """A floor seen by a camera tilted 80 degrees from straight down: its pixels meet the floor at a
    cosine of about cos(80) = 0.17, except those looking more steeply down."""
    import torch

    from vid3d.export.mesh import _facing
    from vid3d.splats.data import Dataset

    size, f, tilt = 64, 64.0, np.radians(80)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float32)
    # camera 1 m above z = 0, looking down and tilted towards +y: OpenCV axes, y down the image
    down = np.array([0, np.sin(tilt), -np.cos(tilt)])
    right = np.array([1.0, 0, 0])
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = np.stack([right, np.cross(down, right), down], 1)
    cam_to_world[:3, 3] = [0, 0, 1]
    viewmat = torch.from_numpy(np.linalg.inv(cam_to_world)).float()
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    rays = np.stack([(u - size / 2) / f, (v - size / 2) / f, np.ones_like(u)], -1) @ cam_to_world[:3, :3].T
    depth = np.where(rays[..., 2] < 0, -1 / np.minimum(rays[..., 2], -1e-9), 0.0)  # camera z of the floor hit
    cosine = np.abs(rays[..., 2]) / np.linalg.norm(rays, axis=-1)
    data = Dataset(["floor.png"], torch.zeros(1, size, size, 3), viewmat[None], K[None], [0], [])
    facing = _facing(torch.from_numpy(depth).float(), data, 0).numpy() >= 0.2
    inner = (slice(2, -2), slice(2, -2))  # the depth map's own border has no neighbours either side
    np.testing.assert_array_equal(facing[inner], (cosine >= 0.2)[inner] & (depth > 0)[inner])
    assert 0.1 < facing[inner].mean() < 0.9
