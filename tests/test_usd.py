"""The USD scene and Nuke's camera.chan from a project made by hand (tests/usd_scene.py): usd-core
reads back the Gaussians, the textured mesh, the points and the cameras that went in (issue 25)."""

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from pxr import Gf, Usd, UsdGeom, UsdShade, UsdValidation, UsdVol
from scipy.spatial.transform import Rotation
from usd_scene import FPS, GAUSSIANS, HEIGHT, SH_DEGREE, STEP, WIDTH, export_usd, make_project, textured_cube

from vid3d.config import ExportSettings
from vid3d.export import ASSET_KINDS, FLAG_KINDS, read_mesh, requested_assets
from vid3d.export.usd import usd_intrinsics
from vid3d.poses import read_dataset
from vid3d.poses.dataset import flip_camera_axes
from vid3d.splats.model import read_splats


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("usd"))
    export_usd(root)
    return root


@pytest.fixture(scope="module")
def stage(project) -> Usd.Stage:
    return Usd.Stage.Open(str(project / "out" / "scene.usda"))


def test_usd_asks_for_its_parts_and_the_mesh_they_read_with_no_flags_of_their_own():
    names = [asset.name for asset in requested_assets(ExportSettings(mesh=False, usd=True))]
    assert names == ["mesh", "usd_mesh", "usd_gaussians", "usd_points", "usd_cameras", "usd"]
    assert all(kind.part_of == "usd" for kind in ASSET_KINDS.values() if kind not in FLAG_KINDS)
    for kind in ASSET_KINDS.values():  # a kind needs earlier rows: they are written before it
        assert all(list(ASSET_KINDS).index(need) < list(ASSET_KINDS).index(kind.name) for need in kind.needs)


def test_a_usd_part_is_rewritten_when_the_mesh_it_reads_changes_and_only_then():
    def fingerprints(**settings):
        assets = requested_assets(ExportSettings(usd=True, **settings))
        return {asset.name: asset.fingerprint("splats") for asset in assets}

    before, coarser = fingerprints(), fingerprints(voxel_size=0.1)
    changed = {name for name in before if before[name] != coarser[name]}
    assert changed == {"mesh", "usd_mesh", "usd"}


def test_the_scene_is_z_up_in_metres_with_a_default_prim_and_compliant(project, stage):
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetDefaultPrim().GetPath() == "/World"
    assert validation_errors(stage) == []
    unanchored = Usd.Stage.CreateInMemory()  # the validators do find errors: no default prim, up axis or units
    unanchored.DefinePrim("/World")
    assert {error.GetName() for error in validation_errors(unanchored)} == {
        "MissingDefaultPrim",
        "MissingUpAxisMetadata",
        "MissingMetersPerUnitMetadata",
    }


def validation_errors(stage: Usd.Stage) -> list:
    """What usdchecker reports: every validator of usd-core (UsdUtils.ComplianceChecker's successor)."""
    validators = UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
    return list(UsdValidation.ValidationContext(validators).Validate(stage))


def test_the_gaussians_are_splats_ply_with_the_schemas_activations(project, stage):
    splats = {k: v.detach().numpy() for k, v in read_splats(project / "splats").items()}
    prim = stage.GetPrimAtPath("/World/Gaussians/Splats")
    assert prim.IsA(UsdVol.ParticleField3DGaussianSplat)
    positions = np.array(UsdVol.ParticleFieldPositionAttributeAPI(prim).GetPositionsAttr().Get())
    assert positions.shape == (GAUSSIANS, 3) and np.allclose(positions, splats["means"])
    scales = np.array(UsdVol.ParticleFieldScaleAttributeAPI(prim).GetScalesAttr().Get())
    assert np.allclose(scales, np.exp(splats["scales"]), rtol=1e-5)
    opacities = np.array(UsdVol.ParticleFieldOpacityAttributeAPI(prim).GetOpacitiesAttr().Get())
    assert np.allclose(opacities, 1 / (1 + np.exp(-splats["opacities"])), atol=1e-6)
    quats = UsdVol.ParticleFieldOrientationAttributeAPI(prim).GetOrientationsAttr().Get()
    wxyz = np.array([[q.GetReal(), *q.GetImaginary()] for q in quats])
    assert np.allclose(wxyz, splats["quats"] / np.linalg.norm(splats["quats"], axis=1, keepdims=True), atol=1e-6)
    harmonics = UsdVol.ParticleFieldSphericalHarmonicsAttributeAPI(prim)
    assert harmonics.GetRadianceSphericalHarmonicsDegreeAttr().Get() == SH_DEGREE
    coefficients = np.array(harmonics.GetRadianceSphericalHarmonicsCoefficientsAttr().Get())
    assert np.allclose(coefficients.reshape(GAUSSIANS, -1, 3)[:, 0], splats["sh0"][:, 0])
    assert np.allclose(coefficients.reshape(GAUSSIANS, -1, 3)[:, 1:], splats["shN"])


def test_the_mesh_keeps_its_uvs_and_texture_through_a_preview_surface(project, stage):
    cube = textured_cube()
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/World/Mesh/Geometry"))
    assert len(mesh.GetFaceVertexCountsAttr().Get()) == len(cube.faces)
    st = np.array(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").Get())
    points = np.array(mesh.GetPointsAttr().Get())
    glb = read_mesh(project / "export" / "mesh.glb")
    assert np.allclose(points, glb.vertices) and np.allclose(st, glb.visual.uv, atol=1e-6)
    material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
    texture = UsdShade.Shader(material.GetPrim().GetChild("Texture"))
    path = texture.GetInput("file").Get().resolvedPath
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(cube.visual.material.baseColorTexture))


def test_a_vertex_coloured_mesh_becomes_display_colours(tmp_path):
    box = trimesh.creation.box((1, 1, 1))
    box.visual.vertex_colors = np.tile([[200, 100, 50, 255]], (len(box.vertices), 1))
    out = export_usd(make_project(tmp_path, box, "ply"), "ply")
    stage = Usd.Stage.Open(str(out / "scene.usda"))
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/World/Mesh/Geometry"))
    colours = np.array(mesh.GetDisplayColorAttr().Get())
    assert colours.shape == (8, 3) and np.allclose(colours, [200 / 255, 100 / 255, 50 / 255])
    assert not (out / "usd" / "mesh_texture.png").exists()
    assets = json.loads((out / "assets.json").read_text())
    assert assets["usd_mesh"]["files"] == ["usd/mesh.usdc"]  # the texture only when there is one


def test_a_textured_mesh_records_its_texture_as_a_file_of_the_usd_mesh(project):
    assets = json.loads((project / "out" / "assets.json").read_text())
    assert assets["usd_mesh"]["files"] == ["usd/mesh.usdc", "usd/mesh_texture.png"]
    assert assets["usd"]["files"] == ["scene.usda"] and assets["usd_gaussians"]["metrics"] == {"usd_gaussians": 50}


def test_the_sparse_points_keep_their_colours(project, stage):
    xyz, rgb = read_dataset(project / "poses").points()
    points = UsdGeom.Points(stage.GetPrimAtPath("/World/SparsePoints/Points"))
    assert np.allclose(np.array(points.GetPointsAttr().Get()), xyz)
    assert np.allclose(np.array(points.GetDisplayColorAttr().Get()), rgb / 255)


def project_with_usd(camera: UsdGeom.Camera, time, world: np.ndarray) -> np.ndarray:
    """Pixels (from the top-left corner) of world points through USD's own frustum of the camera."""
    frustum = camera.GetCamera(time).frustum
    view_projection = np.array(frustum.ComputeViewMatrix() * frustum.ComputeProjectionMatrix())
    clip = np.c_[world, np.ones(len(world))] @ view_projection  # row vectors
    ndc = clip[:, :2] / clip[:, 3:]
    return np.c_[(ndc[:, 0] + 1) / 2 * WIDTH, (1 - ndc[:, 1]) / 2 * HEIGHT]


def project_with_K(K: np.ndarray, cam_to_world: np.ndarray, world: np.ndarray) -> np.ndarray:
    camera = (world - cam_to_world[:3, 3]) @ cam_to_world[:3, :3]
    return (camera @ K.T)[:, :2] / camera[:, 2:]


def test_the_animated_camera_has_a_sample_per_frame_reproducing_each_cameras_K_and_pose(project, stage):
    poses = read_dataset(project / "poses")
    camera = UsdGeom.Camera(stage.GetPrimAtPath("/World/Cameras/Solved"))
    times = [STEP * int(Path(name).stem) for name in poses.names]  # frame i is the video's frame STEP * i
    assert camera.GetFocalLengthAttr().GetTimeSamples() == sorted(times)
    assert stage.GetTimeCodesPerSecond() == FPS and stage.GetEndTimeCode() == max(times)
    world = np.random.default_rng(1).uniform(-0.5, 0.5, (20, 3))
    for time, K, cam_to_world in zip(times, poses.Ks, poses.cam_to_world):
        assert np.allclose(usd_intrinsics(camera, WIDTH, HEIGHT, time), K, atol=1e-4)
        transform = np.array(camera.ComputeLocalToWorldTransform(time)).T
        assert np.allclose(transform, flip_camera_axes(cam_to_world), atol=1e-6)
        pixels = project_with_usd(camera, time, world)
        assert np.abs(pixels - project_with_K(K, cam_to_world, world)).max() < 1e-3
    near, far = camera.GetClippingRangeAttr().Get()
    depths = [(world - c[:3, 3]) @ c[:3, 2] for c in poses.cam_to_world]
    assert near < np.min(depths) and far > np.max(depths)


def test_every_camera_of_poses_is_also_a_static_camera(project, stage):
    poses = read_dataset(project / "poses")
    for name, K, cam_to_world in zip(poses.names, poses.Ks, poses.cam_to_world):
        camera = UsdGeom.Camera(stage.GetPrimAtPath(f"/World/Cameras/Frames/frame_{Path(name).stem}"))
        assert camera.GetFocalLengthAttr().GetNumTimeSamples() == 0
        assert np.allclose(usd_intrinsics(camera, WIDTH, HEIGHT), K, atol=1e-4)
        transform = np.array(camera.ComputeLocalToWorldTransform(Usd.TimeCode.Default())).T
        assert np.allclose(transform, flip_camera_axes(cam_to_world), atol=1e-6)


def test_nuke_chan_is_the_cameras_in_frame_order_with_zxy_rotations(project):
    poses = read_dataset(project / "poses")
    by_frame = {STEP * int(Path(name).stem): (K, c) for name, K, c in zip(poses.names, poses.Ks, poses.cam_to_world)}
    rows = np.loadtxt(project / "out" / "camera.chan")
    assert rows[:, 0].tolist() == sorted(by_frame)
    for frame, tx, ty, tz, rx, ry, rz, vertical_fov in rows:
        K, cam_to_world = by_frame[frame]
        opengl = flip_camera_axes(cam_to_world)
        assert np.allclose([tx, ty, tz], opengl[:3, 3], atol=1e-5)
        # Nuke's ZXY: rotate about z, then x, then y (world axes): R = Ry Rx Rz
        rotation = Rotation.from_euler("y", ry, degrees=True) * Rotation.from_euler("x", rx, degrees=True)
        rotation = rotation * Rotation.from_euler("z", rz, degrees=True)
        assert np.allclose(rotation.as_matrix(), opengl[:3, :3], atol=1e-5)
        assert vertical_fov == pytest.approx(np.degrees(2 * np.arctan(HEIGHT / 2 / K[1, 1])), abs=1e-5)


def test_gf_camera_reads_the_film_in_mm():
    camera = Gf.Camera()
    assert camera.horizontalAperture == pytest.approx(20.955)  # USD's default film back: its units are mm
