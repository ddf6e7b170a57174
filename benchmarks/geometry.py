"""Surfaces against the truth: the mesh of each splats setting on procedural scenes with true meshes.

    .venv/bin/python benchmarks/geometry.py [--scenes bundled,phone,thin,concave,floor]
                                            [--variants today,surface,...] [--set stage.key=value ...]
                                            [--reuse]

Each scene is rendered once into runs/geometry/ (frames and their true cameras). Each variant is a
fresh project: `vid3d reconstruct --preset fast --config configs/demo.toml` on the frames (COLMAP's
poses, as a user's; the mesh is aligned to the truth by the cameras, as `vid3d demo` does), then
`vid3d export --mesh` (ply, no texture). `--set` goes to every variant; `--reuse` measures the
projects already there again. A variant that differs from an earlier one only in export settings
re-exports a copy of its training.

Printed per scene and variant: Chamfer (% of the true surface's diagonal), precision, recall and
F-score at 1% of it and normal consistency, with both meshes cropped to the objects and half the
scene's extent round them (as `vid3d demo`'s summary); precision over the whole mesh; Chamfer and
F-score again with both surfaces also cut to the region export fuses (export.bbox = auto: the
surface's quality apart from how much of the scene the cameras observe); held-out PSNR, the
Gaussians, training seconds and export seconds.

Scenes: bundled (examples/orbit.json's scene and orbit, 256 px), phone (benchmarks/phone.py's scene 3
and handheld walk, 50 frames at 360x640), thin (poles and a slab), concave (a U of boxes round a
cylinder), floor (a low box on a floor seen from above, mostly ground).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import trimesh

from vid3d.cameras import write_cameras
from vid3d.export import mesh_path, read_mesh
from vid3d.export.mesh import observed_region
from vid3d.ingest import FramesIndex
from vid3d.metrics.mesh import chamfer_fscore, compare_to_truth, crop, sample_surface
from vid3d.metrics.poses import similarity
from vid3d.metrics.scene3d import scene_region  # the region `vid3d demo`'s summary crops to
from vid3d.poses import read_dataset
from vid3d.project import Project
from vid3d.scenes import Cameras, Primitive, Scene, make_scene, orbit_cameras, render
from vid3d.scenes.phone import handheld_path
from vid3d.splats.data import load_points

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path("runs/geometry")
SURFACE = ["splats.flatten_weight=100", "splats.normal_weight=0.05"]
VARIANTS = {
    "today": [],
    "flatten": SURFACE[:1],
    "surface": SURFACE,
    "surface+distortion": [*SURFACE, "splats.distortion_weight=100"],
    "strong": ["splats.flatten_weight=100", "splats.normal_weight=0.2", "splats.distortion_weight=1"],
    "surface+planar": [*SURFACE, "export.depth=planar"],
}


def bundled() -> tuple[Scene, Cameras]:
    truth = json.loads((ROOT / "examples" / "orbit.json").read_text())
    return make_scene(truth["scene_seed"]), orbit_cameras(truth["frames"], width=truth["width"], height=truth["height"])


def phone() -> tuple[Scene, Cameras]:
    walk = handheld_path(50, 3, walk_seconds=20.0)
    K = walk.K.copy()
    K[:, :2] *= 0.5
    return make_scene(3), Cameras(K, walk.cam_to_world, walk.width // 2, walk.height // 2)


def with_objects(seed: int, objects: list[Primitive], **changes) -> Scene:
    """Scene `seed`'s ground, light and sky with these objects (textures taken from scenes seed ...)."""
    scene = make_scene(seed)
    textures = [t for s in range(seed, seed + 3) for t in make_scene(s, n_objects=4).textures[1:]]
    return dataclasses.replace(
        scene, objects=objects, textures=[scene.textures[0], *textures[: len(objects)]], **changes
    )


def thin() -> tuple[Scene, Cameras]:
    poles = [
        Primitive("cylinder", np.array([x, y, 0.0]), np.array([0.04, 0.04, 1.1]), 0.0)
        for x, y in ((-0.5, -0.3), (0.1, 0.5), (0.6, -0.2))
    ]
    slab = Primitive("box", np.array([0.0, -0.6, 0.35]), np.array([0.5, 0.03, 0.35]), 0.3)
    return with_objects(5, [*poles, slab]), orbit_cameras(60)


def concave() -> tuple[Scene, Cameras]:
    walls = [
        Primitive("box", np.array([0.0, 0.55, 0.3]), np.array([0.6, 0.06, 0.3]), 0.0),
        Primitive("box", np.array([-0.55, 0.0, 0.3]), np.array([0.06, 0.5, 0.3]), 0.0),
        Primitive("box", np.array([0.55, 0.0, 0.3]), np.array([0.06, 0.5, 0.3]), 0.0),
    ]
    inner = Primitive("cylinder", np.array([0.0, 0.05, 0.0]), np.array([0.18, 0.18, 0.4]), 0.0)
    return with_objects(7, [*walls, inner]), orbit_cameras(60, elevation_deg=35.0)


def floor() -> tuple[Scene, Cameras]:
    box = Primitive("box", np.array([0.3, -0.2, 0.12]), np.array([0.25, 0.2, 0.12]), 0.5)
    return with_objects(9, [box]), orbit_cameras(60, radius=4.0, elevation_deg=55.0, look_at=(0.0, 0.0, 0.0))


SCENES = {"bundled": bundled, "phone": phone, "thin": thin, "concave": concave, "floor": floor}


def frames(name: str) -> tuple[Path, Path]:
    """The scene's frames folder and cameras file, rendered once."""
    folder, cameras_file = RUNS / name / "frames", RUNS / name / "cameras.json"
    if not cameras_file.exists():
        print(f"rendering {name} ...", flush=True)
        scene, cameras = SCENES[name]()
        shot = render(scene, cameras)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(shot.images):
            iio.imwrite(folder / f"{i:05d}.png", image)
        write_cameras(cameras_file, cameras.as_cameras())
    return folder, cameras_file


def vid3d(*args: str) -> float:
    began = time.time()
    result = subprocess.run([sys.executable, "-m", "vid3d.cli", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"vid3d {' '.join(args[:2])} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return time.time() - began


def measure(name: str, variant: str, overrides: list[str], trained: dict[tuple, Path], reuse: bool = False) -> dict:
    """One variant's figures; `trained` maps the training settings of this scene's projects so far
    to their folders: a variant that differs from one only in export settings copies its training.
    `reuse`: measure the project's mesh as it is, when it has one."""
    project = RUNS / name / "projects" / variant
    if not (reuse and (project / "export").is_dir()):
        train_and_export(name, variant, overrides, trained, project)
    p = Project(project)
    scene, cameras = SCENES[name]()
    poses = read_dataset(p.stage_dir("poses"))
    source = {e.file: int(Path(e.source).stem) for e in FramesIndex.read(p.stage_dir("frames")).frames}
    true = cameras.cam_to_world[[source[n] for n in poses.names]]
    mesh = read_mesh(mesh_path(p.stage_dir("export")))
    accuracy = compare_to_truth(mesh, poses.cam_to_world, true, scene.mesh(), scene_region(scene))
    fused = observed_region(load_points(p.stage_dir("poses"))[0])
    splats = json.loads((p.stage_dir("splats") / "metrics.json").read_text())
    stages = p.manifest()["stages"]
    return {
        **accuracy,
        **in_fused_region(mesh, poses.cam_to_world, true, scene, fused),
        "psnr": splats["psnr"],
        "gaussians": splats["gaussians"],
        "train_s": splats["train_seconds"],
        "export_s": sum(stages["export"].get("timings", {}).values()),
    }


def train_and_export(name: str, variant: str, overrides: list[str], trained: dict[tuple, Path], project: Path) -> None:
    folder, _ = frames(name)
    shutil.rmtree(project, ignore_errors=True)
    settings = [*VARIANTS[variant], *overrides]
    splat_sets = [a for o in settings if not o.startswith("export.") for a in ("--set", o)]
    export_sets = [a for o in settings if o.startswith("export.") for a in ("--set", o)]
    key = (name, *splat_sets)
    if key in trained:
        shutil.copytree(trained[key], project)
    else:
        vid3d(
            "reconstruct", str(project), "--input", str(folder), "--preset", "fast",
            "--config", str(ROOT / "configs" / "demo.toml"), "--set", "frames.count=1000", *splat_sets,
        )  # fmt: skip
        trained[key] = project
    vid3d(
        "export",
        str(project),
        "--mesh",
        "--set",
        "export.mesh_format=ply",
        "--set",
        "export.texture_size=0",
        *export_sets,
    )


def in_fused_region(mesh, estimated: np.ndarray, true: np.ndarray, scene: Scene, fused) -> dict[str, float]:
    """Chamfer and F-score at 1% with both surfaces cut to the objects' box and to the region export
    fuses (export.bbox = auto, the sparse points' hull): the surface's quality where there is one,
    apart from how much of the scene the cameras observe."""
    scale, rotation, translation = similarity(estimated[:, :3, 3], true[:, :3, 3])
    truth = scene.mesh()
    diagonal = float(np.linalg.norm(truth.bounds[1] - truth.bounds[0]))
    predicted = sample_surface(
        trimesh.Trimesh(scale * np.asarray(mesh.vertices) @ rotation.T + translation, mesh.faces, process=False),
        200_000,
    )
    true_points = sample_surface(truth, 200_000)
    box = scene_region(scene)

    def keep(points):
        points = crop(points, box)
        return points[fused.contains((points - translation) @ rotation / scale)]

    result = chamfer_fscore(keep(predicted), keep(true_points), threshold=0.01 * diagonal)
    return {"chamfer_fused": result["chamfer"] / diagonal, "fscore_fused": result["fscore"]}


COLUMNS = [
    ("Chamfer %", lambda r: f"{100 * r['chamfer_fraction']:.3f}"),
    ("precision", lambda r: f"{r['precision']:.3f}"),
    ("recall", lambda r: f"{r['recall']:.3f}"),
    ("F@1%", lambda r: f"{r['fscore_1pct']:.3f}"),
    ("normals", lambda r: f"{r['normal_consistency']:.3f}"),
    ("precision all", lambda r: f"{r['precision_all']:.3f}"),
    ("Chamfer % fused", lambda r: f"{100 * r['chamfer_fused']:.3f}"),
    ("F@1% fused", lambda r: f"{r['fscore_fused']:.3f}"),
    ("PSNR", lambda r: f"{r['psnr']:.2f}"),
    ("Gaussians", lambda r: f"{r['gaussians']:,}"),
    ("train s", lambda r: f"{r['train_s']:.0f}"),
    ("export s", lambda r: f"{r['export_s']:.0f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default=",".join(SCENES))
    parser.add_argument("--variants", default="today,surface")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--reuse", action="store_true", help="measure existing projects' meshes again")
    args = parser.parse_args()
    print(f"| scene | variant | {' | '.join(c for c, _ in COLUMNS)} |")
    print(f"|---|---|{'---|' * len(COLUMNS)}")
    results, trained = {}, {}
    for name in args.scenes.split(","):
        for variant in args.variants.split(","):
            result = measure(name, variant, args.overrides, trained, args.reuse)
            results[f"{name}/{variant}"] = result
            print(f"| {name} | {variant} | {' | '.join(f(result) for _, f in COLUMNS)} |", flush=True)
    (RUNS / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
