"""The mesh renderer, the texture bake and the textured mesh files, on objects with known colours."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from vid3d.export import read_mesh, texture
from vid3d.export.texture import View, bake_texture, export_mesh
from vid3d.metrics.mesh_render import render_mesh, texture_image
from vid3d.scenes.cameras import orbit_cameras


def head_on(distance: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """K and cam_to_world of a camera on +z looking down at the square [-1, 1]^2 of z = 0, which fills its image."""
    cam_to_world = np.diag([1.0, -1.0, -1.0, 1.0])
    cam_to_world[2, 3] = distance
    focal = size / 2 * distance
    return np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]]), cam_to_world


def textured_quad(texture: np.ndarray) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    return trimesh.Trimesh(
        [[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]],
        [[0, 1, 2], [0, 2, 3]],
        visual=trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]], material=material),
        process=False,
    )


def smooth_colours(points: np.ndarray) -> np.ndarray:
    """The true colour of the surface at each point, in [0.1, 0.9]: detail a coarse mesh's vertices cannot hold."""
    return 0.5 + 0.4 * np.sin(7.0 * points + np.array([0.0, 1.0, 2.0]))


def box(subdivisions: int) -> trimesh.Trimesh:
    """The unit cube with the true colours at its vertices."""
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    for _ in range(subdivisions):
        cube = cube.subdivide()
    colours = (smooth_colours(cube.vertices) * 255).round().astype(np.uint8)
    return trimesh.Trimesh(cube.vertices, cube.faces, vertex_colors=colours, process=False)


def around(count: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cameras around the cube, from above and from below."""
    cameras = [
        orbit_cameras(count, radius=2.5, elevation_deg=elevation, width=size, height=size, look_at=(0, 0, 0))
        for elevation in (35.0, -35.0)
    ]
    return [(K, pose) for c in cameras for K, pose in zip(c.K, c.cam_to_world)]


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    return float(-10 * np.log10(((image[mask] - reference[mask]) ** 2).mean()))


def test_a_textured_square_seen_head_on_renders_as_its_texture():
    texture = np.kron(np.random.default_rng(0).integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    K, cam_to_world = head_on(distance=2.0, size=64)  # a pixel per texel, their centres on one another
    image, hit = render_mesh(textured_quad(texture), K, cam_to_world, 64, 64)
    assert hit.all()
    np.testing.assert_allclose(image, texture / 255.0, atol=1e-4)  # float32 barycentrics


def test_vertex_colours_are_blended_by_the_barycentrics_of_each_pixel_centre():
    triangle = trimesh.Trimesh(
        [[-1, -1, 0], [1, -1, 0], [-1, 1, 0]], [[0, 1, 2]], vertex_colors=[[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    )
    K, cam_to_world = head_on(distance=2.0, size=32)
    image, hit = render_mesh(triangle, K, cam_to_world, 32, 32)
    x, y = np.meshgrid((np.arange(32) + 0.5) / 16 - 1, 1 - (np.arange(32) + 0.5) / 16)  # pixel centres on z = 0
    a, b = (x + 1) / 2, (y + 1) / 2  # the weights of the 2nd and 3rd corner
    off_edge = np.abs(a + b - 1) > 1e-6  # the pixel centres on the long edge may go either way
    np.testing.assert_array_equal(hit[off_edge], (a + b < 1)[off_edge])
    np.testing.assert_allclose(image[hit], np.stack([1 - a - b, a, b], -1)[hit], atol=1e-5)
    assert (image[~hit] == 0).all()


@pytest.mark.parametrize(
    ("xatlas_max_faces", "chunk_faces"), [(250_000, 12_500), (250_000, 5), (0, 0)], ids=["xatlas", "tiles", "grid"]
)
def test_a_texture_baked_from_views_of_a_fine_cube_brings_its_detail_to_a_coarse_cube(
    monkeypatch, xatlas_max_faces, chunk_faces
):
    monkeypatch.setattr(texture, "XATLAS_MAX_FACES", xatlas_max_faces)
    monkeypatch.setattr(texture, "XATLAS_CHUNK_FACES", chunk_faces)  # 5: the 12 faces in 4 chunks, 4 tiles
    fine, coarse = box(subdivisions=4), box(subdivisions=0)  # 3072 faces; 12 whose vertex colours blur the detail
    cameras = around(count=6, size=96)
    views = [View(render_mesh(fine, K, pose, 96, 96)[0], K, pose) for K, pose in cameras]
    textured, metrics = bake_texture(coarse, views, size=384)  # a view sees more texels than cv2.remap takes

    baked = texture_image(textured)
    assert metrics["texture_seen"] > 0.99 and baked.min() > 0.05  # seen all over; no black between charts
    held_out = around(count=5, size=96)  # other azimuths: the views the bake never saw
    for K, pose in held_out[:3]:
        reference, mask = render_mesh(fine, K, pose, 96, 96)
        image, hit = render_mesh(textured, K, pose, 96, 96)
        np.testing.assert_array_equal(hit, mask)
        assert psnr(image, reference, mask) > 30
        assert psnr(render_mesh(coarse, K, pose, 96, 96)[0], reference, mask) < 20


def test_a_texture_too_small_for_a_grid_of_the_faces_leaves_the_vertex_colours(monkeypatch):
    monkeypatch.setattr(texture, "XATLAS_MAX_FACES", 0)
    mesh = box(subdivisions=3)  # 768 faces: a grid of 20 x 20 cells, 1.6 texels each in a 32 texture
    K, pose = around(count=1, size=32)[0]
    kept, metrics = bake_texture(mesh, [View(render_mesh(mesh, K, pose, 32, 32)[0], K, pose)], size=32)
    assert kept is mesh and metrics == {}


@pytest.mark.parametrize("suffix", [".glb", ".obj"])
def test_the_textured_mesh_loads_back_with_its_uvs_and_texture(tmp_path, suffix):
    mesh = box(subdivisions=1)
    views = [View(render_mesh(mesh, K, pose, 48, 48)[0], K, pose) for K, pose in around(count=4, size=48)]
    textured, _ = bake_texture(mesh, views, size=64)
    export_mesh(textured, tmp_path / f"mesh{suffix}")

    loaded = read_mesh(tmp_path / f"mesh{suffix}")
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    np.testing.assert_array_equal(texture_image(loaded), texture_image(textured))
    K, pose = around(count=3, size=48)[0]
    np.testing.assert_allclose(
        render_mesh(loaded, K, pose, 48, 48)[0], render_mesh(textured, K, pose, 48, 48)[0], atol=1e-5
    )
    if suffix == ".obj":  # what Blender's OBJ importer reads: the material library and its map_Kd, white Kd
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.mtl", "mesh.obj", "mesh.png"]
        mtl = (tmp_path / "mesh.mtl").read_text()
        assert "map_Kd mesh.png" in mtl and "Kd 1.0" in mtl and "Ks 0.0" in mtl
        assert "mtllib mesh.mtl" in (tmp_path / "mesh.obj").read_text()
    else:  # glTF's base colour texture, embedded; a dielectric, so viewers show the texture as it is
        material = loaded.visual.material
        assert material.baseColorTexture is not None and material.metallicFactor == 0.0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb"]


def test_a_ply_mesh_keeps_its_vertex_colours(tmp_path):
    mesh = box(subdivisions=1)
    export_mesh(mesh, tmp_path / "mesh.ply")
    loaded = trimesh.load(tmp_path / "mesh.ply", process=False)
    np.testing.assert_array_equal(loaded.visual.vertex_colors, mesh.visual.vertex_colors)


def test_chunks_are_spatial_halves_and_each_has_its_own_tile(monkeypatch):
    monkeypatch.setattr(texture, "XATLAS_CHUNK_FACES", 200)
    mesh = box(subdivisions=3)  # 768 faces: 4 chunks of 192, tiles of a 2x2 grid
    chunks = texture.spatial_chunks(mesh.triangles_center, np.arange(len(mesh.faces)), 200)
    assert sorted(len(c) for c in chunks) == [192] * 4 and len(np.unique(np.concatenate(chunks))) == 768
    split, uv = texture.uv_atlas(mesh, 256)
    tiles = np.floor(uv[split.faces].mean(1) * 2).astype(int)  # each face's tile (column, row)
    assert len({tuple(t) for t in tiles}) == 4
    inside = (uv[split.faces] * 2 - tiles[:, None]).clip(0, 1) == uv[split.faces] * 2 - tiles[:, None]
    assert inside.all()  # no face reaches into another tile
    np.testing.assert_allclose(split.area, mesh.area)  # the same surface, its vertices split at seams


def test_a_glb_stands_upright_in_gltf_clients_and_reads_back_in_the_world(tmp_path):
    """glTF is y up, transforms.json's world z up: the file holds the world's up along +y."""
    tall = trimesh.creation.box(
        extents=(0.1, 0.2, 1.0), transform=trimesh.transformations.translation_matrix([0, 0, 2])
    )
    export_mesh(tall, tmp_path / "mesh.glb")
    as_stored = trimesh.load(tmp_path / "mesh.glb", force="mesh", process=False)
    np.testing.assert_allclose(as_stored.extents, [0.1, 1.0, 0.2], atol=1e-6)  # tall along glTF's y
    np.testing.assert_allclose(as_stored.centroid, [0, 2, 0], atol=1e-6)
    np.testing.assert_allclose(read_mesh(tmp_path / "mesh.glb").vertices, tall.vertices, atol=1e-6)
