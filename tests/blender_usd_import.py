"""Blender's own USD importer on export's scene.usda (tests/test_blender.py): Blender 5 as a Python
module (PyPI's `bpy`, in .venv-blender: it needs numpy<2), which, unlike Debian's Blender 3.4, is
built with USD.

    .venv-blender/bin/python tests/blender_usd_import.py JOB.json

JOB.json: {"scene": scene.usda, "camera": the camera prim's name ("Solved"), "frames": [frame
numbers], "width", "height", "samples", "out": a folder for frame_<n>.png (RGBA)}. Each imported
material is shown by its base colour alone (an emission shader, the Standard view transform) so
that its pixels compare with vid3d's view of the mesh.
"""

import json
import sys
from pathlib import Path

import bpy

sys.path.append(str(Path(__file__).parent))  # Blender runs this file as a script
from blender_scene import render_settings

job = json.loads(Path(sys.argv[1]).read_text())


def flat_materials() -> None:
    """Every material emits what feeds its base colour (the USD texture), unlit."""
    for material in bpy.data.materials:
        if not material.use_nodes:
            continue
        nodes, links = material.node_tree.nodes, material.node_tree.links
        images = [node for node in nodes if node.type == "TEX_IMAGE"]
        colour = images[0].outputs["Color"] if images else None
        if colour is None:
            attributes = [node for node in nodes if node.type == "ATTRIBUTE"]
            colour = attributes[0].outputs["Color"] if attributes else None
        output = next(node for node in nodes if node.type == "OUTPUT_MATERIAL")
        emission = nodes.new("ShaderNodeEmission")
        if colour is not None:
            links.new(colour, emission.inputs["Color"])
        links.new(emission.outputs["Emission"], output.inputs["Surface"])


def main() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = bpy.ops.wm.usd_import(filepath=job["scene"], set_frame_range=True)
    if result != {"FINISHED"}:
        raise SystemExit(f"usd_import: {result}")
    scene = bpy.context.scene
    cameras = [obj for obj in scene.objects if obj.type == "CAMERA" and obj.name == job["camera"]]
    if not cameras:
        raise SystemExit(
            f"no camera {job['camera']!r} among {[o.name for o in scene.objects if o.type == 'CAMERA'][:5]}"
        )
    scene.camera = cameras[0]
    print("imported:", json.dumps({kind: sum(o.type == kind for o in scene.objects) for kind in ("MESH", "CAMERA")}))
    flat_materials()
    render_settings(scene, job["width"], job["height"], job["samples"])
    for frame in job["frames"]:
        scene.frame_set(frame)
        scene.render.filepath = str(Path(job["out"]) / f"frame_{frame}.png")
        bpy.ops.render.render(write_still=True)


main()
