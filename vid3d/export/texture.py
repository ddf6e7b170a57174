"""A texture for the mesh: a UV atlas (xatlas; a grid of faces above 250k faces), then each
texel's colour baked from views of the scene (images with their cameras): the views that see the
texel's surface point (its depth matches the mesh's depth at that camera, open3d's
RaycastingScene) are averaged, weighted by how squarely and closely they see it (views of the
Gaussians instead of the images: 0.3-0.5 dB worse on the demo, benchmarks/mesh_texture.py). Texels
no view sees keep the mesh's vertex colours; texels between the atlas' charts take their nearest
chart texel, so bilinear filtering at seams finds no black."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import open3d as o3d
import trimesh
import xatlas
from PIL import Image
from scipy import ndimage

from vid3d.export import WORLD_TO_GLTF
from vid3d.metrics.mesh_render import bilinear, camera_rays, cast, raycasting_scene
from vid3d.splats.data import Dataset
from vid3d.ui import log

# A texel is seen when its depth is within this fraction of the mesh's depth at its pixel; pixels
# where the depth jumps by more than DEPTH_EDGE within their 3x3 neighbours (silhouettes, where an
# image mixes the surface with what is behind it) see nothing.
DEPTH_TOLERANCE = 0.02
DEPTH_EDGE = 0.1
# xatlas: one growing pass and a laxer chart cost than its defaults (4, 2) give fewer, larger charts
# sooner: on the demo's mesh decimated to 50k faces, 31 s with max_cost 8 against 47 s with 2.
CHART_ITERATIONS = 1
CHART_MAX_COST = 16.0
# xatlas' time grows faster than the faces: it charts at most this many at once (uv_atlas). The
# demo's mesh decimated to 200k faces, 2048 texture, 2 idle cores: chunks of 12.5k, atlas 17 s and
# held-out PSNR 23.47 dB; chunks of 50k, 65 s and 23.46 dB; one atlas of all, 23.47 dB in minutes.
XATLAS_CHUNK_FACES = 12_500
# The demo's TSDF mesh decimated to 200k faces, held-out PSNR from a 2048 texture: one xatlas atlas
# 23.47 dB (459 s on 2 loaded cores); grid_atlas 21.64 dB in 0.3 s (the dense vertex-coloured
# mesh: 22.34). Meshes larger than this get grid_atlas.
XATLAS_MAX_FACES = 250_000
# A grid cell smaller than this leaves faces no texel centre (the demo's 200k faces at 1024: cells of
# 3.2 texels, 16.8 dB against 21.6 at 2048 with 6.5).
GRID_MIN_CELL = 6
GUTTER = 2  # texels between charts, so bilinear filtering at a seam reads its own chart
MATERIAL = "mesh"  # glb's material name
FAR = 1e30  # the depth of pixels that see no mesh


class View(NamedTuple):
    image: np.ndarray  # [H, W, 3] float in [0, 1]
    K: np.ndarray  # [3, 3]
    cam_to_world: np.ndarray  # [4, 4] OpenCV axes


class TexelSurface(NamedTuple):
    """The surface under each texel inside the atlas' charts (`inside` [S, S]), row 0 at v = 1."""

    inside: np.ndarray  # [S, S] bool
    faces: np.ndarray  # [M] the face under each inside texel
    weights: np.ndarray  # [M, 3] its barycentric weights
    points: np.ndarray  # [M, 3] world position
    normals: np.ndarray  # [M, 3] the face's unit normal


def uv_atlas(mesh: trimesh.Trimesh, size: int) -> tuple[trimesh.Trimesh, np.ndarray]:
    """The mesh with its vertices split along the atlas' seams (vertex colours carried over) and their
    uv [V, 2], laid out for a `size` texture: xatlas' charts, or a grid of faces for a large mesh.

    xatlas' time grows much faster than the faces (the demo's mesh on 2 idle cores: 50k faces 10 s,
    100k 59 s, 200k several minutes), so a mesh of more than XATLAS_CHUNK_FACES is cut into spatial
    chunks of at most that many faces, each packed by xatlas into its own square tile of the texture
    (the tiles are glue written here: xatlas packs one atlas at a time)."""
    if len(mesh.faces) > XATLAS_MAX_FACES:
        return grid_atlas(mesh, size)
    chunks = spatial_chunks(mesh.triangles_center, np.arange(len(mesh.faces)), XATLAS_CHUNK_FACES)
    per_row = int(np.ceil(np.sqrt(len(chunks))))
    tile = size // per_row
    vertices, faces, uvs, offset = [], [], [], 0
    for k, chunk in enumerate(chunks):
        used, local_faces = np.unique(mesh.faces[chunk], return_inverse=True)
        vmapping, indices, uv = xatlas_charts(mesh.vertices[used], local_faces.reshape(-1, 3), tile - 2 * GUTTER)
        corner = np.array([k % per_row, k // per_row]) * tile + GUTTER  # texels; a gutter between tiles
        uvs.append((uv * (tile - 2 * GUTTER) + corner) / size)
        vertices.append(used[vmapping])
        faces.append(indices + offset)
        offset += len(vmapping)
    original = np.concatenate(vertices)
    colours = np.asarray(mesh.visual.vertex_colors)[original]
    split = trimesh.Trimesh(mesh.vertices[original], np.concatenate(faces), vertex_colors=colours, process=False)
    return split, np.concatenate(uvs).astype(np.float64)


def xatlas_charts(vertices: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas' atlas of one mesh packed for a `size` texture: vmapping, faces, uv in [0, 1]."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(vertices, np.float32), np.asarray(faces, np.uint32))
    charts = xatlas.ChartOptions()
    charts.max_iterations = CHART_ITERATIONS
    charts.max_cost = CHART_MAX_COST
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.blockAlign = size, GUTTER, True
    atlas.generate(charts, pack)
    return atlas[0]


def spatial_chunks(centres: np.ndarray, faces: np.ndarray, most: int) -> list[np.ndarray]:
    """Faces split at the median of their centres along the longest side, until no part has more than `most`."""
    if len(faces) <= most:
        return [faces]
    points = centres[faces]
    axis = int(np.argmax(np.ptp(points, axis=0)))
    order = faces[np.argsort(points[:, axis], kind="stable")]
    half = len(order) // 2
    return spatial_chunks(centres, order[:half], most) + spatial_chunks(centres, order[half:], most)


def grid_atlas(mesh: trimesh.Trimesh, size: int) -> tuple[trimesh.Trimesh, np.ndarray]:
    """Each pair of faces in a square cell of the texture, one below its diagonal and one above, a
    texel's gap between them and around the cell. Instant; and on a TSDF mesh xatlas' charts are
    a few faces each anyway (the demo's decimated mesh: about 3)."""
    per_row = int(np.ceil(np.sqrt((len(mesh.faces) + 1) // 2)))
    side = grid_cell(mesh, size)
    cell = np.arange(len(mesh.faces)) // 2
    origin = np.stack([cell % per_row, cell // per_row], -1) * side
    below = np.array([[0.5, 0.5], [side - 1.5, 0.5], [0.5, side - 1.5]])
    above = np.array([[side - 0.5, side - 0.5], [1.5, side - 0.5], [side - 0.5, 1.5]])
    corners = np.where((np.arange(len(mesh.faces)) % 2 == 0)[:, None, None], below, above) + origin[:, None]
    uv = corners.reshape(-1, 2) / size
    uv[:, 1] = 1 - uv[:, 1]  # the grid's rows run down the image
    colours = np.asarray(mesh.visual.vertex_colors)[mesh.faces].reshape(-1, 4)
    faces = np.arange(3 * len(mesh.faces)).reshape(-1, 3)
    split = trimesh.Trimesh(mesh.vertices[mesh.faces].reshape(-1, 3), faces, vertex_colors=colours, process=False)
    return split, uv


def grid_cell(mesh: trimesh.Trimesh, size: int) -> float:
    """The side in texels of grid_atlas' cells."""
    return size / np.ceil(np.sqrt((len(mesh.faces) + 1) // 2))


def texel_surface(mesh: trimesh.Trimesh, uv: np.ndarray, size: int) -> TexelSurface:
    """Cast a ray down at every texel centre onto the atlas laid flat (uv, 0): the hit face and its
    barycentrics are the texel's place on the surface."""
    flat = trimesh.Trimesh(np.column_stack([uv, np.zeros(len(uv))]), mesh.faces, process=False)
    centres = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(centres, centres[::-1])  # row 0 at the top of the image: v = 1
    rays = np.stack([u, v, np.ones_like(u), *np.zeros((2, size, size)), -np.ones_like(u)], -1)
    faces, weights, _ = cast(raycasting_scene(flat), rays.astype(np.float32))
    inside = faces >= 0
    faces, weights = faces[inside], weights[inside]
    points = (mesh.vertices[mesh.faces[faces]] * weights[..., None]).sum(1)
    return TexelSurface(inside, faces, weights, points, mesh.face_normals[faces])


def bake(mesh: trimesh.Trimesh, surface: TexelSurface, views: Iterable[View]) -> tuple[np.ndarray, np.ndarray]:
    """Each inside texel's colour [M, 3] averaged over the views that see it, and whether any did [M]."""
    scene = raycasting_scene(mesh)
    total, weight_sum = np.zeros((len(surface.points), 3)), np.zeros(len(surface.points))
    for view in views:
        pixels, weights = _visible(scene, surface, view)
        seen = weights > 0
        total[seen] += weights[seen, None] * bilinear(view.image, *(pixels[seen] - 0.5).T)
        weight_sum += weights
    seen = weight_sum > 0
    return total / np.maximum(weight_sum, 1e-12)[:, None], seen


def _visible(scene: o3d.t.geometry.RaycastingScene, surface: TexelSurface, view: View) -> tuple[np.ndarray, np.ndarray]:
    """The texels' pixel coordinates in the view [M, 2] and their weights [M]: 0 where the view does
    not see the texel, else (cos of the viewing angle / depth)^2, the texel's footprint in the image."""
    height, width = view.image.shape[:2]
    world_to_cam = np.linalg.inv(view.cam_to_world)
    in_camera = surface.points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    depth = in_camera[:, 2]
    pixels = in_camera[:, :2] / np.maximum(depth, 1e-9)[:, None] * np.diag(view.K)[:2] + view.K[:2, 2]
    col, row = np.floor(pixels).astype(np.int64).T
    in_frame = (depth > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    mesh_depth = cast(scene, camera_rays(view.K, view.cam_to_world, width, height))[2]
    mesh_depth = np.minimum(mesh_depth, FAR).astype(np.float32)  # finite, so that edges have no inf - inf
    near, far = cv2.erode(mesh_depth, np.ones((3, 3))), cv2.dilate(mesh_depth, np.ones((3, 3)))
    col, row = col.clip(0, width - 1), row.clip(0, height - 1)
    at_pixel = mesh_depth[row, col]
    edge = (far[row, col] - near[row, col]) > DEPTH_EDGE * at_pixel
    seen = in_frame & ~edge & (np.abs(depth - at_pixel) < DEPTH_TOLERANCE * at_pixel)
    to_camera = view.cam_to_world[:3, 3] - surface.points
    distance = np.linalg.norm(to_camera, axis=1)
    # Either side: a TSDF mesh's winding is not consistent, and the depth test already hides back faces.
    cos = np.abs((surface.normals * to_camera).sum(1)) / np.maximum(distance, 1e-12)
    weights = np.where(seen, (cos / np.maximum(depth, 1e-9)) ** 2, 0.0)
    return pixels, weights


def texture_image(mesh: trimesh.Trimesh, surface: TexelSurface, colours: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3]: the baked colours, the vertex colours where no view saw the texel, and
    between the charts the nearest chart texel."""
    vertex_colours = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    fallback = (vertex_colours[mesh.faces[surface.faces]] * surface.weights[..., None]).sum(1)
    texels = np.zeros((*surface.inside.shape, 3))
    texels[surface.inside] = np.where(seen[:, None], colours, fallback)
    nearest = ndimage.distance_transform_edt(~surface.inside, return_distances=False, return_indices=True)
    texels = texels[tuple(nearest)]
    return (texels.clip(0, 1) * 255).round().astype(np.uint8)


def bake_texture(
    mesh: trimesh.Trimesh,
    views: Iterable[View],
    size: int,
    atlas: tuple[trimesh.Trimesh, np.ndarray] | None = None,  # uv_atlas(mesh, size), if made already
) -> tuple[trimesh.Trimesh, dict[str, float]]:
    """The vertex-coloured `mesh` with a uv atlas and a `size` x `size` texture baked from `views`;
    and metrics: the fraction of the texture's surface a view saw, the seconds it took."""
    if atlas is None and len(mesh.faces) > XATLAS_MAX_FACES and grid_cell(mesh, size) < GRID_MIN_CELL:
        log.warning(
            "export: a %d texture is too small for %d faces (each pair needs %d x %d texels); the mesh keeps "
            "vertex colours: raise export.texture_size or lower export.faces",
            size,
            len(mesh.faces),
            GRID_MIN_CELL,
            GRID_MIN_CELL,
        )
        return mesh, {}
    start = time.perf_counter()
    split, uv = atlas or uv_atlas(mesh, size)
    log.info("export: uv atlas of %d faces in %.0f s", len(mesh.faces), time.perf_counter() - start)
    surface = texel_surface(split, uv, size)
    colours, seen = bake(split, surface, views)
    image = Image.fromarray(texture_image(split, surface, colours, seen))
    material = trimesh.visual.material.PBRMaterial(
        name=MATERIAL, baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0
    )
    textured = trimesh.Trimesh(
        split.vertices, split.faces, visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False
    )
    seconds = time.perf_counter() - start
    log.info("export: baked a %d x %d texture in %.0f s (%.0f%% of it seen)", size, size, seconds, 100 * seen.mean())
    return textured, {"texture_seen": round(float(seen.mean()), 4), "texture_seconds": round(seconds, 1)}


def export_mesh(mesh: trimesh.Trimesh, path: Path) -> None:
    """mesh.ply (vertex colours), mesh.glb (its texture embedded as baseColorTexture) or mesh.obj
    with mesh.mtl (map_Kd) and the texture mesh.png beside it."""
    if path.suffix == ".glb":
        mesh.copy().apply_transform(WORLD_TO_GLTF).export(path)  # glTF's y up
        return
    if path.suffix != ".obj" or not isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        mesh.export(path)
        return
    # A white diffuse (OBJ importers multiply map_Kd by Kd; trimesh's default is 0.4) and no specular.
    material = trimesh.visual.material.SimpleMaterial(
        name=path.stem,
        image=mesh.visual.material.baseColorTexture,
        diffuse=(255, 255, 255, 255),
        specular=(0, 0, 0, 255),
    )
    obj = trimesh.Trimesh(
        mesh.vertices,
        mesh.faces,
        visual=trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material),
        process=False,
    )
    obj.export(path, mtl_name=f"{path.stem}.mtl")


def dataset_views(data: Dataset, frames: Iterable[int] | None = None) -> Iterator[View]:
    """The frames' images (all by default) with their cameras."""
    cameras = data.cameras()
    for i in range(len(data.names)) if frames is None else frames:
        yield View(data.images[i].cpu().numpy(), cameras[i].K, cameras[i].cam_to_world)
