"""Analytic convex primitives resting on the ground: ray intersection, normals, bounds, tessellation.

Every primitive lives in a local frame: translated to `center` and rotated by `yaw` about z.
Ray directions are never normalised, so a hit parameter `t` means the same in local and world space.
Intersections return `t` (inf where the ray misses); torch float32 tensors of shape (n,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

KINDS = ("sphere", "ellipsoid", "box", "cylinder", "cone")
T_MIN = 1e-4  # hits closer than this along a ray are ignored
INF = float("inf")


@dataclass(eq=False)
class Primitive:
    kind: str  # one of KINDS
    # sphere/ellipsoid/box: centre of the body; cylinder/cone: centre of the base disc (on z=0)
    center: np.ndarray
    # sphere/ellipsoid: semi-axes; box: half-extents; cylinder/cone: (radius, radius, height)
    size: np.ndarray
    yaw: float = 0.0  # rotation about the z axis, radians

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown primitive kind {self.kind!r}")
        self.center = np.asarray(self.center, dtype=np.float64)
        self.size = np.asarray(self.size, dtype=np.float64)

    # ----- frames -----
    def _to_local(self, p: torch.Tensor, is_dir: bool) -> list[torch.Tensor]:
        c, s = float(np.cos(self.yaw)), float(np.sin(self.yaw))
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        if not is_dir:
            x, y, z = x - float(self.center[0]), y - float(self.center[1]), z - float(self.center[2])
        return [c * x + s * y, -s * x + c * y, z]

    def _to_world_dir(self, v: list[torch.Tensor]) -> torch.Tensor:
        c, s = float(np.cos(self.yaw)), float(np.sin(self.yaw))
        return torch.stack([c * v[0] - s * v[1], s * v[0] + c * v[1], v[2]], dim=1)

    # ----- ray casting -----
    def intersect(self, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        o = self._to_local(origins, is_dir=False)
        d = self._to_local(dirs, is_dir=True)
        return _INTERSECTORS[self.kind](o, d, [float(v) for v in self.size])

    def normal(self, points: torch.Tensor) -> torch.Tensor:
        """Outward unit normals (n,3) at world points on the surface."""
        p = self._to_local(points, is_dir=False)
        n = _NORMALS[self.kind](p, [float(v) for v in self.size])
        return torch.nn.functional.normalize(self._to_world_dir(n), dim=1)

    # ----- geometry -----
    def footprint_radius(self) -> float:
        a, b, _ = self.size
        return float(np.hypot(a, b) if self.kind == "box" else max(a, b))

    def bounds(self) -> np.ndarray:
        a, b, h = self.size
        c, s = abs(np.cos(self.yaw)), abs(np.sin(self.yaw))
        if self.kind in ("sphere", "ellipsoid"):
            half = np.array([np.hypot(a * c, b * s), np.hypot(a * s, b * c), h])
            return np.stack([self.center - half, self.center + half])
        if self.kind == "box":
            half = np.array([a * c + b * s, a * s + b * c, h])
            return np.stack([self.center - half, self.center + half])
        lo = self.center - np.array([a, a, 0.0])
        return np.stack([lo, self.center + np.array([a, a, h])])

    def tessellate(self, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """World-space vertices (V,3) and faces (F,3) of the visible surface (no bottom face,
        which would lie on the ground). Faces are wound counter-clockwise seen from outside."""
        verts, faces = _TESSELLATORS[self.kind]([float(v) for v in self.size], resolution)
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        verts = verts @ R.T + self.center
        return verts, _orient_outward(self, verts, faces)


# ---------------------------------------------------------------- intersections


def _roots(a, b, c):
    """Both roots of a t^2 + b t + c = 0 (inf where there are none), in the stable form."""
    disc = b * b - 4.0 * a * c
    sq = torch.sqrt(disc.clamp_min(0.0))
    q = -0.5 * (b + torch.where(b >= 0, sq, -sq))
    t1 = torch.nan_to_num(q / a, nan=INF, posinf=INF, neginf=INF)
    t2 = torch.nan_to_num(c / q, nan=INF, posinf=INF, neginf=INF)
    miss = disc < 0
    return t1.masked_fill(miss, INF), t2.masked_fill(miss, INF)


def _nearest(*candidates):
    """Smallest candidate t beyond T_MIN, inf if none."""
    best = None
    for t, ok in candidates:
        t = torch.where(ok & (t > T_MIN), t, INF)
        best = t if best is None else torch.minimum(best, t)
    return best


def _hit_ellipsoid(o, d, s):
    ox, oy, oz = o[0] / s[0], o[1] / s[1], o[2] / s[2]
    dx, dy, dz = d[0] / s[0], d[1] / s[1], d[2] / s[2]
    a = dx * dx + dy * dy + dz * dz
    b = 2.0 * (ox * dx + oy * dy + oz * dz)
    c = ox * ox + oy * oy + oz * oz - 1.0
    t1, t2 = _roots(a, b, c)
    yes = torch.ones_like(t1, dtype=torch.bool)
    return _nearest((t1, yes), (t2, yes))


def _hit_box(o, d, s):
    t_near, t_far = None, None
    for i in range(3):
        lo = (-s[i] - o[i]) / d[i]
        hi = (s[i] - o[i]) / d[i]
        near, far = torch.minimum(lo, hi), torch.maximum(lo, hi)
        t_near = near if t_near is None else torch.maximum(t_near, near)
        t_far = far if t_far is None else torch.minimum(t_far, far)
    hit = t_far >= t_near
    return _nearest((t_near, hit), (t_far, hit))


def _hit_cylinder(o, d, s):
    r, h = s[0], s[2]
    a = d[0] * d[0] + d[1] * d[1]
    b = 2.0 * (o[0] * d[0] + o[1] * d[1])
    c = o[0] * o[0] + o[1] * o[1] - r * r
    t1, t2 = _roots(a, b, c)
    z1, z2 = o[2] + t1 * d[2], o[2] + t2 * d[2]
    t_cap = (h - o[2]) / d[2]
    xc, yc = o[0] + t_cap * d[0], o[1] + t_cap * d[1]
    return _nearest(
        (t1, (z1 >= 0) & (z1 <= h)),
        (t2, (z2 >= 0) & (z2 <= h)),
        (t_cap, xc * xc + yc * yc <= r * r),
    )


def _hit_cone(o, d, s):
    r, h = s[0], s[2]
    k2 = (r / h) ** 2
    w = h - o[2]
    a = d[0] * d[0] + d[1] * d[1] - k2 * d[2] * d[2]
    b = 2.0 * (o[0] * d[0] + o[1] * d[1] + k2 * w * d[2])
    c = o[0] * o[0] + o[1] * o[1] - k2 * w * w
    t1, t2 = _roots(a, b, c)
    z1, z2 = o[2] + t1 * d[2], o[2] + t2 * d[2]  # the range test drops the mirrored upper cone
    return _nearest((t1, (z1 >= 0) & (z1 <= h)), (t2, (z2 >= 0) & (z2 <= h)))


_INTERSECTORS = {
    "sphere": _hit_ellipsoid,
    "ellipsoid": _hit_ellipsoid,
    "box": _hit_box,
    "cylinder": _hit_cylinder,
    "cone": _hit_cone,
}

# ---------------------------------------------------------------- normals (local, unnormalised)


def _normal_ellipsoid(p, s):
    return [p[0] / s[0] ** 2, p[1] / s[1] ** 2, p[2] / s[2] ** 2]


def _normal_box(p, s):
    q = torch.stack([p[0] / s[0], p[1] / s[1], p[2] / s[2]], dim=1)
    axis = q.abs().argmax(dim=1, keepdim=True)
    n = torch.zeros_like(q).scatter_(1, axis, torch.sign(q.gather(1, axis)))
    return [n[:, 0], n[:, 1], n[:, 2]]


def _normal_cylinder(p, s):
    rho = torch.sqrt(p[0] * p[0] + p[1] * p[1])
    on_cap = (p[2] - s[2]).abs() < (rho - s[0]).abs()
    zero = torch.zeros_like(rho)
    return [torch.where(on_cap, zero, p[0]), torch.where(on_cap, zero, p[1]), on_cap.to(rho.dtype)]


def _normal_cone(p, s):
    k2 = (s[0] / s[2]) ** 2
    return [p[0], p[1], k2 * (s[2] - p[2])]


_NORMALS = {
    "sphere": _normal_ellipsoid,
    "ellipsoid": _normal_ellipsoid,
    "box": _normal_box,
    "cylinder": _normal_cylinder,
    "cone": _normal_cone,
}

# ---------------------------------------------------------------- tessellation (local frame)


def grid_surface(fn, nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate a parametric patch fn(u, v) -> (..., 3) over [0,1]^2 on an (nu x nv)-cell grid."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1))
    verts = fn(u, v).reshape(-1, 3)
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nv + 1, nu + 1)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return verts, faces


def _merge(parts):
    verts, faces, offset = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def _tess_ellipsoid(s, res):
    # an icosphere: evenly sized triangles, no crowded poles
    subdivisions = max(2, int(round(np.log2(res / 4))))  # noqa: RUF046  # numpy 1.x rounds to a float
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    return sphere.vertices * np.asarray(s), sphere.faces.copy()


def _tess_box(s, res):
    n = max(res // 4, 4)
    parts = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            if axis == 2 and sign < 0:
                continue  # bottom face lies on the ground
            a1, a2 = [i for i in range(3) if i != axis]

            def fn(u, v, axis=axis, sign=sign, a1=a1, a2=a2):
                p = np.empty(u.shape + (3,))
                p[..., axis] = sign * s[axis]
                p[..., a1] = (2 * u - 1) * s[a1]
                p[..., a2] = (2 * v - 1) * s[a2]
                return p

            parts.append(grid_surface(fn, n, n))
    return _merge(parts)


def _tess_cylinder(s, res):
    r, h = s[0], s[2]

    def side(u, v):
        theta = 2 * np.pi * u
        return np.stack([r * np.cos(theta), r * np.sin(theta), h * v], -1)

    def cap(u, v):
        theta = 2 * np.pi * u
        return np.stack([r * v * np.cos(theta), r * v * np.sin(theta), np.full_like(u, h)], -1)

    return _merge([grid_surface(side, res, res // 4), grid_surface(cap, res, res // 8)])


def _tess_cone(s, res):
    r, h = s[0], s[2]

    def side(u, v):
        theta = 2 * np.pi * u
        return np.stack([r * (1 - v) * np.cos(theta), r * (1 - v) * np.sin(theta), h * v], -1)

    return grid_surface(side, res, res // 3)


_TESSELLATORS = {
    "sphere": _tess_ellipsoid,
    "ellipsoid": _tess_ellipsoid,
    "box": _tess_box,
    "cylinder": _tess_cylinder,
    "cone": _tess_cone,
}


def _orient_outward(prim: Primitive, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip faces whose winding disagrees with the analytic outward normal."""
    tri = verts[faces]
    geometric = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centroids = torch.from_numpy(tri.mean(axis=1))
    analytic = prim.normal(centroids).numpy()
    flip = np.einsum("ij,ij->i", geometric, analytic) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, ::-1]
    return faces
