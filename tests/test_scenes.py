import dataclasses

import cv2
import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from vid3d.scenes import Cameras, Primitive, Render, make_scene, orbit_cameras, render


def distance_to_mesh(mesh: trimesh.Trimesh, points: np.ndarray, k: int = 32) -> np.ndarray:
    """Exact point-to-mesh distance, searching the k triangles with the nearest centroids
    (the mesh is finely and fairly evenly tessellated, so that is enough; avoids needing rtree)."""
    _, idx = cKDTree(mesh.triangles_center).query(points, k=k)
    tri = mesh.triangles[idx.ravel()]
    closest = trimesh.triangles.closest_point(tri, np.repeat(points, k, axis=0))
    return np.linalg.norm(closest - np.repeat(points, k, axis=0), axis=1).reshape(-1, k).min(axis=1)


@pytest.fixture(scope="module")
def scene():
    return make_scene(1)


@pytest.fixture(scope="module")
def views(scene):
    return render(scene, orbit_cameras(3, width=96, height=96, start_deg=20, arc_deg=20, endpoint=True), 1)


# ---------------------------------------------------------------- cameras


def test_orbit_cameras_geometry():
    look_at = np.array([0.1, -0.2, 0.4])
    cams = orbit_cameras(8, radius=3.0, elevation_deg=30, width=64, height=48, fov_deg=60, look_at=look_at)
    assert len(cams) == 8 and cams.K.shape == (8, 3, 3) and cams.cam_to_world.shape == (8, 4, 4)
    offsets = cams.centers() - look_at
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), 3.0)
    np.testing.assert_allclose(np.degrees(np.arcsin(offsets[:, 2] / 3.0)), 30.0)
    azimuth = np.degrees(np.arctan2(offsets[:, 1], offsets[:, 0])) % 360
    np.testing.assert_allclose(azimuth, np.arange(8) * 45.0, atol=1e-9)

    # K: principal point at the image centre, horizontal fov as requested
    np.testing.assert_allclose(cams.K[:, 0, 2], 32.0)
    np.testing.assert_allclose(cams.K[:, 1, 2], 24.0)
    np.testing.assert_allclose(2 * np.degrees(np.arctan(32.0 / cams.K[:, 0, 0])), 60.0)

    # rotations are proper, world_to_cam inverts cam_to_world, look_at projects to the centre
    R = cams.cam_to_world[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(
        cams.world_to_cam() @ cams.cam_to_world, np.broadcast_to(np.eye(4), (8, 4, 4)), atol=1e-12
    )
    pix, z = cams.project(look_at[None])
    np.testing.assert_allclose(pix[:, 0], [[32.0, 24.0]] * 8, atol=1e-9)
    np.testing.assert_allclose(z[:, 0], 3.0)
    # OpenCV axes: world up projects towards the top of the image (negative camera y)
    assert np.all(R[:, 2, 1] < 0)


def test_orbit_arc_and_indexing():
    closed = orbit_cameras(4)
    arc = orbit_cameras(3, start_deg=90, arc_deg=20, endpoint=True)
    az = np.degrees(np.arctan2(arc.centers()[:, 1], arc.centers()[:, 0]))
    np.testing.assert_allclose(az, [90, 100, 110])
    assert len(closed[1:3]) == 2 and len(closed[np.array([0, 3])]) == 2
    one = closed[2]
    assert isinstance(one, Cameras) and len(one) == 1
    np.testing.assert_array_equal(one.cam_to_world[0], closed.cam_to_world[2])


def test_from_look_at_straight_down():
    cams = Cameras.from_look_at([[1.0, 2.0, 5.0]], [[1.0, 2.0, 0.0]], 32, 32, fov_deg=40)
    np.testing.assert_allclose(cams.cam_to_world[0, :3, 2], [0, 0, -1], atol=1e-12)
    assert np.isfinite(cams.cam_to_world).all()


# ---------------------------------------------------------------- scenes


def test_determinism_and_variation():
    cams = orbit_cameras(2, width=48, height=48)
    a, b = render(make_scene(7), cams), render(make_scene(7), cams)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.depth, b.depth)
    c = render(make_scene(8), cams)
    assert np.mean(a.images != c.images) > 0.5
    assert not np.allclose(make_scene(7).mesh().vertices[-100:], make_scene(8).mesh().vertices[-100:])


def test_scenes_vary_with_seed_and_sit_on_the_ground():
    scenes = [make_scene(s) for s in range(12)]
    counts = {len(s.objects) for s in scenes}
    assert counts <= {2, 3, 4} and len(counts) >= 2
    assert len({o.kind for s in scenes for o in s.objects}) >= 4
    assert len({round(s.extent, 6) for s in scenes}) == 12
    for s in scenes:
        for i, o in enumerate(s.objects):
            lo, hi = o.bounds()
            assert abs(lo[2]) < 1e-9 and hi[2] <= 1.5 + 1e-9
            assert np.linalg.norm(o.center[:2]) + o.footprint_radius() <= 1.2 + 1e-9
            for other in s.objects[i + 1 :]:  # footprints do not overlap
                gap = np.linalg.norm(o.center[:2] - other.center[:2])
                assert gap > o.footprint_radius() + other.footprint_radius()
    assert all(len(make_scene(s, simple=True).objects) in (1, 2) for s in range(6))
    assert len(make_scene(0, n_objects=6).objects) == 6


def test_mesh_matches_bounds_and_extent(scene):
    mesh = scene.mesh()
    assert len(mesh.faces) > 10_000
    np.testing.assert_allclose(mesh.bounds, scene.bounds, atol=2e-3 * scene.extent)
    g = scene.ground_half_size
    np.testing.assert_allclose(scene.bounds[:, :2], [[-g, -g], [g, g]])
    objects = mesh.vertices[np.linalg.norm(mesh.vertices[:, :2], axis=1) < 1.25]
    objects = objects[objects[:, 2] > 1e-6]
    np.testing.assert_allclose(np.linalg.norm(np.ptp(objects, axis=0)), scene.extent, rtol=2e-3)
    colours = mesh.visual.vertex_colors
    assert colours.shape == (len(mesh.vertices), 4) and colours[:, :3].std() > 20


# ---------------------------------------------------------------- rendering


def test_render_outputs(scene, views):
    assert isinstance(views, Render) and views.cameras is not None
    assert views.images.shape == (3, 96, 96, 3) and views.images.dtype == np.uint8
    assert views.depth.shape == (3, 96, 96) and views.depth.dtype == np.float32
    assert views.mask.dtype == bool
    np.testing.assert_array_equal(views.mask, views.depth > 0)
    assert views.mask[:, 0].mean() < 0.2 and views.mask[:, -1].all()  # sky at the top, ground at the bottom
    # supersampling changes colours only; depth and mask come from the pixel centres
    ss = render(scene, views.cameras[:1], supersample=3)
    np.testing.assert_array_equal(ss.depth[0], views.depth[0])
    assert np.abs(ss.images[0].astype(int) - views.images[0]).mean() < 20


def test_known_depths():
    # straight down onto open ground: z-depth (not ray length) is the camera height everywhere
    scene = make_scene(3)
    cams = Cameras.from_look_at([[2.2, 2.2, 1.5]], [[2.2, 2.2, 0.0]], 33, 33, fov_deg=30)
    out = render(scene, cams, supersample=1)
    assert out.mask.all()
    np.testing.assert_allclose(out.depth, 1.5, rtol=1e-5)

    # a single sphere of radius 0.5 resting at the origin, seen from above and from the side
    sphere = Primitive("sphere", [0.0, 0.0, 0.5], [0.5, 0.5, 0.5])
    one = dataclasses.replace(scene, objects=[sphere], textures=scene.textures[:2])
    cams = Cameras.from_look_at([[0, 0, 3.0], [2.5, 0, 0.5]], [[0, 0, 0.0], [0, 0, 0.5]], 33, 33, fov_deg=40)
    out = render(one, cams, supersample=1)
    np.testing.assert_allclose(out.depth[:, 16, 16], [2.0, 2.0], rtol=1e-5)
    assert not out.mask[1, 0, 0]  # horizontal view: the top corner sees sky


def test_depth_backprojects_onto_mesh(scene, views):
    mesh = scene.mesh()
    points = views.cameras.backproject(views.depth)[views.mask]
    points = points[np.random.default_rng(0).choice(len(points), 3000, replace=False)]
    dist = distance_to_mesh(mesh, points)
    assert dist.max() < 0.001 * scene.extent, dist.max()  # brief allows 0.5%; measured ~5e-5
    assert np.median(dist) < 0.0005 * scene.extent


def test_views_agree_on_depth(views):
    # back-project view 0, re-project into view 2 (20 degrees apart), compare with view 2's depth
    cams = views.cameras
    points = cams[0].backproject(views.depth[:1])[0][views.mask[0]]
    pix, z = cams[2].project(points)
    col, row = np.floor(pix[0]).astype(int).T
    inside = (col >= 0) & (col < cams.width) & (row >= 0) & (row < cams.height)
    measured = views.depth[2][row[inside], col[inside]]
    agree = np.abs(measured - z[0][inside]) < 0.02 * z[0][inside]
    assert inside.mean() > 0.7 and agree.mean() > 0.9, agree.mean()


def test_mesh_colours_match_render(scene, views):
    mesh = scene.mesh()
    cams = views.cameras[:1]
    pix, z = cams.project(mesh.vertices)
    col, row = np.floor(pix[0]).astype(int).T
    inside = (col >= 0) & (col < cams.width) & (row >= 0) & (row < cams.height)
    depth = views.depth[0][row[inside], col[inside]]
    visible = np.abs(depth - z[0][inside]) < 0.01 * depth
    rendered = views.images[0][row[inside], col[inside]][visible].astype(float)
    vertex = mesh.visual.vertex_colors[inside][visible, :3].astype(float)
    assert visible.sum() > 500
    assert np.median(np.abs(rendered - vertex)) < 25


# ---------------------------------------------------------------- texture richness


def test_sift_features_and_matches():
    scene = make_scene(0)
    out = render(scene, orbit_cameras(2, start_deg=30, arc_deg=10, endpoint=True))
    sift = cv2.SIFT_create()
    grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in out.images]
    (kp0, des0), (kp1, des1) = [sift.detectAndCompute(g, None) for g in grey]
    assert min(len(kp0), len(kp1)) >= 300

    pairs = cv2.BFMatcher().knnMatch(des0, des1, k=2)
    good = [m for m, n in pairs if m.distance < 0.75 * n.distance]
    p0 = np.array([kp0[m.queryIdx].pt for m in good])
    p1 = np.array([kp1[m.trainIdx].pt for m in good])
    # ground truth: move each keypoint of view 0 into view 1 through the rendered depth
    col, row = np.floor(p0).astype(int).T
    depth = np.zeros_like(out.depth[:1])
    depth[0, row, col] = out.depth[0, row, col]
    world = out.cameras[0].backproject(depth)[0][row, col]
    expected, _ = out.cameras[1].project(world)
    correct = np.linalg.norm(expected[0] - p1, axis=1) < 3.0
    assert correct.sum() >= 100, (len(good), correct.sum())
    assert correct.mean() > 0.8
