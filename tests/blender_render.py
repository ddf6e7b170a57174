"""Blender's side of tests/test_blender.py: load an exported mesh, put a camera where export's USD
scene says the solved camera is at some frames, and render each with Cycles on the CPU.

    blender -b --factory-startup --python tests/blender_render.py -- JOB.json

JOB.json: {"site_packages": where usd-core (pxr) and numpy are, "scene": scene.usda, "mesh": a glb
(Blender's glTF importer) or "usd" (the mesh prim of the scene, built here), "times": [time codes],
"width", "height", "samples", "out": a folder for time_<t>.png (RGBA)}.

Debian's Blender 3.4 is built without USD (no wm.usd_import), so the scene is read with usd-core
inside Blender's Python (the same Python 3.11). The mesh is shown by its colour alone (an emission
shader, the Standard view transform) so that its pixels compare with the source frames.
"""

import json
import sys
from pathlib import Path

import bpy

sys.path.append(str(Path(__file__).parent))  # Blender runs this file as a script
from blender_scene import render_settings
from mathutils import Matrix

job = json.loads(Path(sys.argv[sys.argv.index("--") + 1]).read_text())
sys.path.append(job["site_packages"])
import numpy as np
from pxr import Usd, UsdGeom, UsdShade


def emission_material(name: str, colour_node: str, **settings) -> bpy.types.Material:
    """A material emitting its colour node's colour (an image texture or a colour attribute)."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    colour = nodes.new(colour_node)
    for key, value in settings.items():
        setattr(colour, key, value)
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(colour.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def import_glb(path: str) -> None:
    """The glTF importer's mesh, its base-colour texture (or vertex colours) as emission."""
    bpy.ops.import_scene.gltf(filepath=path)  # glTF's y up becomes Blender's z up: transforms.json's world
    for obj in bpy.context.scene.objects:
        for slot in getattr(obj, "material_slots", []):
            images = [node for node in slot.material.node_tree.nodes if node.type == "TEX_IMAGE"]
            if images:
                slot.material = emission_material("flat", "ShaderNodeTexImage", image=images[0].image)


def build_usd_mesh(stage: Usd.Stage) -> None:
    """The scene's mesh prim as a Blender mesh: st and the material's texture, or displayColor."""
    prim = next(p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh))
    usd_mesh = UsdGeom.Mesh(prim)
    points = np.array(usd_mesh.GetPointsAttr().Get(), dtype=np.float32)
    indices = np.array(usd_mesh.GetFaceVertexIndicesAttr().Get(), dtype=np.int32)
    mesh = bpy.data.meshes.new("usd_mesh")
    mesh.vertices.add(len(points))
    mesh.vertices.foreach_set("co", points.ravel())
    mesh.loops.add(len(indices))
    mesh.loops.foreach_set("vertex_index", indices)
    mesh.polygons.add(len(indices) // 3)
    mesh.polygons.foreach_set("loop_start", np.arange(0, len(indices), 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(indices) // 3, 3, dtype=np.int32))
    primvars = UsdGeom.PrimvarsAPI(usd_mesh)
    st = primvars.GetPrimvar("st")
    if st and st.HasValue():
        uv = mesh.uv_layers.new(name="st")
        uv.data.foreach_set("uv", np.array(st.Get(), dtype=np.float32)[indices].ravel())
        material_prim, _ = UsdShade.MaterialBindingAPI(prim).ComputeBoundMaterial()
        texture = next(UsdShade.Shader(p) for p in Usd.PrimRange(material_prim.GetPrim()) if p.GetName() == "Texture")
        image = bpy.data.images.load(texture.GetInput("file").Get().resolvedPath)
        material = emission_material("flat", "ShaderNodeTexImage", image=image)
    else:
        colours = np.array(usd_mesh.GetDisplayColorAttr().Get(), dtype=np.float32)
        attribute = mesh.color_attributes.new("displayColor", "FLOAT_COLOR", "POINT")
        attribute.data.foreach_set("color", np.c_[srgb_to_linear(colours), np.ones(len(colours))].ravel())
        material = emission_material("flat", "ShaderNodeAttribute", attribute_name="displayColor")
    mesh.validate()
    mesh.materials.append(material)
    bpy.context.scene.collection.objects.link(bpy.data.objects.new("usd_mesh", mesh))


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """displayColor holds the 8-bit colours / 255 (sRGB); Blender's float colours are linear."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def solved_camera(stage: Usd.Stage, time: float) -> bpy.types.Object:
    """A Blender camera from the scene's animated camera at `time`: film and lens in mm, the
    aperture offsets as shifts (fractions of the film width, the larger side here)."""
    usd = UsdGeom.Camera(stage.GetPrimAtPath("/World/Cameras/Solved"))
    width, height = job["width"], job["height"]
    h_aperture = usd.GetHorizontalApertureAttr().Get(time)
    v_aperture = usd.GetVerticalApertureAttr().Get(time)
    if width < height or abs(h_aperture / width - v_aperture / height) > 1e-4 * h_aperture / width:
        raise SystemExit("blender_render.py: square pixels and width >= height only")
    data = bpy.data.cameras.new("solved")
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = h_aperture
    data.lens = usd.GetFocalLengthAttr().Get(time)
    data.shift_x = usd.GetHorizontalApertureOffsetAttr().Get(time) / h_aperture
    data.shift_y = usd.GetVerticalApertureOffsetAttr().Get(time) / h_aperture
    data.clip_start, data.clip_end = usd.GetClippingRangeAttr().Get(time)
    camera = bpy.data.objects.new("solved", data)
    # USD's row-vector matrix, transposed; Blender's camera looks along -z with y up, as USD's
    camera.matrix_world = Matrix(np.array(usd.ComputeLocalToWorldTransform(time)).T.tolist())
    bpy.context.scene.collection.objects.link(camera)
    return camera


def main() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    stage = Usd.Stage.Open(job["scene"])
    if job["mesh"] == "usd":
        build_usd_mesh(stage)
    else:
        import_glb(job["mesh"])
    render_settings(bpy.context.scene, job["width"], job["height"], job["samples"])
    out = Path(job["out"])
    for time in job["times"]:
        bpy.context.scene.camera = solved_camera(stage, time)
        bpy.context.scene.render.filepath = str(out / f"time_{time:g}.png")
        bpy.ops.render.render(write_still=True)


main()
