"""The report's pictures as PNG/JPEG bytes: matplotlib plots (Figure objects, no pyplot, so no GUI
backend and no global state) and thumbnails."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from vid3d.viewing import horizontal_axes, up_direction

DPI = 110
MAX_POINTS = 20_000  # sparse points drawn in the camera path plot
MESH_PICTURE_FACES = 30_000  # the mesh is simplified to about this many faces for its picture
CAMERA_COLOUR, POINT_COLOUR = "#2856d8", "#888888"


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def thumbnail_jpeg(image: np.ndarray, side: int) -> bytes:
    """uint8 [H, W, 3] shrunk so its longer side is at most `side`, as JPEG."""
    import cv2

    factor = min(1.0, side / max(image.shape[:2]))
    if factor < 1:
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    _ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]
    )
    return data.tobytes()


def sharpness_figure(sharpness: list[float]) -> bytes:
    figure = Figure(figsize=(7, 2.6))
    axes = figure.subplots()
    axes.bar(np.arange(len(sharpness)), sharpness, color=CAMERA_COLOUR)
    axes.set(xlabel="kept frame", ylabel="sharpness")
    axes.grid(alpha=0.3)
    return figure_png(figure)


def curves_figure(history: dict[str, np.ndarray], held_out_psnr: float | None) -> bytes:
    """Loss, PSNR (each step's training frame, smoothed; the final held-out PSNR as a point) and
    the Gaussian count against the step."""
    steps = history["step"]
    figure = Figure(figsize=(11, 3.2))
    loss_axes, psnr_axes, count_axes = figure.subplots(1, 3)
    for axes, name, label in ((loss_axes, "loss", "loss (L1 + SSIM)"), (psnr_axes, "psnr", "PSNR (dB)")):
        axes.plot(steps, history[name], color="#bbbbbb", linewidth=0.6, label="each step")
        axes.plot(steps, _smoothed(history[name]), color=CAMERA_COLOUR, linewidth=1.5, label="smoothed")
        axes.set(xlabel="step", ylabel=label)
    if held_out_psnr is not None:
        psnr_axes.plot([steps[-1]], [held_out_psnr], "o", color="#d83a28", label=f"held out: {held_out_psnr:.2f} dB")
    psnr_axes.legend(loc="lower right", fontsize=8)
    loss_axes.set_yscale("log")
    count_axes.plot(steps, history["gaussians"], color=CAMERA_COLOUR, linewidth=1.5)
    count_axes.set(xlabel="step", ylabel="Gaussians")
    for axes in (loss_axes, psnr_axes, count_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure_png(figure)


def _smoothed(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 50)
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def camera_path_figure(cam_to_world: np.ndarray, points: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    """Top view and side view of the camera centres (with their viewing directions) and the points,
    in the capture's own up (so a tilted world still shows as a plan and an elevation)."""
    up = up_direction(cam_to_world)
    right, ahead = horizontal_axes(up)
    centres = cam_to_world[:, :3, 3]
    figure = Figure(figsize=(11, 4.6))
    for axes, (u, v, names) in zip(figure.subplots(1, 2), ((right, ahead, ("x", "y")), (right, up, ("x", "up")))):
        if points is not None and len(points[0]):
            xyz, rgb = _subsample(*points)
            axes.scatter(xyz @ u, xyz @ v, s=1.5, c=rgb / 255.0, linewidths=0)
        reach = 0.08 * max(np.ptp(centres @ u), np.ptp(centres @ v), 1e-6)
        forward = cam_to_world[:, :3, 2]
        for start, direction in zip(centres, forward):
            end = start + reach * direction
            axes.plot([start @ u, end @ u], [start @ v, end @ v], color=CAMERA_COLOUR, linewidth=0.8)
        axes.plot(centres @ u, centres @ v, "o-", color=CAMERA_COLOUR, markersize=2.5, linewidth=0.6)
        axes.plot([centres[0] @ u], [centres[0] @ v], "s", color="#d83a28", markersize=6, label="first camera")
        axes.set_aspect("equal", adjustable="datalim")
        axes.set(xlabel=names[0], ylabel=names[1], title="top view" if v is ahead else "side view")
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


def _subsample(xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(xyz) <= MAX_POINTS:
        return xyz, rgb
    keep = np.random.default_rng(0).choice(len(xyz), MAX_POINTS, replace=False)
    return xyz[keep], rgb[keep]


def mesh_figure(mesh, cam_to_world: np.ndarray) -> bytes:
    """The mesh drawn offscreen (matplotlib's painter's algorithm, faces lit by a light behind the
    viewer), seen from above the first camera, with the capture's up pointing up."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    mesh = _simplified(mesh)
    up = up_direction(cam_to_world)
    right, ahead = horizontal_axes(up)
    basis = np.stack([right, ahead, up])  # world -> (right, ahead, up)
    vertices = np.asarray(mesh.vertices) @ basis.T
    triangles = vertices[np.asarray(mesh.faces)]
    view = _view_direction(cam_to_world, basis, vertices)
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
    light = np.abs(normals @ view) * 0.75 + 0.25
    colours = _face_colours(mesh) * light[:, None]

    figure = Figure(figsize=(10, 8))
    axes = figure.add_axes((0, 0, 1, 1), projection="3d")
    axes.add_collection3d(Poly3DCollection(triangles, facecolors=colours.clip(0, 1), linewidths=0))
    low, high = np.percentile(vertices, [5, 95], axis=0)  # floaters and stray sky pieces left outside
    middle, half = (low + high) / 2, 0.6 * (high - low).max()
    axes.set(
        xlim=(middle[0] - half, middle[0] + half),
        ylim=(middle[1] - half, middle[1] + half),
        zlim=(middle[2] - half, middle[2] + half),
    )
    axes.set_box_aspect((1, 1, 1))
    elevation = np.degrees(np.arcsin(np.clip(view[2], -1, 1)))
    axes.view_init(elev=max(elevation, 15.0), azim=np.degrees(np.arctan2(view[1], view[0])))
    axes.set_axis_off()
    return trimmed_png(figure_png(figure))


def trimmed_png(png: bytes, margin: int = 8) -> bytes:
    """The picture cut to what is drawn in it, plus a margin: a 3D axes' cube leaves wide empty
    bands around a flat scene."""
    import cv2

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    drawn = np.argwhere((image[..., :3] < 250).any(axis=-1))
    if len(drawn) == 0:
        return png
    (top, left), (bottom, right) = drawn.min(axis=0), drawn.max(axis=0)
    top, left = max(top - margin, 0), max(left - margin, 0)
    _ok, data = cv2.imencode(".png", image[top : bottom + margin + 1, left : right + margin + 1])
    return data.tobytes()


def _view_direction(cam_to_world: np.ndarray, basis: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Unit vector from the mesh towards the first camera, in the (right, ahead, up) frame."""
    if len(cam_to_world) == 0:
        return np.array([0.6, -0.6, 0.5]) / np.linalg.norm([0.6, -0.6, 0.5])
    direction = basis @ cam_to_world[0, :3, 3] - np.median(vertices, axis=0)
    return direction / max(np.linalg.norm(direction), 1e-12)


def _simplified(mesh):
    """At most about MESH_PICTURE_FACES faces (open3d's vertex clustering: fast on millions)."""
    import open3d as o3d
    import trimesh

    if len(mesh.faces) <= MESH_PICTURE_FACES:
        return mesh
    o3d_mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(mesh.vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.asarray(mesh.faces, dtype=np.int32)),
    )
    colours = _vertex_colours(mesh)
    o3d_mesh.vertex_colors = o3d.utility.Vector3dVector(colours.astype(np.float64))
    voxel = np.ptp(np.asarray(mesh.vertices), axis=0).max() / np.sqrt(MESH_PICTURE_FACES / 2)
    small = o3d_mesh.simplify_vertex_clustering(voxel, o3d.geometry.SimplificationContraction.Average)
    return trimesh.Trimesh(
        np.asarray(small.vertices),
        np.asarray(small.triangles),
        vertex_colors=(np.asarray(small.vertex_colors) * 255).astype(np.uint8),
        process=False,
    )


def _vertex_colours(mesh) -> np.ndarray:
    """[V, 3] in [0, 1] (a textured mesh's texture at its vertices); grey when the mesh has none."""
    visual = mesh.visual.to_color() if mesh.visual.kind == "texture" else mesh.visual
    colours = getattr(visual, "vertex_colors", None)
    if colours is None or len(colours) != len(mesh.vertices):
        return np.full((len(mesh.vertices), 3), 0.7)
    return np.asarray(colours)[:, :3] / 255.0


def _face_colours(mesh) -> np.ndarray:
    return _vertex_colours(mesh)[np.asarray(mesh.faces)].mean(axis=1)
