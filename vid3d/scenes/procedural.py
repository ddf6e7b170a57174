"""Seeded procedural scenes: textured convex objects on a square ground plane (z up, ground z=0).

Textures are solid (3D) functions of the world position, so they are view-consistent and the
ground-truth mesh can be coloured with exactly the same function as the renderer.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
import torch
import trimesh

from .primitives import INF, KINDS, T_MIN, Primitive, grid_surface

OBJECT_AREA_RADIUS = 1.2  # object footprints stay inside this radius of the origin
GROUND_HALF_SIZE = 3.0

# ---------------------------------------------------------------- textures


@dataclass(eq=False)
class Waves:
    """A sum of plane waves sum_k amp_k sin(p . vec_k + phase_k): cheap band-limited 3D noise."""

    vectors: np.ndarray  # (K,3) wave vectors, radians per metre
    phases: np.ndarray  # (K,)
    amps: np.ndarray  # (K,)


@dataclass(eq=False)
class Pattern:
    """A sharp-edged two-colour pattern painted over the base colour."""

    kind: str  # "checker" | "stripes" | "spots"
    waves: Waves  # three waves; "stripes" uses the first only
    warp: float  # bends the pattern by the base noise so it is not periodic
    threshold: float
    color: np.ndarray  # (3,)
    opacity: float


@dataclass(eq=False)
class Texture:
    noise: Waves  # multi-octave noise, mapped through the palette
    palette: np.ndarray  # (P,3) colours in [0,1]
    gain: float  # contrast of the noise before the palette lookup
    patterns: list[Pattern]
    grain: Waves  # fine brightness variation
    grain_strength: float


def random_waves(rng: np.random.Generator, wavelengths, per_octave: int, falloff: float = 0.7) -> Waves:
    vecs, amps = [], []
    for octave, wavelength in enumerate(wavelengths):
        dirs = rng.normal(size=(per_octave, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        freq = 2 * np.pi / wavelength * rng.uniform(0.8, 1.25, size=(per_octave, 1))
        vecs.append(dirs * freq)
        amps.append(np.full(per_octave, falloff**octave))
    vecs = np.concatenate(vecs)
    return Waves(vecs, rng.uniform(0, 2 * np.pi, len(vecs)), np.concatenate(amps))


def eval_waves(w: Waves, p: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Evaluate at points (n,3), normalised to unit variance. `shift` (n,) is added to every phase."""
    v = torch.as_tensor(w.vectors, dtype=p.dtype)
    arg = p[:, 0:1] * v[:, 0] + p[:, 1:2] * v[:, 1] + p[:, 2:3] * v[:, 2]
    arg = arg + torch.as_tensor(w.phases, dtype=p.dtype)
    if shift is not None:
        arg = arg + shift[:, None]
    amps = torch.as_tensor(w.amps, dtype=p.dtype)
    return (torch.sin(arg) * amps).sum(dim=1) / float(np.sqrt(0.5 * np.sum(w.amps**2)))


def random_palette(rng: np.random.Generator, n: int, hue_spread: float = 0.35) -> np.ndarray:
    """`n` colours around a random hue, alternating dark and light so neighbours contrast."""
    base = rng.uniform()
    colours = []
    for i in range(n):
        hue = (base + rng.uniform(-hue_spread, hue_spread)) % 1.0
        value = rng.uniform(0.15, 0.4) if i % 2 == 0 else rng.uniform(0.7, 1.0)
        colours.append(colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 0.95), value))
    return np.array(colours)


def random_texture(rng: np.random.Generator, scale: float = 1.0, plain: bool = False) -> Texture:
    """Rich texture by default; `plain` gives a weak, nearly single-colour one.
    `scale` multiplies all wavelengths (larger = coarser)."""
    if plain:
        colour = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.45, 0.8)))
        palette = np.clip(colour * np.array([[0.93], [1.07]]), 0, 1)
        noise = random_waves(rng, scale * np.array([1.0, 0.5]), 3)
        grain = random_waves(rng, scale * np.array([0.3]), 3)
        return Texture(noise, palette, 1.0, [], grain, 0.02)

    noise = random_waves(rng, scale * np.array([0.8, 0.4, 0.2, 0.1, 0.05]), 4, falloff=rng.uniform(0.6, 0.85))
    palette = random_palette(rng, int(rng.integers(4, 7)))
    patterns = [random_pattern(rng, scale) for _ in range(int(rng.integers(1, 3)))]
    grain = random_waves(rng, scale * np.array([0.08, 0.04]), 4)
    return Texture(noise, palette, rng.uniform(1.0, 2.0), patterns, grain, rng.uniform(0.1, 0.25))


def random_pattern(rng: np.random.Generator, scale: float) -> Pattern:
    kind = str(rng.choice(["checker", "stripes", "spots"]))
    wavelength = scale * rng.uniform(0.12, 0.5)
    if kind == "spots":
        wavelength *= 0.6
    dirs = np.linalg.qr(rng.normal(size=(3, 3)))[0]  # three orthogonal directions
    vectors = dirs * (2 * np.pi / wavelength) * rng.uniform(0.8, 1.25, size=(3, 1))
    waves = Waves(vectors, rng.uniform(0, 2 * np.pi, 3), np.ones(3))
    threshold = {"checker": 0.0, "stripes": rng.uniform(-0.3, 0.3), "spots": rng.uniform(0.3, 0.6)}[kind]
    color = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 1), rng.choice([0.08, 0.95])))
    return Pattern(kind, waves, rng.uniform(0.5, 2.0), threshold, color, rng.uniform(0.6, 1.0))


def eval_texture(tex: Texture, p: torch.Tensor) -> torch.Tensor:
    """Albedo (n,3) in [0,1] at world points p (n,3)."""
    noise = eval_waves(tex.noise, p)
    x = (0.5 + 0.5 * torch.tanh(tex.gain * noise)) * (len(tex.palette) - 1)
    i0 = x.floor().clamp(0, len(tex.palette) - 2).long()
    frac = (x - i0)[:, None]
    palette = torch.as_tensor(tex.palette, dtype=p.dtype)
    colour = palette[i0] * (1 - frac) + palette[i0 + 1] * frac
    for pat in tex.patterns:
        mask = _pattern_mask(pat, p, noise)
        target = torch.as_tensor(pat.color, dtype=p.dtype)
        colour = colour + (pat.opacity * mask.to(p.dtype))[:, None] * (target - colour)
    grain = eval_waves(tex.grain, p).clamp(-2.0, 2.0)
    return (colour * (1.0 + tex.grain_strength * grain)[:, None]).clamp(0.0, 1.0)


def _pattern_mask(pat: Pattern, p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(pat.waves.vectors, dtype=p.dtype)
    arg = p[:, 0:1] * v[:, 0] + p[:, 1:2] * v[:, 1] + p[:, 2:3] * v[:, 2]
    waves = torch.sin(arg + torch.as_tensor(pat.waves.phases, dtype=p.dtype) + pat.warp * noise[:, None])
    if pat.kind == "checker":
        return waves.prod(dim=1) > 0
    if pat.kind == "stripes":
        return waves[:, 0] > pat.threshold
    return waves.mean(dim=1) > pat.threshold  # spots


# ---------------------------------------------------------------- scene


@dataclass(eq=False)
class Scene:
    seed: int
    objects: list[Primitive]
    textures: list[Texture]  # textures[0]: ground, textures[i + 1]: objects[i]
    light_dir: np.ndarray  # unit vector towards the light
    ambient: float
    diffuse: float
    sky_zenith: np.ndarray  # (3,) colour straight up
    sky_horizon: np.ndarray  # (3,) colour at the horizon
    ground_half_size: float = GROUND_HALF_SIZE
    simple: bool = False
    _mesh: trimesh.Trimesh | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def object_bounds(self) -> np.ndarray:
        if not self.objects:
            return np.zeros((2, 3))
        b = np.stack([o.bounds() for o in self.objects])
        return np.stack([b[:, 0].min(axis=0), b[:, 1].max(axis=0)])

    @property
    def bounds(self) -> np.ndarray:
        g = self.ground_half_size
        lo = np.array([-g, -g, 0.0])
        hi = np.array([g, g, 0.0])
        if self.objects:
            lo, hi = np.minimum(lo, self.object_bounds[0]), np.maximum(hi, self.object_bounds[1])
        return np.stack([lo, hi])

    @property
    def extent(self) -> float:
        lo, hi = self.object_bounds
        return float(np.linalg.norm(hi - lo))

    def mesh(self, resolution: int = 128) -> trimesh.Trimesh:
        """Ground-truth surface (ground square + objects, without the hidden bottom faces), with
        vertex colours = albedo x direct lighting (incl. shadows) as the renderer would shade them."""
        if self._mesh is None or self._mesh.metadata.get("resolution") != resolution:
            self._mesh = build_mesh(self, resolution)
            self._mesh.metadata["resolution"] = resolution
        return self._mesh.copy()


def make_scene(seed: int, n_objects: int | None = None, simple: bool = False) -> Scene:
    """A deterministic random scene. `n_objects` defaults to 2-4 (1-2 when `simple`).
    `simple` only makes the ground plain; objects keep their rich textures."""
    rng = np.random.default_rng(seed)
    if n_objects is None:
        n_objects = int(rng.integers(1, 3) if simple else rng.integers(2, 5))
    objects = _place_objects(rng, n_objects)
    ground = random_texture(rng, scale=1.5, plain=simple)
    textures = [ground] + [random_texture(rng, scale=rng.uniform(0.7, 1.3)) for _ in objects]

    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(35, 65))
    light = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    zenith = np.array(colorsys.hsv_to_rgb(rng.uniform(0.52, 0.66), rng.uniform(0.35, 0.7), rng.uniform(0.6, 0.9)))
    horizon = np.clip(zenith + rng.uniform(0.15, 0.35), 0, 1)
    return Scene(
        seed=seed,
        objects=objects,
        textures=textures,
        light_dir=light,
        ambient=float(rng.uniform(0.3, 0.45)),
        diffuse=float(rng.uniform(0.6, 0.75)),
        sky_zenith=zenith,
        sky_horizon=horizon,
        simple=simple,
    )


def _random_shape(rng: np.random.Generator, kind: str, scale: float) -> tuple[np.ndarray, float]:
    """Size (3,) and centre height of a primitive resting on z=0."""
    if kind == "sphere":
        r = scale * rng.uniform(0.25, 0.5)
        return np.array([r, r, r]), r
    if kind == "ellipsoid":
        size = scale * np.array([rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.7)])
        return size, size[2]
    if kind == "box":
        size = scale * np.array([rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.65)])
        return size, size[2]
    r = scale * rng.uniform(0.2, 0.45)
    return np.array([r, r, scale * rng.uniform(0.3, 1.4 if kind == "cylinder" else 1.5)]), 0.0


def _place_objects(rng: np.random.Generator, n: int) -> list[Primitive]:
    """Non-overlapping footprints inside OBJECT_AREA_RADIUS; shapes shrink when they do not fit."""
    objects: list[Primitive] = []
    scale = {1: 1.0, 2: 1.0, 3: 0.85}.get(n, 0.75)
    for _ in range(n):
        kind = str(rng.choice(KINDS))
        size, z = _random_shape(rng, kind, scale)
        yaw = float(rng.uniform(0, 2 * np.pi))
        while True:
            prim = Primitive(kind, np.zeros(3), size, yaw)
            rho = prim.footprint_radius()
            for _attempt in range(100):
                r = (OBJECT_AREA_RADIUS - rho) * np.sqrt(rng.uniform())
                phi = rng.uniform(0, 2 * np.pi)
                xy = np.array([r * np.cos(phi), r * np.sin(phi)])
                if all(np.linalg.norm(xy - o.center[:2]) > rho + o.footprint_radius() + 0.05 for o in objects):
                    prim.center = np.array([xy[0], xy[1], z])
                    break
            else:
                size, z = size * 0.85, z * 0.85
                continue
            objects.append(prim)
            break
    return objects


# ---------------------------------------------------------------- shading


def intersect_ground(scene: Scene, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    t = -o[:, 2] / d[:, 2]
    x, y = o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1]
    g = scene.ground_half_size
    inside = (x.abs() <= g) & (y.abs() <= g) & (t > T_MIN)
    return torch.where(inside, t, INF)


def cast_rays(scene: Scene, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit t (n,) (inf on a miss) and surface id (n,): 0 ground, i+1 objects[i], -1 nothing."""
    ts = torch.stack([intersect_ground(scene, o, d)] + [obj.intersect(o, d) for obj in scene.objects], dim=1)
    t, surface = ts.min(dim=1)
    return t, torch.where(torch.isinf(t), -1, surface)


def surface_normals(scene: Scene, points: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    normals = torch.zeros_like(points)
    normals[:, 2] = 1.0  # ground
    for i, obj in enumerate(scene.objects):
        sel = surface == i + 1
        if sel.any():
            normals[sel] = obj.normal(points[sel])
    return normals


def shade(scene: Scene, points: torch.Tensor, normals: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    """Lambertian colour (n,3) = albedo * (ambient + diffuse * max(n.l, 0) * unshadowed)."""
    albedo = torch.zeros_like(points)
    for k, tex in enumerate(scene.textures):
        sel = surface == k
        if sel.any():
            albedo[sel] = eval_texture(tex, points[sel])
    light = torch.as_tensor(scene.light_dir, dtype=points.dtype)
    lambert = (normals @ light).clamp_min(0.0)
    lit = torch.nonzero(lambert > 0).squeeze(1)
    if len(lit) and scene.objects:
        # Objects are convex, so a point facing the light can only be shadowed by *other* objects.
        p, surf = points[lit], surface[lit]
        dirs = light.expand_as(p)
        blocked = torch.zeros(len(lit), dtype=torch.bool)
        for i, obj in enumerate(scene.objects):
            blocked |= torch.isfinite(obj.intersect(p, dirs)) & (surf != i + 1)
        lambert[lit[blocked]] = 0.0
    return albedo * (scene.ambient + scene.diffuse * lambert)[:, None]


def sky(scene: Scene, dirs: torch.Tensor) -> torch.Tensor:
    up = (dirs[:, 2] / dirs.norm(dim=1)).clamp(0.0, 1.0).sqrt()[:, None]
    zenith = torch.as_tensor(scene.sky_zenith, dtype=dirs.dtype)
    horizon = torch.as_tensor(scene.sky_horizon, dtype=dirs.dtype)
    return horizon + up * (zenith - horizon)


# ---------------------------------------------------------------- ground-truth mesh


def build_mesh(scene: Scene, resolution: int = 128) -> trimesh.Trimesh:
    g = scene.ground_half_size

    def ground(u, v):
        return np.stack([(2 * u - 1) * g, (2 * v - 1) * g, np.zeros_like(u)], -1)

    n_ground = int(resolution * 1.25)
    parts = [grid_surface(ground, n_ground, n_ground)] + [o.tessellate(resolution) for o in scene.objects]
    verts, faces, surface, offset = [], [], [], 0
    for k, (v, f) in enumerate(parts):
        verts.append(v)
        faces.append(f + offset)
        surface.append(np.full(len(v), k))
        offset += len(v)
    verts, faces, surface = np.concatenate(verts), np.concatenate(faces), np.concatenate(surface)

    p = torch.from_numpy(verts).float()
    s = torch.from_numpy(surface)
    colours = shade(scene, p, surface_normals(scene, p, s), s).numpy()
    rgba = np.concatenate([np.round(colours * 255), np.full((len(verts), 1), 255)], axis=1).astype(np.uint8)
    return trimesh.Trimesh(verts, faces, vertex_colors=rgba, process=False)
