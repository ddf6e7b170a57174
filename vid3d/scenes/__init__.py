"""Deterministic procedural 3D scenes with an analytic CPU ray caster.

scene = make_scene(seed)
cams = orbit_cameras(24)
out = render(scene, cams)      # images, z-depth, mask
gt = scene.mesh()              # ground-truth trimesh with vertex colours
"""

from .cameras import Cameras, intrinsics, orbit_cameras
from .primitives import Primitive
from .procedural import Scene, Texture, make_scene
from .render import Render, render

__all__ = ["Cameras", "Primitive", "Render", "Scene", "Texture", "intrinsics", "make_scene", "orbit_cameras", "render"]
