"""What both Blender scripts of tests/test_blender.py set up alike (blender_render.py in Debian's
Blender 3.4, blender_usd_import.py in PyPI's bpy): Cycles on the CPU, unlit colours, RGBA out."""

import bpy


def render_settings(scene: bpy.types.Scene, width: int, height: int, samples: int) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    scene.world = bpy.data.worlds.new("black")
    scene.world.color = (0, 0, 0)
