"""Export: assets from the trained Gaussians, in the world frame of poses/transforms.json.

ASSET_KINDS is the table of what export writes: mesh (mesh.py: TSDF fusion of rendered depth),
splat (splat.py: the Gaussians, through gsplat.exporter), point cloud (pointcloud.py: Gaussian
centres, outliers removed), the camera path (cameras.py: poses_cameras.json, nerfstudio's
camera_path.json and Nuke's camera.chan) and one USD scene (usd.py: scene.usda referencing a layer
per part, each part a row of its own). `vid3d export`'s flags are made from it. A new kind of asset is a row here (its
[export] settings in config.ExportSettings) and a module with its write().

Exports accumulate in export/: each asset has its own fingerprint (its own settings and the
splats it was made from) and is rewritten only when that changes or with --force; assets made
from older splats are dropped. export/.stage.json records what made each file.

This module imports no torch, open3d or gsplat: the command line reads the table at start-up.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vid3d.config import ExportSettings
from vid3d.errors import UserError
from vid3d.project import Project, StageOutput, fingerprint
from vid3d.ui import log

if TYPE_CHECKING:  # numpy loads in parse_bbox: a cached rerun plans the assets without it
    import numpy as np

MESH_STEM = "mesh"  # mesh.ply, mesh.obj or mesh.glb
USD_DIR = "usd"  # the USD scene's layers; scene.usda beside it references them


@dataclass(frozen=True)
class AssetKind:
    """A row of ASSET_KINDS. The [export] setting named `name` asks for it (true, or a comma-separated
    list of its `formats`), as does the flag --NAME made from this row; the module `writer` of
    vid3d.export makes its files with write(asset, splats, poses_dir, out_dir, device) -> metrics
    ("module:function" names another function than write).

    A part of another kind (`part_of`) has no setting or flag: that kind's setting asks for it. A kind
    that `needs` others reads their files from out_dir: they are built along with it (earlier rows
    of the table) and their settings enter its fingerprint."""

    name: str
    help: str  # of the flag --NAME
    writer: str
    files: tuple[str, ...] = ()  # formatted with its settings: "mesh.{mesh_format}"; the first always written
    settings: tuple[str, ...] = ()  # the [export] settings it is made with: a change rewrites it
    flags: dict[str, str] = field(default_factory=dict)  # `vid3d export` flags for those settings: flag -> setting
    # Kinds written in several formats at once (format -> file): each format is an asset of its own,
    # NAME.FORMAT, and the flag takes one format (repeatable).
    formats: dict[str, str] = field(default_factory=dict)
    part_of: str = ""  # the kind whose setting asks for this one
    needs: tuple[str, ...] = ()  # kinds (without formats) whose files this one reads

    def assets(self, settings: ExportSettings) -> list[Asset]:
        """What the settings ask for of this kind."""
        asked = getattr(settings, self.part_of or self.name)
        if self.formats:
            return [
                Asset(f"{self.name}.{f}", (self.formats[f],), {"format": f}, self.writer)
                for f in self.chosen_formats(asked)
            ]
        return [self.asset(settings)] if asked else []

    def asset(self, settings: ExportSettings) -> Asset:
        """This kind's one asset, made with the settings (asked for or not)."""
        values = {key: getattr(settings, key) for key in self.settings}
        needs = tuple(ASSET_KINDS[name].asset(settings) for name in self.needs)
        return Asset(self.name, tuple(f.format(**values) for f in self.files), values, self.writer, needs)

    def chosen_formats(self, text: str) -> list[str]:
        formats = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [f for f in formats if f not in self.formats]
        if unknown:
            first, second = list(self.formats)[:2]
            raise UserError(
                f"export.{self.name} = {text!r}: unknown format {', '.join(unknown)}; use {either(self.formats)} "
                f"(several: --{self.name} {first} --{self.name} {second})"
            )
        return list(dict.fromkeys(formats))


ASSET_KINDS: dict[str, AssetKind] = {
    kind.name: kind
    for kind in (
        AssetKind(
            "mesh",
            "Write a mesh (TSDF fusion of rendered depth)",
            writer="mesh",
            # obj's material and texture beside it (glb embeds its texture; ply has vertex colours only)
            files=(f"{MESH_STEM}.{{mesh_format}}", f"{MESH_STEM}.mtl", f"{MESH_STEM}.png"),
            settings=(
                "mesh_format",
                "depth",
                "voxel_size",
                "faces",
                "bbox",
                "min_component",
                "alpha_threshold",
                "min_facing",
                "texture_size",
            ),
            flags={
                "--format": "mesh_format",
                "--voxel-size": "voxel_size",
                "--faces": "faces",
                "--bbox": "bbox",
                "--texture-size": "texture_size",
            },
        ),
        AssetKind(
            "splat",
            "Write the Gaussians",
            writer="splat",
            formats={"ply": "splat.ply", "splat": "splat.splat", "ply_compressed": "splat.compressed.ply"},
        ),
        AssetKind(
            "pointcloud", "Write the Gaussian centres with colours", writer="pointcloud", files=("pointcloud.ply",)
        ),
        AssetKind(
            "cameras",
            "Write the camera path: poses_cameras.json, nerfstudio's camera_path.json and Nuke's camera.chan",
            writer="cameras",
            files=("poses_cameras.json", "camera_path.json", "camera.chan"),  # not cameras.json: generate's format,
        ),
        # The USD scene: a layer per part in usd/ (.usdc for large arrays, .usda for the small
        # and readable), and scene.usda referencing them.
        AssetKind(
            "usd_mesh",
            "",
            writer="usd:write_mesh",
            files=(f"{USD_DIR}/mesh.usdc", f"{USD_DIR}/mesh_texture.png"),  # the texture if the mesh has one
            part_of="usd",
            needs=("mesh",),
        ),
        AssetKind(
            "usd_gaussians", "", writer="usd:write_gaussians", files=(f"{USD_DIR}/gaussians.usdc",), part_of="usd"
        ),
        AssetKind("usd_points", "", writer="usd:write_points", files=(f"{USD_DIR}/points.usdc",), part_of="usd"),
        AssetKind("usd_cameras", "", writer="usd:write_cameras", files=(f"{USD_DIR}/cameras.usda",), part_of="usd"),
        AssetKind(
            "usd",
            "Write one USD scene, scene.usda: the mesh, the Gaussians, the sparse points and the cameras",
            writer="usd",
            files=("scene.usda",),
            needs=("usd_mesh", "usd_gaussians", "usd_points", "usd_cameras"),
        ),
    )
}

FLAG_KINDS = [kind for kind in ASSET_KINDS.values() if not kind.part_of]  # those with a setting and a flag


def either(choices) -> str:
    """'a, b or c'."""
    *most, last = choices
    return f"{', '.join(most)} or {last}" if most else last


# glTF is y up; transforms.json's world z up: a glb holds the mesh turned by WORLD_TO_GLTF, so that
# glTF clients (Blender, three.js, game engines) stand it upright. read_mesh turns it back.
WORLD_TO_GLTF = [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]]  # (x, y, z) -> (x, z, -y)
GLTF_TO_WORLD = [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
MESH_FORMATS = ("glb", "obj", "ply")  # mesh_path's order of preference: glb carries its texture in the file


def read_mesh(path: Path):
    """An exported mesh file as a trimesh.Trimesh in transforms.json's world (its texture kept)."""
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=False)
    if path.suffix == ".glb":
        mesh.apply_transform(GLTF_TO_WORLD)
    return mesh


def mesh_path(export_dir: Path) -> Path | None:
    """The exported mesh in an export/ folder, if there is one (not its .mtl or texture)."""
    return next((path for f in MESH_FORMATS if (path := export_dir / f"{MESH_STEM}.{f}").is_file()), None)


@dataclass(frozen=True)
class Asset:
    """One export: its name in the manifest (a new one replaces the old of the same name), its files,
    the settings that make it and the module that writes it."""

    name: str
    files: tuple[str, ...]
    settings: dict[str, Any]
    writer: str = field(compare=False)
    needs: tuple[Asset, ...] = ()  # assets whose files it reads

    def fingerprint(self, splats_fp: str) -> str:
        needs = {asset.name: asset.fingerprint(splats_fp) for asset in self.needs}
        return fingerprint(f"export:{self.name}", self.settings, {"splats": splats_fp, **needs})

    def with_needs(self) -> list[Asset]:
        """The assets it needs (and theirs), then itself."""
        return [*(need for asset in self.needs for need in asset.with_needs()), self]


@dataclass
class ExportPlan:
    """What an export run writes (`build`) and which files of export/ it keeps (`keep`: manifest entries)."""

    splats_fp: str
    build: list[Asset]
    keep: dict[str, dict[str, Any]]

    def fingerprints(self) -> dict[str, str]:
        """Every asset export/ will hold, by name: the export stage's inputs."""
        return {
            **{name: entry["fingerprint"] for name, entry in self.keep.items()},
            **{asset.name: asset.fingerprint(self.splats_fp) for asset in self.build},
        }


def requested_assets(settings: ExportSettings) -> list[Asset]:
    """The assets the settings ask for; a UserError when none, or when a setting is malformed."""
    parse_bbox(settings.bbox)
    asked = [asset for kind in ASSET_KINDS.values() for asset in kind.assets(settings)]
    if not asked:
        raise UserError(f"export: nothing to write; pass {either([f'--{kind.name}' for kind in FLAG_KINDS])}")
    assets = {need.name: need for asset in asked for need in asset.with_needs()}
    order = list(ASSET_KINDS)  # a kind needs earlier rows: they are written first
    return sorted(assets.values(), key=lambda asset: order.index(asset.name.split(".")[0]))


def plan_export(project: Project, settings: ExportSettings, splats_fp: str, force: bool) -> ExportPlan:
    """Keep what export/ holds that was made from these splats and is intact; build what is asked
    for and not there with the same fingerprint (everything asked for with `force`)."""
    previous = project.folder_record("export").get("assets", {})
    intact = project.intact_files("export")
    current = {
        name: entry
        for name, entry in previous.items()
        if entry.get("splats") == splats_fp and set(entry["files"]) <= intact
    }
    for name in set(previous) - set(current):
        log.info("export: dropping %s (made from other splats, or damaged)", ", ".join(previous[name]["files"]))
    build = [
        asset
        for asset in requested_assets(settings)
        if force or current.get(asset.name, {}).get("fingerprint") != asset.fingerprint(splats_fp)
    ]
    keep = {name: entry for name, entry in current.items() if name not in {asset.name for asset in build}}
    return ExportPlan(splats_fp, build, keep)


def export_assets(
    plan: ExportPlan, export_dir: Path, splats_dir: Path, poses_dir: Path, out_dir: Path, device: str = "auto"
) -> StageOutput:
    """Write the plan's new assets into out_dir beside links to the files it keeps from export_dir."""
    for entry in plan.keep.values():
        for name in entry["files"]:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            _link(export_dir / name, out_dir / name)
    entries, timings = dict(plan.keep), {}
    if plan.build:
        from vid3d.device import resolve_device
        from vid3d.splats.model import read_splats

        torch_device = resolve_device(device)
        splats = read_splats(splats_dir, torch_device)
        for asset in plan.build:
            start = time.perf_counter()
            module, _, function = asset.writer.partition(":")
            write = getattr(importlib.import_module(f"vid3d.export.{module}"), function or "write")
            for name in asset.files:
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            metrics = write(asset, splats, poses_dir, out_dir, torch_device)
            timings[asset.name] = time.perf_counter() - start
            entries[asset.name] = {
                "files": [name for name in asset.files if (out_dir / name).is_file()],
                "fingerprint": asset.fingerprint(plan.splats_fp),
                "settings": asset.settings,
                "splats": plan.splats_fp,
                "metrics": metrics,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
    entries = dict(sorted(entries.items()))
    return StageOutput(
        outputs=sorted(name for entry in entries.values() for name in entry["files"]),
        metrics={k: v for entry in entries.values() for k, v in entry["metrics"].items()},
        timings=timings,
        assets=entries,
    )


def _link(source: Path, target: Path) -> None:
    """A kept file in the new export/ folder: a hard link (no copy of a large file), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


AUTO_BBOX, NO_BBOX = "auto", "none"


def parse_bbox(text: str) -> np.ndarray | None:
    """export.bbox: a box (2, 3) from six numbers; None for "auto" (the mesh module finds the region
    the cameras observe) and for "none" or empty (no crop). A UserError when malformed."""
    if text.strip().lower() in (AUTO_BBOX, NO_BBOX, ""):
        return None
    import numpy as np

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    box = np.array(values).reshape(2, 3) if len(values) == 6 else None
    if box is None or (box[0] >= box[1]).any():
        raise UserError(
            f"export.bbox = {text!r}: expected auto, none or xmin,ymin,zmin,xmax,ymax,zmax with each min below its max"
        )
    return box
