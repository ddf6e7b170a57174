"""Typed per-stage settings: defaults in code, then layers of values (project.toml, a preset, --config
FILE, flags, --set), each named by where it came from so that an error names what the user typed.

Every setting is a dataclass field made with `setting(...)`, which carries its help text and its
allowed range; `configs/default.toml` documents them all (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from vid3d.errors import UserError


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A settings field with its help text and optional numeric bounds."""
    return field(default=default, metadata={"help": help, "min": min, "max": max})


@dataclass
class GenerateSettings:
    image: str = setting("", "reference image (PNG or JPEG) the video starts from; remembered by the project")
    prompt: str = setting("", "text prompt, for models that take one (CogVideoX, Wan)")
    model: str = setting(
        "",
        "diffusers pipeline folder or Hugging Face id already in the local cache; empty: the "
        "embedded orbit model; tiny-svd, tiny-cogvideox or tiny-wan: random-weight models for tests",
    )
    frames: int = setting(48, "video frames to generate (a camera-conditioned model sweeps one orbit over them)", min=2)
    height: int = setting(0, "frame height in pixels; 0: the model's own", min=0)
    width: int = setting(0, "frame width in pixels; 0: the model's own", min=0)
    steps: int = setting(20, "denoising steps", min=1)
    guidance: float = setting(
        0.0,
        "guidance scale (classifier-free; autoguidance for the embedded model); 0: the model's default, 1: off",
        min=0.0,
    )
    scheduler: Literal["default", "euler", "ddim", "dpm++"] = setting(
        "default", "diffusers scheduler: the model's own, Euler, DDIM or DPM-Solver++ (built from its config)"
    )
    window: int = setting(0, "latent frames per window; 0: the model's own length", min=0)
    stride: int = setting(0, "latent frames between window starts; 0: half a window", min=0)
    weighting: Literal["flat", "pyramid", "gaussian"] = setting(
        "pyramid", "how overlapping windows' predictions are fused, frame by frame"
    )
    loop: bool = setting(False, "circular windows: the last frames share windows with the first (closed orbits)")
    shared_noise: bool = setting(
        True,
        "one noise field for the whole video, sliced per window (covariance-"
        "preserving); false: each window draws its own noise",
    )
    freenoise: bool = setting(False, "frames past the first window reuse its noise, shuffled (FreeNoise)")
    anchor_every: int = setting(
        0,
        "anchor attention: the first frame and every Nth video frame are anchors every window attends to; 0: off",
        min=0,
    )
    anchor_frames: str = setting("", "anchor attention on these video frames instead (comma-separated indices)")
    kv_cache_until: int = setting(
        0,
        "cross-step K/V cache: self-attention keys and values of the last step before "
        "this one are kept and attended to in later steps; 0: off",
        min=0,
    )
    kv_decay: float = setting(
        0.9, "cached keys' logits are weighted by log(kv_decay ** steps since cached)", min=1e-6, max=1.0
    )
    cameras: str = setting(
        "",
        "the frames' cameras (vid3d's cameras.json format) for the feedback loop of a model "
        "that gives none (SVD, CogVideoX, Wan); empty: the model's own (the embedded model's orbit)",
    )
    feedback: Literal["off", "rectify", "rectify_noise", "gradient", "gradient_guided"] = setting(
        "off",
        "feedback: Gaussians fitted to the predicted frames during denoising (warm-started from step to "
        "step); rectify blends the prediction toward their renders; rectify_noise blends the predicted "
        "noise with the noise that turns the latents into the renders' (VistaDream); gradient steps the "
        "latents against L1 + SSIM between decoded frames and renders; gradient_guided steps the model "
        "output against their L2 by the size of the model's guidance correction (guidedvd-3dgs; needs "
        "guidance, one rank); needs cameras (the model's, or generate.cameras)",
    )
    feedback_start: int = setting(
        14,
        "feedback: first denoising step it acts on (0-based; with 20 steps, the last 6 "
        "act, where the frames are sharp enough to fit)",
        min=0,
    )
    feedback_stop: int = setting(0, "feedback: steps from this one on do not act; 0: act to the end", min=0)
    feedback_weight: float = setting(
        0.5,
        "feedback: rectify's blend toward the renders (rectify_noise's toward their noise); gradient's share "
        "of the loss a step removes (to first order); gradient_guided's step over the guidance correction's rms",
        min=0.0,
        max=1.0,
    )
    feedback_iterations: int = setting(30, "feedback: Gaussian training iterations per acting step", min=1)
    feedback_size: int = setting(
        0, "feedback: side of the frames the Gaussians are fitted to, in pixels; 0: the frames' own", min=0
    )
    feedback_warm_start: bool = setting(
        True, "feedback: keep the Gaussians from one acting step to the next; false: fit them anew each time"
    )
    seed: int = setting(0, "random seed of the noise", min=0)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = setting(
        "auto", "model precision; auto: float16 on CUDA (bfloat16 for CogVideoX and Wan), float32 on the CPU"
    )
    fps: int = setting(12, "frame rate of generate/video.mp4", min=1)


@dataclass
class FramesSettings:
    input: str = setting(
        "",
        "video file (mp4, mov, webm, avi, mkv), folder of images, or dataset (a folder with "
        "nerfstudio's/instant-ngp's transforms.json, or COLMAP's sparse/0 and images/: its "
        "cameras are used as given); remembered by the project",
    )
    count: int = setting(
        120, "frames to keep, sampled evenly: the sharpest (variance of the Laplacian) in each interval", min=2
    )
    max_side: int = setting(1280, "resize so the longer side is at most this many pixels; 0 keeps the size", min=0)
    min_frames: int = setting(10, "fail when fewer usable (non-blank) frames than this remain", min=2)


@dataclass
class PosesSettings:
    matcher: Literal["auto", "sequential", "exhaustive"] = setting(
        "auto",
        "auto: sequential for video and for image folders whose file names are numbered in one series "
        "(IMG_0001.jpg ...), exhaustive for other image folders of up to exhaustive_max_images",
    )
    exhaustive_max_images: int = setting(100, "largest unordered image folder that auto matches exhaustively", min=2)
    overlap: int = setting(10, "sequential matching: each frame is matched with this many following frames", min=1)
    loop_every: int = setting(
        5,
        "sequential matching: every Nth frame is a keyframe, keyframes are matched "
        "with each other to close loops; 0 turns loop closing off",
        min=0,
    )
    mapper: Literal["incremental", "global"] = setting(
        "incremental", "pycolmap mapper: incremental, or global (GLOMAP)"
    )
    bundle_adjustment: Literal["fast", "thorough"] = setting(
        "fast",
        "incremental mapper's bundle adjustment: fast (COLMAP's low-quality preset: fewer iterations, global "
        "adjustments less often; half the mapping time at the same accuracy on phone photos, "
        "docs/benchmarks.md) or thorough (COLMAP's defaults)",
    )
    verify_trials: int = setting(
        1000,
        "geometric verification: RANSAC trials per image pair at most (COLMAP's default is 10,000); pairs "
        "that need more overlap too little to help, and cost the most (docs/benchmarks.md)",
        min=100,
    )
    camera_model: Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"] = setting(
        "SIMPLE_RADIAL", "COLMAP camera model shared by all frames; images are undistorted to pinhole afterwards"
    )
    max_features: int = setting(8192, "SIFT features per image", min=64)
    sift_max_side: int = setting(
        1024,
        "SIFT runs on frames downscaled to at most this many pixels on the longer "
        "side (COLMAP's own cap is 3200); the poses keep the frames' full resolution",
        min=64,
    )
    sift_first_octave: int = setting(
        -1,
        "first octave of SIFT's scale space: -1 (COLMAP's default) doubles the "
        "image first and finds smaller features, 0 starts at sift_max_side",
        min=-1,
        max=0,
    )
    min_registered: float = setting(
        0.5,
        "fraction of frames that must register; below it matching is retried exhaustively once, then the stage fails",
        min=0.0,
        max=1.0,
    )
    seed: int = setting(0, "random seed of the mapper, for repeatable poses", min=0)
    cameras: str = setting(
        "",
        "known cameras (vid3d generate's cameras.json) used instead of COLMAP; empty: "
        "COLMAP, or generate/cameras.json when the frames come from a camera-conditioned model",
    )


@dataclass
class SplatsSettings:
    backend: Literal["auto", "gsplat", "torch"] = setting(
        "auto", "rasterizer: gsplat (CUDA), torch (any device), auto: gsplat on CUDA, torch otherwise"
    )
    steps: int = setting(7000, "training steps (one image per step)", min=1)
    max_side: int = setting(
        1600,
        "longest side of the training images in pixels: larger frames are resized once "
        "when loaded (area filter), their intrinsics with them; 0: the frames' own size",
        min=0,
    )
    coarse_steps: int = setting(
        0,
        "coarse to fine: the first this many steps train on the frames at half size "
        "(the demo's 500 of 1,000: 19% less time with the PyTorch compositing, none with the "
        "compiled one; the same held-out PSNR); 0: full size throughout",
        min=0,
    )
    sh_degree: int = setting(3, "spherical-harmonics degree of the colours", min=0, max=3)
    sh_degree_interval: int = setting(
        0,
        "steps between raising the SH degree by one; 0: gsplat's 1,000 scaled by "
        "steps / 30,000 (as its simple_trainer's adjust_steps)",
        min=0,
    )
    ssim_lambda: float = setting(0.2, "weight of (1 - SSIM) in the loss; the rest is L1", min=0.0, max=1.0)
    test_every: int = setting(8, "every Nth frame is held out for evaluation; 0 trains on all frames", min=0)
    checkpoint_every: int = setting(500, "steps between checkpoints that an interrupted run resumes from", min=1)
    densify: bool = setting(True, "grow and prune Gaussians with gsplat's DefaultStrategy")
    refine_start: int = setting(0, "first step of densification; 0: gsplat's 500 scaled by steps / 30,000", min=0)
    refine_stop: int = setting(
        0, "last step of densification and opacity resets; 0: gsplat's 15,000 scaled by steps / 30,000", min=0
    )
    refine_every: int = setting(
        0, "steps between densification passes; 0: gsplat's 100 scaled by steps / 30,000", min=0
    )
    reset_every: int = setting(
        0, "steps between opacity resets (before refine_stop); 0: gsplat's 3,000 scaled by steps / 30,000", min=0
    )
    grow_grad2d: float = setting(0.0002, "screen-space gradient above which a Gaussian is split or cloned", min=0.0)
    flatten_weight: float = setting(
        0.0,
        "surface regulariser: weight of the mean smallest scale (in scene scales), which flattens each Gaussian "
        "into a disc with a normal (PGSR); 0: off",
        min=0.0,
    )
    flatten_start: int = setting(0, "first step the flattening acts on", min=0)
    normal_weight: float = setting(
        0.0,
        "surface regulariser: weight of depth-normal consistency, the Gaussians' blended normals against the "
        "normals of the depth they render (2DGS, PGSR); 0: off",
        min=0.0,
    )
    normal_start: int = setting(
        0, "first step depth-normal consistency acts on; 0: 7,000 of 30,000 (2DGS's), scaled", min=0
    )
    distortion_weight: float = setting(
        0.0,
        "surface regulariser: weight of the distortion loss, the spread of depth along each ray "
        "(Mip-NeRF 360, 2DGS); 0: off",
        min=0.0,
    )
    distortion_start: int = setting(
        0, "first step the distortion loss acts on; 0: 3,000 of 30,000 (2DGS's), scaled", min=0
    )
    init: Literal["points", "generate"] = setting(
        "points",
        "what the Gaussians start from: points (poses/' sparse points, or a ball around known cameras), "
        "generate (the Gaussians generate's feedback loop left in generate/splats.ply)",
    )
    init_opacity: float = setting(0.1, "opacity of the initial Gaussians", min=0.001, max=0.999)
    init_scale: float = setting(1.0, "initial size, as a multiple of the mean distance to 3 neighbours", min=0.01)
    seed: int = setting(0, "random seed of the initialisation and the frame order", min=0)


@dataclass
class ExportSettings:
    mesh: bool = setting(True, "fuse depth rendered from the Gaussians into a mesh (TSDF, marching cubes)")
    mesh_format: Literal["ply", "obj", "glb"] = setting(
        "glb", "mesh file format: glb (textured, one file), obj (with mesh.mtl and mesh.png) or ply (vertex colours)"
    )
    depth: Literal["median", "expected", "planar"] = setting(
        "median",
        "depth fused into the mesh: median (where transmittance halves; sharper), expected (alpha-weighted), or "
        "planar (each ray's hit on the plane of the Gaussian where transmittance halves: the depth of flat "
        "Gaussians, trained with splats.flatten_weight)",
    )
    voxel_size: float = setting(
        0.0, "TSDF voxel size in world units; 0: the diagonal of the region fused (export.bbox) / 640", min=0.0
    )
    faces: int = setting(200_000, "decimate the mesh to about this many faces (quadric decimation); 0 keeps all", min=0)
    bbox: str = setting(
        "auto",
        "the region fused into the mesh: auto (the sparse points' hull, outliers removed, with a margin: what "
        "the cameras observe, no sky), none (everything), or xmin,ymin,zmin,xmax,ymax,zmax (transforms.json frame)",
    )
    texture_size: int = setting(
        2048,
        "glb and obj meshes: a uv atlas and a texture this many texels square, baked from the training images "
        "(ply keeps vertex colours); 0: vertex colours only",
        min=0,
    )
    min_component: float = setting(
        0.05, "drop connected pieces with fewer faces than this fraction of the largest", min=0.0, max=1.0
    )
    min_facing: float = setting(
        0.15,
        "pixels whose surface the camera sees at a cosine below this carry no depth (grazing views are the noisiest; "
        "higher: fewer stray surfaces, more holes)",
        min=0.0,
        max=1.0,
    )
    alpha_threshold: float = setting(
        0.5, "pixels whose rendered opacity is below this carry no depth", min=0.0, max=1.0
    )
    splat: str = setting(
        "",
        "also write the Gaussians in these formats, comma-separated (those `vid3d export --splat` takes: "
        "Inria's ply layout, and gsplat.exporter's); empty: none",
    )
    pointcloud: bool = setting(False, "also write the Gaussian centres with colours, outliers removed")
    cameras: bool = setting(
        False, "also write the camera path: poses_cameras.json, nerfstudio's camera_path.json and Nuke's camera.chan"
    )
    usd: bool = setting(
        False,
        "also write one USD scene, scene.usda (and its layers in usd/): the mesh, the Gaussians, the sparse "
        "points and the cameras (each source frame a time sample)",
    )


@dataclass
class Settings:
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    frames: FramesSettings = field(default_factory=FramesSettings)
    poses: PosesSettings = field(default_factory=PosesSettings)
    splats: SplatsSettings = field(default_factory=SplatsSettings)
    export: ExportSettings = field(default_factory=ExportSettings)


STAGE_SETTINGS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Settings)}  # type: ignore[misc]


class Layer(NamedTuple):
    """Settings from one place, {stage: {key: value}}, and how an error names that place: a file,
    `--set`, or a flag as the user typed it ("--frames 1")."""

    values: dict[str, Any]
    origin: str
    flag: bool = False  # the origin names the setting and its value itself, as a flag does


def load_settings(*layers: Layer | tuple[dict[str, Any], str], overrides: list[str] = ()) -> Settings:
    """Defaults, then each layer in order (a later one wins), then `stage.key=value` overrides (--set)."""
    values: dict[str, dict[str, tuple[Any, Layer]]] = {stage: {} for stage in STAGE_SETTINGS}
    for layer in [*(Layer(*layer) for layer in layers), *map(set_layer, overrides)]:
        for stage, table in layer.values.items():
            _check_stage(stage, layer.origin)
            if not isinstance(table, dict):
                raise UserError(f"{layer.origin}: [{stage}] must be a table of settings")
            values[stage].update({key: (value, layer) for key, value in table.items()})
    return Settings(**{stage: _build(stage, table) for stage, table in values.items()})


def set_layer(item: str) -> Layer:
    """One `--set stage.key=value` as a settings layer."""
    stage, key, value = _parse_override(item)
    return Layer({stage: {key: value}}, "--set")


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ("fast", "default", "quality")  # --preset; configs/ also holds the demo's layers (demo*.toml)


def read_preset(name: str) -> Layer:
    """configs/<name>.toml as a settings layer, for --preset NAME."""
    if name not in PRESETS:
        raise UserError(f"--preset {name}: must be one of {', '.join(PRESETS)}")
    return read_config(name)


def read_config(name: str) -> Layer:
    """configs/<name>.toml as a settings layer."""
    return read_toml(CONFIG_DIR / f"{name}.toml")


def read_toml(path: Path) -> Layer:
    """A config file as a settings layer; a missing or malformed file is a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass an existing TOML file to --config")
    try:
        return Layer(tomllib.loads(path.read_text()), str(path))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); see configs/default.toml for the format") from None


def setting_field(stage: str, key: str) -> tuple[Any, str]:
    """The type and help text of setting stage.key."""
    cls = STAGE_SETTINGS[stage]
    help = next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == key)
    return typing.get_type_hints(cls)[key], help


def as_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def describe(stage: str) -> list[tuple[str, Any, str]]:
    """(key, default, help) of every setting of a stage, in declaration order."""
    cls = STAGE_SETTINGS[stage]
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(cls)]


def _check_stage(stage: str, source: str) -> None:
    if stage not in STAGE_SETTINGS:
        raise UserError(f"{source}: unknown stage [{stage}]; stages are {', '.join(STAGE_SETTINGS)}")


def _parse_override(item: str) -> tuple[str, str, Any]:
    name, sep, raw = item.partition("=")
    stage, dot, key = name.strip().partition(".")
    if not sep or not dot:
        raise UserError(f"--set {item}: expected stage.key=value, e.g. --set frames.count=60")
    _check_stage(stage, f"--set {item}")
    try:  # a TOML value (number, bool, quoted string); anything else is a bare string
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return stage, key.strip(), value


def _build(stage: str, table: dict[str, tuple[Any, Layer]]) -> Any:
    cls = STAGE_SETTINGS[stage]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, (value, layer) in table.items():
        if key not in fields:
            raise UserError(f"{layer.origin}: unknown setting {stage}.{key}; {stage} has {', '.join(fields)}")
        where = layer.origin if layer.flag else f"{layer.origin}: {stage}.{key} = {value!r}"
        kwargs[key] = _coerce(where, value, hints[key], fields[key].metadata)
    return cls(**kwargs)


def _coerce(where: str, value: Any, hint: Any, meta: dict[str, Any]) -> Any:
    """`value` as a `hint`, within the setting's bounds; a UserError that starts with `where` when it is not."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise UserError(f"{where}: must be one of {', '.join(map(str, choices))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: must be true or false")
        return value
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}: must be a whole number")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: must be a number")
        value = float(value)
    if hint is str:
        return str(value)
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UserError(f"{where}: must be {bounds}")
    return value
