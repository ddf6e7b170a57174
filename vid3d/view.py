"""`vid3d view PROJECT`: a viser server that shows a project's results in the browser.

The Gaussians (drawn by viser's WebGL splat renderer, so no GPU is needed on the server), the
cameras of poses/ as frustums with their frame as a thumbnail (a click moves the view there), the
sparse points, the exported mesh and the generated orbit's cameras; each toggled in the panel.
Everything is in transforms.json's world; the view's up is the capture's (the cameras' mean up).
"""

from __future__ import annotations

import contextlib
import io
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from vid3d.cameras import Camera
from vid3d.errors import UserError
from vid3d.export import mesh_path, read_mesh
from vid3d.generate.output import GeneratedVideo
from vid3d.poses import PosesDataset, read_dataset
from vid3d.project import MANIFEST, Project
from vid3d.splats.model import read_splats
from vid3d.viewing import DrawnGaussians, drawn_gaussians, horizontal_axes, rotation_to_wxyz, up_direction

THUMBNAIL_SIDE = 160  # pixels: the frustums' images travel to the browser
FRUSTUM_SIZE = 0.06  # of the scene's size
POINT_SIZE = 0.004  # of the scene's size
PULL_BACK = 1.6  # the first view is this far out along the line from the scene's centre to the first camera
CAMERA_COLOUR = (40, 90, 220)
GENERATED_COLOUR = (230, 120, 20)


@dataclass
class Results:
    """What a project has to show; None where a stage has not run."""

    gaussians: DrawnGaussians | None = None
    cameras: PosesDataset | None = None
    points: tuple[np.ndarray, np.ndarray] | None = None
    mesh: trimesh.Trimesh | None = None
    generated: list[Camera] | None = None

    def empty(self) -> bool:
        return all(v is None for v in (self.gaussians, self.cameras, self.mesh, self.generated))


def read_results(project_dir: Path) -> Results:
    """The results of the project's stages that have run (complete or stale), through their readers."""
    project = Project(project_dir)
    if not project.exists():
        raise UserError(f"{project_dir}: not a vid3d project (no {MANIFEST}); pass a project folder made by vid3d")
    ran = {stage for stage, record in project.status().items() if record["status"] in ("complete", "stale")}
    results = Results()
    if "splats" in ran:
        results.gaussians = drawn_gaussians(read_splats(project.stage_dir("splats")))
    if "poses" in ran:
        results.cameras = read_dataset(project.stage_dir("poses"))
        results.points = results.cameras.points()
    if "export" in ran and (mesh_file := mesh_path(project.stage_dir("export"))) is not None:
        results.mesh = read_mesh(mesh_file)
    generated = GeneratedVideo.read(project.stage_dir("generate"))
    if "generate" in ran and generated.cameras_file is not None:
        results.generated = generated.cameras()
    if results.empty():
        raise UserError(
            f"{project_dir}: nothing to show yet (no poses/, splats/, export/ mesh or generated cameras); "
            f"run `vid3d reconstruct {project_dir} --input VIDEO` first"
        )
    return results


def serve(project_dir: Path, host: str, port: int) -> None:
    """Serve the project's results until Ctrl-C (or SIGTERM)."""
    import viser

    results = read_results(project_dir)
    _check_address(host)
    with contextlib.redirect_stdout(io.StringIO()):  # viser's banner: stdout carries our one line
        server = viser.ViserServer(host=host, port=port, label=f"vid3d: {project_dir}", verbose=False)
    try:
        show(server, results)
        print(
            f"vid3d view: http://{'localhost' if host in ('0.0.0.0', '127.0.0.1') else host}:{server.get_port()} "
            "(Ctrl-C to stop)",
            flush=True,
        )
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            server.stop()


def _check_address(host: str) -> None:
    """viser binds in a background thread and carries on when that fails: find out first."""
    try:
        with socket.create_server((host, 0)):
            pass
    except OSError as exc:
        raise UserError(
            f"--host {host}: cannot listen there ({exc}); pass an address of this machine "
            "(127.0.0.1, or 0.0.0.0 for all)"
        ) from None


def show(server, results: Results) -> dict:
    """Add every result to the scene, each with a checkbox, and start the view near the first camera.
    Returns the scene's handles by checkbox name."""
    all_cameras = _camera_matrices(results)
    up = up_direction(all_cameras)
    centre, size = _scene_centre_and_size(results, all_cameras)
    server.scene.set_up_direction(tuple(up))
    layers = {}
    if results.gaussians is not None:
        g = results.gaussians
        layers["Gaussians"] = server.scene.add_gaussian_splats(
            "/gaussians", centers=g.centres, covariances=g.covariances, rgbs=g.colours, opacities=g.opacities
        )
    if results.points is not None and len(results.points[0]):
        layers["Sparse points"] = server.scene.add_point_cloud(
            "/points",
            results.points[0],
            results.points[1],
            point_size=POINT_SIZE * size,
            visible=results.gaussians is None,
        )
    if results.mesh is not None:
        layers["Mesh"] = server.scene.add_mesh_trimesh("/mesh", results.mesh, visible=results.gaussians is None)
    if results.cameras is not None:
        layers["Cameras"] = _add_poses_cameras(server, results.cameras, FRUSTUM_SIZE * size)
    if results.generated:
        layers["Generated cameras"] = _add_generated_cameras(server, results.generated, FRUSTUM_SIZE * size)
    for name, handles in layers.items():
        _add_toggle(server, name, handles if isinstance(handles, list) else [handles])
    _start_view(server, all_cameras, centre, size, up)
    return layers


def _add_toggle(server, name: str, handles: list) -> None:
    checkbox = server.gui.add_checkbox(name, initial_value=handles[0].visible)

    @checkbox.on_update
    def _(_event) -> None:
        for handle in handles:
            handle.visible = checkbox.value


def _add_poses_cameras(server, cameras: PosesDataset, scale: float) -> list:
    """A frustum per registered frame, its image as the thumbnail; a click moves the view there."""
    import cv2
    import imageio.v3 as iio

    frustums = []
    for index, (name, path) in enumerate(zip(cameras.names, cameras.paths)):
        image = iio.imread(path)[..., :3]
        factor = THUMBNAIL_SIDE / max(image.shape[:2])
        thumbnail = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        frustum = _add_frustum(
            server,
            f"/cameras/{index:05d}",
            cameras.cam_to_world[index],
            cameras.Ks[index],
            cameras.width,
            cameras.height,
            scale,
            CAMERA_COLOUR,
            thumbnail,
        )
        frustums.append(frustum)
    return frustums


def _add_generated_cameras(server, cameras: list[Camera], scale: float) -> list:
    frustums = []
    for index, camera in enumerate(cameras):
        width, height = camera.width or 2 * camera.K[0, 2], camera.height or 2 * camera.K[1, 2]  # K's frame size
        frustums.append(
            _add_frustum(
                server,
                f"/generated/{index:05d}",
                camera.cam_to_world,
                camera.K,
                width,
                height,
                scale,
                GENERATED_COLOUR,
                None,
            )
        )
    return frustums


def _add_frustum(
    server,
    name: str,
    cam_to_world: np.ndarray,
    K: np.ndarray,
    width: float,
    height: float,
    scale: float,
    colour: tuple[int, int, int],
    image: np.ndarray | None,
):
    # viser's frustums look along +z with +y down: OpenCV axes, as vid3d's cameras
    wxyz, position = rotation_to_wxyz(cam_to_world[:3, :3]), cam_to_world[:3, 3]
    frustum = server.scene.add_camera_frustum(
        name,
        fov=2 * np.arctan2(height / 2, K[1, 1]),
        aspect=width / height,
        scale=scale,
        color=colour,
        image=image,
        wxyz=wxyz,
        position=position,
        thickness=1.5,
        thickness_units="screen",
    )

    @frustum.on_click
    def _(event) -> None:
        event.client.camera.wxyz, event.client.camera.position = wxyz, position

    return frustum


def _camera_matrices(results: Results) -> np.ndarray:
    """[N, 4, 4] every camera of the project (poses/ first, then generated ones)."""
    matrices = [] if results.cameras is None else list(results.cameras.cam_to_world)
    matrices += [camera.cam_to_world for camera in results.generated or []]
    return np.array(matrices).reshape(-1, 4, 4)


def _scene_centre_and_size(results: Results, cameras: np.ndarray) -> tuple[np.ndarray, float]:
    """Where the object is (the Gaussians' opaque middle, else the mesh's, else the cameras') and how
    big the scene is (the cameras' distance from it, else the object's extent)."""
    if results.gaussians is not None:
        opaque = results.gaussians.centres[results.gaussians.opacities[:, 0] > 0.5]
        points = opaque if len(opaque) >= 10 else results.gaussians.centres
    elif results.mesh is not None:
        points = np.asarray(results.mesh.vertices)
    else:
        points = cameras[:, :3, 3]
    low, high = np.percentile(points, [5, 95], axis=0)
    centre = np.median(points, axis=0)
    if len(cameras):
        return centre, float(max(np.median(np.linalg.norm(cameras[:, :3, 3] - centre, axis=1)), 1e-3))
    return centre, float(max(np.linalg.norm(high - low), 1e-3))


def _start_view(server, cameras: np.ndarray, centre: np.ndarray, size: float, up: np.ndarray) -> None:
    """Behind the first camera, looking at the scene's centre, so the object and the cameras around
    it are in view; without cameras, from above one side of the scene."""
    view = server.initial_camera
    if len(cameras):
        view.position = centre + PULL_BACK * (cameras[0][:3, 3] - centre)
    else:
        view.position = centre + size * (horizontal_axes(up)[1] + 0.5 * up)
    view.look_at = centre
    view.up = up
    view.near, view.far = 0.01 * size, 100 * size
