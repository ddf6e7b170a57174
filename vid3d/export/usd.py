"""The USD scene: scene.usda and a layer per part in usd/, each an asset row of ASSET_KINDS.

The world is poses/transforms.json's: z up (nerfstudio turns COLMAP's y-down world so that z is
up, as well as the first camera allows), hence upAxis Z. Its scale is structure from motion's,
arbitrary unless the cameras were known: metersPerUnit is 1, a world unit read as a metre.

Parts: the mesh (UsdGeom.Mesh with its st primvar and a UsdPreviewSurface reading its texture, or
vertex colours as displayColor), the Gaussians (UsdVol.ParticleField3DGaussianSplat with linear
scales, opacities in [0, 1], normalised quaternions and the SH coefficients of each Gaussian in
gsplat's order, degree by degree), the sparse points (UsdGeom.Points) and the cameras (one animated
camera, a time sample per source frame at the source's frame rate, and every camera of poses/ as
a static one). Camera film units: the horizontal aperture is FILM_WIDTH_MM whatever the image size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from pxr import Gf, Sdf, Tf, Usd, UsdGeom, UsdShade, UsdVol, Vt

from vid3d.export import Asset, read_mesh
from vid3d.export.cameras import frame_times
from vid3d.poses import PosesDataset, read_dataset
from vid3d.poses.dataset import flip_camera_axes

UP_AXIS = UsdGeom.Tokens.z
METERS_PER_UNIT = 1.0
FILM_WIDTH_MM = 36.0  # a full-frame film back; the focal length follows from it and fx
TEXTURE_FILE = "mesh_texture.png"  # in usd/, beside mesh.usdc
ROOT = "World"
DEFAULT_TIME = Usd.TimeCode.Default()  # a value that is not animated
PART_PRIMS = {"usd_mesh": "Mesh", "usd_gaussians": "Gaussians", "usd_points": "SparsePoints", "usd_cameras": "Cameras"}


def new_stage(path: Path, root: str) -> tuple[Usd.Stage, Usd.Prim]:
    """A stage in the transforms.json world with an Xform `root` as its default prim."""
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UP_AXIS)
    UsdGeom.SetStageMetersPerUnit(stage, METERS_PER_UNIT)
    prim = UsdGeom.Xform.Define(stage, f"/{root}").GetPrim()
    stage.SetDefaultPrim(prim)
    return stage, prim


def write(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    """scene.usda: a /World with a child referencing each part's layer, and the cameras' time range."""
    stage, world = new_stage(out_dir / asset.files[0], ROOT)
    for part in asset.needs:
        layer = part.files[0]
        child = stage.DefinePrim(world.GetPath().AppendChild(PART_PRIMS[part.name]))
        child.GetReferences().AddReference(f"./{layer}")
        if part.name == "usd_cameras":
            cameras = Usd.Stage.Open(str(out_dir / layer))
            for key in ("startTimeCode", "endTimeCode", "timeCodesPerSecond", "framesPerSecond"):
                stage.SetMetadata(key, cameras.GetMetadata(key))
    stage.GetRootLayer().Save()
    return {}


# -- the mesh -------------------------------------------------------------------------------------
def write_mesh(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    (mesh_asset,) = asset.needs
    mesh = read_mesh(out_dir / mesh_asset.files[0])
    write_mesh_layer(mesh, out_dir / asset.files[0])
    return {}


def mesh_texture(mesh: trimesh.Trimesh):
    """The mesh's texture image (PIL) when it has UVs and one, else None."""
    if not isinstance(mesh.visual, trimesh.visual.TextureVisuals) or mesh.visual.uv is None:
        return None
    material = mesh.visual.material
    return getattr(material, "baseColorTexture", None) or getattr(material, "image", None)


def write_mesh_layer(mesh: trimesh.Trimesh, path: Path) -> None:
    """A layer with /Mesh: textured (st and a UsdPreviewSurface; the image beside it) or vertex-coloured."""
    stage, root = new_stage(path, PART_PRIMS["usd_mesh"])
    geometry = UsdGeom.Mesh.Define(stage, root.GetPath().AppendChild("Geometry"))
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    geometry.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(vertices))
    geometry.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(mesh.faces), 3, dtype=np.int32)))
    geometry.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.asarray(mesh.faces, dtype=np.int32).ravel()))
    geometry.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    geometry.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([vertices.min(0), vertices.max(0)])))
    primvars = UsdGeom.PrimvarsAPI(geometry)
    texture = mesh_texture(mesh)
    if texture is not None:
        # trimesh's uv origin is the image's bottom-left (it flips glTF's on load), as USD's st
        st = primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
        st.Set(Vt.Vec2fArray.FromNumpy(np.asarray(mesh.visual.uv, dtype=np.float32)))
        texture.convert("RGB").save(path.parent / TEXTURE_FILE)
        material = textured_material(stage, root.GetPath().AppendChild("Material"), f"./{TEXTURE_FILE}")
        UsdShade.MaterialBindingAPI.Apply(geometry.GetPrim()).Bind(material)
    else:
        colours = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float32) / 255
        display = primvars.CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex)
        display.Set(Vt.Vec3fArray.FromNumpy(colours))
    stage.GetRootLayer().Save()


def textured_material(stage: Usd.Stage, path: Sdf.Path, texture_file: str) -> UsdShade.Material:
    """UsdPreviewSurface with its diffuse colour from the texture at the st primvar (USD's own recipe)."""
    material = UsdShade.Material.Define(stage, path)
    surface = UsdShade.Shader.Define(stage, path.AppendChild("Surface"))
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)
    surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    reader = UsdShade.Shader.Define(stage, path.AppendChild("st"))
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    image = UsdShade.Shader.Define(stage, path.AppendChild("Texture"))
    image.CreateIdAttr("UsdUVTexture")
    image.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(texture_file)
    image.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
    image.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
    rgb = image.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(rgb)
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    return material


# -- the Gaussians --------------------------------------------------------------------------------
def write_gaussians(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    write_gaussians_layer({k: v.detach().cpu().numpy() for k, v in splats.items()}, out_dir / asset.files[0])
    return {"usd_gaussians": len(splats["means"])}


def write_gaussians_layer(splats: dict[str, np.ndarray], path: Path) -> None:
    """The schema's activated values from vid3d's parameters: exp of the log-scales, sigmoid of the
    opacity logits, unit quaternions (vid3d's wxyz; Vt.QuatfArray's memory order is xyzw)."""
    stage, root = new_stage(path, PART_PRIMS["usd_gaussians"])
    field = UsdVol.ParticleField3DGaussianSplat.Define(stage, root.GetPath().AppendChild("Splats"))
    prim = field.GetPrim()
    means = splats["means"].astype(np.float32)
    quats = splats["quats"] / np.linalg.norm(splats["quats"], axis=1, keepdims=True)
    sh = np.concatenate([splats["sh0"], splats["shN"]], axis=1).astype(np.float32)  # [N, (degree+1)^2, 3]
    degree = math.isqrt(sh.shape[1]) - 1
    UsdVol.ParticleFieldPositionAttributeAPI(prim).CreatePositionsAttr(Vt.Vec3fArray.FromNumpy(means))
    UsdVol.ParticleFieldOrientationAttributeAPI(prim).CreateOrientationsAttr(
        Vt.QuatfArray.FromNumpy(np.ascontiguousarray(quats[:, [1, 2, 3, 0]], dtype=np.float32))
    )
    UsdVol.ParticleFieldScaleAttributeAPI(prim).CreateScalesAttr(
        Vt.Vec3fArray.FromNumpy(np.exp(splats["scales"]).astype(np.float32))
    )
    UsdVol.ParticleFieldOpacityAttributeAPI(prim).CreateOpacitiesAttr(
        Vt.FloatArray.FromNumpy((1 / (1 + np.exp(-splats["opacities"]))).astype(np.float32))
    )
    harmonics = UsdVol.ParticleFieldSphericalHarmonicsAttributeAPI(prim)
    harmonics.CreateRadianceSphericalHarmonicsDegreeAttr(degree)
    harmonics.CreateRadianceSphericalHarmonicsCoefficientsAttr(Vt.Vec3fArray.FromNumpy(sh.reshape(-1, 3)))
    field.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([means.min(0), means.max(0)])))
    stage.GetRootLayer().Save()


# -- the sparse points ----------------------------------------------------------------------------
def write_points(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    xyz, rgb = read_dataset(poses_dir).points()
    stage, root = new_stage(out_dir / asset.files[0], PART_PRIMS["usd_points"])
    points = UsdGeom.Points.Define(stage, root.GetPath().AppendChild("Points"))
    points.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(xyz))
    points.CreateDisplayColorAttr(Vt.Vec3fArray.FromNumpy(rgb.astype(np.float32) / 255))
    points.GetDisplayColorPrimvar().SetInterpolation(UsdGeom.Tokens.vertex)
    scale = float(np.median(np.linalg.norm(xyz - np.median(xyz, 0), axis=1))) if len(xyz) else 1.0
    points.CreateWidthsAttr(Vt.FloatArray([scale / 100]))  # one width for all: 1% of the cloud's size
    points.SetWidthsInterpolation(UsdGeom.Tokens.constant)
    points.CreateExtentAttr(UsdGeom.PointBased.ComputeExtent(Vt.Vec3fArray.FromNumpy(xyz)))
    stage.GetRootLayer().Save()
    return {"usd_points": len(xyz)}


# -- the cameras ----------------------------------------------------------------------------------
def write_cameras(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    poses = read_dataset(poses_dir)
    times, fps = frame_times(poses, poses_dir.parent / "frames")
    xyz, _ = poses.points()
    write_cameras_layer(poses, times, fps, clipping_range(poses, xyz), out_dir / asset.files[0])
    return {"usd_camera_samples": len(times)}


def clipping_range(poses: PosesDataset, xyz: np.ndarray) -> tuple[float, float]:
    """Near and far around the sparse points' depths in every camera (a margin of 2x each way)."""
    world_to_cam = np.linalg.inv(poses.cam_to_world)
    depths = (np.einsum("nij,pj->npi", world_to_cam[:, :3, :3], xyz) + world_to_cam[:, None, :3, 3])[..., 2]
    depths = depths[depths > 0]
    if len(depths) == 0:
        return 0.01, 1000.0
    return float(np.percentile(depths, 1) / 2), float(depths.max() * 2)


def set_pose(camera: UsdGeom.Camera, cam_to_world_opencv: np.ndarray, time=DEFAULT_TIME) -> None:
    """USD's camera looks along -z with y up (OpenGL's axes): a translate and an orient op, which
    USD interpolates between time samples as a rigid motion (slerp), unlike a matrix."""
    matrix = flip_camera_axes(cam_to_world_opencv)
    ops = {op.GetOpType(): op for op in camera.GetOrderedXformOps()}
    translate = ops.get(UsdGeom.XformOp.TypeTranslate) or camera.AddTranslateOp(UsdGeom.XformOp.PrecisionDouble)
    orient = ops.get(UsdGeom.XformOp.TypeOrient) or camera.AddOrientOp(UsdGeom.XformOp.PrecisionDouble)
    translate.Set(Gf.Vec3d(*matrix[:3, 3]), time)
    orient.Set(Gf.Matrix3d(matrix[:3, :3].T.tolist()).ExtractRotation().GetQuat(), time)


def set_intrinsics(camera: UsdGeom.Camera, K: np.ndarray, width: int, height: int, time=DEFAULT_TIME):
    """Focal length and apertures in mm from K: a pixel is FILM_WIDTH_MM / width wide and
    fx / fy times as tall (one focal length serves both); the offsets put the principal point at
    (cx, cy) (pixels from the top-left corner; USD's film y is up)."""
    pixel_x = FILM_WIDTH_MM / width
    pixel_y = pixel_x * K[0, 0] / K[1, 1]
    values = {
        camera.GetFocalLengthAttr(): K[0, 0] * pixel_x,
        camera.GetHorizontalApertureAttr(): width * pixel_x,
        camera.GetVerticalApertureAttr(): height * pixel_y,
        camera.GetHorizontalApertureOffsetAttr(): (width / 2 - K[0, 2]) * pixel_x,
        camera.GetVerticalApertureOffsetAttr(): (K[1, 2] - height / 2) * pixel_y,
    }
    for attribute, value in values.items():
        attribute.Set(float(value), time)


def usd_intrinsics(camera: UsdGeom.Camera, width: int, height: int, time=DEFAULT_TIME) -> np.ndarray:
    """K from a USD camera's film (set_intrinsics' inverse)."""
    focal, h_aperture, v_aperture, h_offset, v_offset = (
        attribute.Get(time)
        for attribute in (
            camera.GetFocalLengthAttr(),
            camera.GetHorizontalApertureAttr(),
            camera.GetVerticalApertureAttr(),
            camera.GetHorizontalApertureOffsetAttr(),
            camera.GetVerticalApertureOffsetAttr(),
        )
    )
    pixel_x, pixel_y = h_aperture / width, v_aperture / height
    cx, cy = width / 2 - h_offset / pixel_x, height / 2 + v_offset / pixel_y
    return np.array([[focal / pixel_x, 0, cx], [0, focal / pixel_y, cy], [0, 0, 1]])


def write_cameras_layer(
    poses: PosesDataset, times: list[float], fps: float, clipping: tuple[float, float], path: Path
) -> None:
    """/Cameras/Solved: a time sample per camera of poses/ at its frame's time; /Cameras/Frames/frame_STEM:
    each camera of poses/ on its own."""
    stage, root = new_stage(path, PART_PRIMS["usd_cameras"])
    stage.SetTimeCodesPerSecond(fps)
    stage.SetFramesPerSecond(fps)
    stage.SetStartTimeCode(min(times))
    stage.SetEndTimeCode(max(times))
    solved = UsdGeom.Camera.Define(stage, root.GetPath().AppendChild("Solved"))
    for time, K, cam_to_world in sorted(zip(times, poses.Ks, poses.cam_to_world), key=lambda item: item[0]):
        set_pose(solved, cam_to_world, time)
        set_intrinsics(solved, K, poses.width, poses.height, time)
    frames = UsdGeom.Scope.Define(stage, root.GetPath().AppendChild("Frames"))
    for name, K, cam_to_world in zip(poses.names, poses.Ks, poses.cam_to_world):
        camera = UsdGeom.Camera.Define(
            stage, frames.GetPath().AppendChild(Tf.MakeValidIdentifier(f"frame_{Path(name).stem}"))
        )
        set_pose(camera, cam_to_world)
        set_intrinsics(camera, K, poses.width, poses.height)
        camera.GetPrim().SetDocumentation(f"poses/images/{name}")
    for camera in (solved, *(UsdGeom.Camera(prim) for prim in frames.GetPrim().GetChildren())):
        camera.CreateClippingRangeAttr(Gf.Vec2f(*clipping))
        camera.CreateProjectionAttr(UsdGeom.Tokens.perspective)
    stage.GetRootLayer().Save()
