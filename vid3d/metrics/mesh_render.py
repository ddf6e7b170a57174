"""A CPU view of a mesh through a pinhole camera, for measuring: each pixel centre's ray is cast in
open3d's RaycastingScene; the hit face and its barycentrics give the colour, from the texture at the
interpolated uv (bilinear) or from the blended vertex colours."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import trimesh


def raycasting_scene(mesh: trimesh.Trimesh) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    return scene


def camera_rays(K: np.ndarray, cam_to_world: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, 6] rays through the pixel centres of an OpenCV camera; each direction's camera z is 1,
    so a hit's t is its depth."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    directions = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    directions = directions @ cam_to_world[:3, :3].T
    origins = np.broadcast_to(cam_to_world[:3, 3], directions.shape)
    return np.concatenate([origins, directions], -1).astype(np.float32)


def cast(scene: o3d.t.geometry.RaycastingScene, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where rays [..., 6] meet the mesh: the face hit [...] (-1 where none), its barycentric
    weights of the face's three corners [..., 3] and the ray's t [...] (inf where none)."""
    hits = scene.cast_rays(o3d.core.Tensor(rays))
    t = hits["t_hit"].numpy()
    faces = np.where(np.isfinite(t), hits["primitive_ids"].numpy().astype(np.int64), -1)
    b1, b2 = np.moveaxis(hits["primitive_uvs"].numpy(), -1, 0)
    return faces, np.stack([1 - b1 - b2, b1, b2], -1), t  # open3d's uvs weigh the 2nd and 3rd corner


def render_mesh(
    mesh: trimesh.Trimesh,
    K: np.ndarray,  # [3, 3]
    cam_to_world: np.ndarray,  # [4, 4] OpenCV axes
    width: int,
    height: int,
    scene: o3d.t.geometry.RaycastingScene | None = None,  # raycasting_scene(mesh), to reuse
) -> tuple[np.ndarray, np.ndarray]:
    """float RGB [H, W, 3] in [0, 1] (0 where no face is hit) and the hit mask [H, W]."""
    faces, weights, _ = cast(scene or raycasting_scene(mesh), camera_rays(K, cam_to_world, width, height))
    hit = faces >= 0
    corners = mesh.faces[faces[hit]]  # [M, 3]
    image = np.zeros((height, width, 3))
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        uv = (mesh.visual.uv[corners] * weights[hit][..., None]).sum(1)
        image[hit] = sample_bilinear(texture_image(mesh), uv)
    else:
        colours = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
        image[hit] = (colours[corners] * weights[hit][..., None]).sum(1)
    return image, hit


def texture_image(mesh: trimesh.Trimesh) -> np.ndarray:
    """The textured mesh's base colour texture as float RGB [h, w, 3] in [0, 1]."""
    material = mesh.visual.material
    image = material.baseColorTexture if hasattr(material, "baseColorTexture") else material.image
    return np.asarray(image.convert("RGB"), np.float64) / 255.0


def sample_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """texture [h, w, C] at trimesh uvs [N, 2] (v up: row 0 is v = 1; texel centres at (i + 0.5) / size)."""
    height, width = texture.shape[:2]
    return bilinear(texture, uv[:, 0] * width - 0.5, (1 - uv[:, 1]) * height - 0.5)


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image [h, w, C] at [N] columns x and rows y (pixel centres at integers), edges clamped."""
    height, width = image.shape[:2]
    x, y = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] over the mask's pixels."""
    error = ((image - reference) ** 2)[mask].mean()
    return float(-10 * np.log10(max(error, 1e-12)))
