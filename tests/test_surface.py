"""The surface channels and regularisers (vid3d/splats/surface.py) against known answers: flat
Gaussians on planes, two layers at known depths, and the new channel counts of both compositing
paths against the dense reference."""

import math

import pytest
import torch
from dense_reference import dense_reference
from test_rasterize import PARAMS, random_scene

from vid3d.splats import cpu_kernel, surface
from vid3d.splats.rasterize import rasterization

WIDTH, HEIGHT = 48, 40
K = torch.tensor([[40.0, 0, 24.0], [0, 40.0, 20.0], [0, 0, 1]])


def quat_about(axis, angle):
    """(w, x, y, z) of a rotation by `angle` about the unit `axis`."""
    axis = torch.tensor(axis, dtype=torch.float32)
    return torch.cat([torch.tensor([math.cos(angle / 2)]), math.sin(angle / 2) * axis / axis.norm()])


def splats_of(means, quats, scales, opacity=0.99):
    n = len(means)
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(means.float()),
            "quats": torch.nn.Parameter(quats.float()),
            "scales": torch.nn.Parameter(torch.log(scales.float())),
            "opacities": torch.nn.Parameter(torch.logit(torch.full((n,), opacity))),
            "sh0": torch.nn.Parameter(torch.zeros(n, 1, 3)),
            "shN": torch.nn.Parameter(torch.zeros(n, 0, 3)),
        }
    )


def plane_of_discs(normal_tilt=0.0, plane_tilt=0.4, depth=2.0, spacing=0.05, radius=0.06):
    """Flat Gaussians (discs) on the plane through (0, 0, depth) tilted by `plane_tilt` about the
    camera's x axis, covering the view; each disc's normal turned a further `normal_tilt` about y."""
    plane = quat_about([1, 0, 0], plane_tilt)
    rotation = surface.rotations(plane[None])[0]
    u, v = torch.meshgrid(torch.arange(-40, 41) * spacing, torch.arange(-40, 41) * spacing, indexing="ij")
    local = torch.stack([u.reshape(-1), v.reshape(-1), torch.zeros(u.numel())], -1)
    means = local @ rotation.T + torch.tensor([0.0, 0.0, depth])
    disc = quat_about([0, 1, 0], normal_tilt)
    # the disc's rotation: the plane's, then the tilt in the plane's own frame
    w1, v1 = plane[0], plane[1:]
    w2, v2 = disc[0], disc[1:]
    q = torch.cat([(w1 * w2 - v1 @ v2)[None], w1 * v2 + w2 * v1 + torch.linalg.cross(v1, v2)])
    scales = torch.tensor([radius, radius, 1e-4]).expand(len(means), -1)
    return splats_of(means, q.expand(len(means), -1), scales), rotation[:, 2]


def render_plane(splats, channels):
    return surface.render_surface(splats, torch.eye(4)[None], K[None], WIDTH, HEIGHT, 0, channels, backend="torch")


def test_a_flat_gaussians_normal_map_is_its_planes_normal():
    tilt = quat_about([1, 1, 0], 0.5)
    splats = splats_of(torch.tensor([[0.0, 0.0, 2.0]]), tilt[None], torch.tensor([[0.3, 0.2, 1e-4]]))
    rendered = render_plane(splats, ["normal", "inverse_plane"])
    centre = (HEIGHT // 2, WIDTH // 2)
    normal = rendered.maps["normal"][centre] / rendered.alpha[centre]
    expected = surface.rotations(tilt[None])[0][:, 2]
    expected = -expected if expected[2] > 0 else expected  # faces the camera, which looks along +z
    assert rendered.alpha[centre] > 0.9
    assert torch.allclose(normal, expected, atol=1e-5)
    # the inverse-plane channel: the disc's plane n . x = n . m has inverse depth q . r, q = n / (n . m)
    q = rendered.maps["inverse_plane"][centre] / rendered.alpha[centre]
    assert torch.allclose(q, expected / (2.0 * expected[2]), atol=1e-5)


def test_planar_depth_is_the_planes_depth_at_every_pixel():
    splats, normal = plane_of_discs()
    rendered = render_plane(splats, ["inverse_plane"])
    depth = surface.planar_depth(rendered.maps["inverse_plane"], rendered.alpha, K)
    rays = surface.pixel_rays(K, WIDTH, HEIGHT)
    true_depth = (normal @ torch.tensor([0.0, 0.0, 2.0])) / (rays @ normal)
    covered = rendered.alpha > 0.99
    assert covered.float().mean() > 0.95
    assert (depth - true_depth)[covered].abs().max() < 1e-3


def test_depth_normal_consistency_is_zero_on_a_plane_and_positive_for_tilted_normals():
    def consistency(tilt):
        splats, _ = plane_of_discs(normal_tilt=tilt)
        context = surface.Context(splats, 1.0, render_plane(splats, ["normal", "inverse_plane"]))
        return float(surface.normal_loss(context).detach())

    assert consistency(0.0) < 1e-4
    assert consistency(0.3) > 0.02
    assert consistency(0.6) > consistency(0.3)


def test_distortion_is_the_weighted_spread_of_depth_along_the_ray():
    """Two fronto-parallel layers at depths 2 and 3 with opacities a and b: per pixel
    sum_ij w_i w_j (z_i - z_j)^2 = 2 a (1 - a) b (3 - 2)^2."""
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    scales = torch.tensor([[5.0, 5.0, 1e-4], [5.0, 5.0, 1e-4]])
    splats = splats_of(means, torch.tensor([[1.0, 0, 0, 0]] * 2), scales)
    a, b = 0.6, 0.5
    splats["opacities"].data = torch.logit(torch.tensor([a, b]))
    one_layer = splats_of(means[:1], torch.tensor([[1.0, 0, 0, 0]]), scales[:1])
    centre = (HEIGHT // 2, WIDTH // 2)
    for layers, expected in ((splats, 2 * a * (1 - a) * b), (one_layer, 0.0)):
        rendered = render_plane(layers, ["depth", "depth2"])
        maps, alpha = rendered.maps, rendered.alpha
        spread = 2 * (alpha * maps["depth2"] - maps["depth"] ** 2)
        assert math.isclose(float(spread[centre]), expected, abs_tol=2e-3)


def test_flattening_pulls_the_smallest_scale_down():
    splats = splats_of(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2), torch.tensor([[1.0, 2.0, 0.5]] * 2))
    loss = surface.flatten_loss(surface.Context(splats, 2.0, None))
    loss.backward()
    assert math.isclose(float(loss), 0.25, rel_tol=1e-6)
    grad = splats["scales"].grad[0]
    assert grad[2] > 0 and grad[0] == 0 and grad[1] == 0


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("channels", [7, 9])
def test_surface_channel_counts_match_the_dense_reference(compiled, channels, monkeypatch):
    """Colour plus the surface channels (7: padded to 8 in the compiled kernel, 9: to 12), forward and
    backward, on the compiled and the PyTorch compositing."""
    if compiled:
        assert cpu_kernel.available()
    else:
        monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    scene = random_scene(200, seed=channels, dtype=torch.float32)
    scene["colors"] = torch.rand(200, channels, generator=torch.Generator().manual_seed(1)) - 0.3
    backgrounds = torch.rand(2, channels, generator=torch.Generator().manual_seed(2))
    results = []
    for render in ("backend", "dense"):
        inputs = {k: (v.clone().requires_grad_(True) if k in PARAMS else v) for k, v in scene.items()}
        if render == "backend":
            image, alpha, _ = rasterization(**inputs, backgrounds=backgrounds, tile_size=8, backend="torch")
        else:
            image, alpha = dense_reference(**inputs, backgrounds=backgrounds)
        weights = torch.linspace(-1.0, 1.0, image.numel()).reshape(image.shape)
        ((image * weights).sum() + alpha.sum()).backward()
        results.append((image.detach(), alpha.detach(), {k: inputs[k].grad for k in PARAMS}))
    (image, alpha, grads), (ref_image, ref_alpha, ref_grads) = results
    assert image.shape[-1] == channels
    assert (image - ref_image).abs().max() < 1e-4 and (alpha - ref_alpha).abs().max() < 1e-5
    for name, ref in ref_grads.items():
        assert (grads[name] - ref).norm() / ref.norm() < 1e-3, name


def test_regularised_training_renders_the_surface_channels_only_once_they_act():
    from vid3d.config import SplatsSettings

    settings = SplatsSettings(steps=300, flatten_weight=1.0, normal_weight=0.1, normal_start=100)
    assert [r.name for r in surface.active(settings, 0)] == ["flatten"]
    assert surface.channels_of(surface.active(settings, 0)) == []
    assert surface.channels_of(surface.active(settings, 100)) == ["normal", "inverse_plane"]
    settings = SplatsSettings(steps=300, distortion_weight=1.0, normal_weight=1.0, normal_start=5)
    assert surface.channels_of(surface.active(settings, 10)) == ["normal", "inverse_plane", "depth", "depth2"]


def test_the_exports_planar_depth_is_the_planes_depth():
    from vid3d.config import ExportSettings
    from vid3d.export.mesh import _colour_and_depth
    from vid3d.splats.data import Dataset

    splats, normal = plane_of_discs(plane_tilt=0.6)
    data = Dataset(["plane.png"], torch.zeros(1, HEIGHT, WIDTH, 3), torch.eye(4)[None], K[None], [0], [])
    _, alpha, depth, facing = _colour_and_depth(splats, data, 0, 0, ExportSettings(depth="planar"))
    rays = surface.pixel_rays(K, WIDTH, HEIGHT)
    true_depth = (normal @ torch.tensor([0.0, 0.0, 2.0])) / (rays @ normal)
    covered = alpha > 0.99
    assert covered.float().mean() > 0.95
    assert (depth - true_depth)[covered].abs().max() < 1e-3
    cosine = (rays @ normal).abs() / rays.norm(dim=-1)
    assert (facing - cosine)[covered].abs().max() < 1e-4
