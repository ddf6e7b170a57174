"""The torch backend against a dense reference: every Gaussian against every pixel."""

import math

import pytest
import torch
from dense_reference import dense_reference

from vid3d.splats import cpu_kernel
from vid3d.splats.rasterize import rasterization


@pytest.fixture(params=["compiled", "pytorch"])
def compositing(request, monkeypatch):
    """The torch backend's two ways of compositing on the CPU: the compiled one (cpu_rasterize.cpp),
    and the PyTorch one it falls back to where no compiler is found."""
    if request.param == "pytorch":
        monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    else:
        assert cpu_kernel.available(), "the compiled CPU rasterizer did not build (see the warning logged)"
    return request.param


def random_scene(n, cameras=2, sh_degree=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype)
    means = (rand(n, 3) - 0.5) * 2.0
    quats = rand(n, 4) - 0.5
    scales = 0.03 + 0.15 * rand(n, 3)
    opacities = 0.2 + 0.8 * rand(n)
    colors = rand(n, (sh_degree + 1) ** 2, 3) - 0.5 if sh_degree is not None else rand(n, 3)
    viewmats, Ks = [], []
    for c in range(cameras):
        angle = 0.6 * c
        eye = torch.tensor([3.5 * math.sin(angle), 0.3, 3.5 * math.cos(angle)], dtype=dtype)
        forward = -eye / eye.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=dtype), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        rotation = torch.stack([right, down, forward])  # rows: camera axes in world
        view = torch.eye(4, dtype=dtype)
        view[:3, :3], view[:3, 3] = rotation, -rotation @ eye
        viewmats.append(view)
        Ks.append(torch.tensor([[40.0, 0, 24.0], [0, 40.0, 20.0], [0, 0, 1]], dtype=dtype))
    return {
        "means": means,
        "quats": quats,
        "scales": scales,
        "opacities": opacities,
        "colors": colors,
        "viewmats": torch.stack(viewmats),
        "Ks": torch.stack(Ks),
        "width": 48,
        "height": 40,
    }


PARAMS = ("means", "quats", "scales", "opacities", "colors")


@pytest.mark.parametrize(
    "sh_degree, render_mode, background, tile_size",
    [(None, "RGB", False, 16), (3, "RGB", True, 4), (1, "RGB+D", True, 8), (None, "RGB+D", False, 16)],
)
def test_torch_backend_matches_dense_reference(sh_degree, render_mode, background, tile_size, compositing):
    scene = random_scene(60, sh_degree=sh_degree, seed=hash((sh_degree, render_mode)) % 1000)
    backgrounds = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64) if background else None
    weights = None
    results = []
    for render in ("ours", "dense"):
        inputs = {k: (v.clone().requires_grad_(True) if k in PARAMS else v) for k, v in scene.items()}
        bg = backgrounds.clone().requires_grad_(True) if backgrounds is not None else None
        if render == "ours":
            image, alpha, _ = rasterization(
                **inputs,
                sh_degree=sh_degree,
                backgrounds=bg,
                render_mode=render_mode,
                tile_size=tile_size,
                backend="torch",
            )
        else:
            image, alpha = dense_reference(**inputs, sh_degree=sh_degree, backgrounds=bg, render_mode=render_mode)
        if weights is None:
            g = torch.Generator().manual_seed(1)
            weights = (
                torch.rand(image.shape, generator=g, dtype=image.dtype),
                torch.rand(alpha.shape, generator=g, dtype=alpha.dtype),
            )
        ((image * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
        grads = {k: inputs[k].grad for k in PARAMS}
        if bg is not None:
            grads["backgrounds"] = bg.grad
        results.append((image.detach(), alpha.detach(), grads))
    (image, alpha, grads), (ref_image, ref_alpha, ref_grads) = results
    assert ref_alpha.max() > 0.5 and (ref_alpha < 0.01).any()  # a real scene: covered and empty pixels
    assert torch.allclose(image, ref_image, atol=1e-5, rtol=0)
    assert torch.allclose(alpha, ref_alpha, atol=1e-5, rtol=0)
    for name, ref in ref_grads.items():
        error = (grads[name] - ref).norm() / ref.norm()
        assert ref.norm() > 0 and error < 1e-4, (name, float(error))


def test_opaque_gaussians_stop_compositing_early(compositing):
    """A wall of opaque Gaussians in front hides one behind: the early stop must be exact."""
    scene = random_scene(1, cameras=1)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, -0.5]], dtype=torch.float64)
    scene.update(
        means=means,
        quats=torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=torch.float64),
        scales=torch.full((3, 3), 0.4, dtype=torch.float64),
        opacities=torch.tensor([0.999, 0.999, 0.5], dtype=torch.float64),
        colors=torch.eye(3, dtype=torch.float64),
    )
    image, alpha, _ = rasterization(**scene, backend="torch")
    ref_image, ref_alpha = dense_reference(**scene)
    assert torch.allclose(image, ref_image, atol=1e-6) and torch.allclose(alpha, ref_alpha, atol=1e-6)


def test_info_feeds_gsplat_default_strategy(compositing):
    from gsplat.strategy import DefaultStrategy

    scene = random_scene(40, cameras=1, dtype=torch.float32)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(scene[k]) for k in PARAMS})
    optimizers = {k: torch.optim.Adam([params[k]], lr=1e-3) for k in PARAMS}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, reset_every=1000, grow_grad2d=0.0, verbose=False)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    image, _, info = rasterization(
        params["means"],
        params["quats"],
        params["scales"],
        params["opacities"],
        params["colors"],
        scene["viewmats"],
        scene["Ks"],
        scene["width"],
        scene["height"],
        backend="torch",
    )
    strategy.step_pre_backward(params, optimizers, state, step=1, info=info)
    image.sum().backward()
    assert info["means2d"].grad is not None and info["means2d"].grad.abs().sum() > 0
    strategy.step_post_backward(params, optimizers, state, step=1, info=info, packed=False)
    assert len(params["means"]) > 40  # every visible Gaussian had a gradient above 0: duplicated or split


def test_absgrad_bounds_the_gradient(compositing):
    """means2d.absgrad sums |per-pixel gradient|: never below |gradient|, and above it somewhere."""
    scene = random_scene(40, cameras=1)
    scene["means"].requires_grad_(True)
    image, _, info = rasterization(**scene, absgrad=True, backend="torch")
    info["means2d"].retain_grad()
    (image * torch.linspace(-1, 1, image.numel(), dtype=image.dtype).reshape(image.shape)).sum().backward()
    grad, absgrad = info["means2d"].grad, info["means2d"].absgrad
    assert (absgrad >= grad.abs() - 1e-9).all() and (absgrad > grad.abs() + 1e-6).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: gsplat's rasterizer is CUDA-only")
def test_gsplat_and_torch_backends_agree_on_cuda():
    scene = random_scene(500, cameras=2, sh_degree=3, dtype=torch.float32)
    results = []
    for backend in ("gsplat", "torch"):
        inputs = {
            k: (v.cuda().requires_grad_(True) if k in PARAMS else v.cuda() if torch.is_tensor(v) else v)
            for k, v in scene.items()
        }
        image, alpha, _ = rasterization(**inputs, sh_degree=3, packed=False, backend=backend)
        (image.sum() + alpha.sum()).backward()
        results.append((image.detach(), alpha.detach(), {k: inputs[k].grad for k in PARAMS}))
    (image, alpha, grads), (ref_image, ref_alpha, ref_grads) = results
    assert torch.allclose(image, ref_image, atol=1e-4) and torch.allclose(alpha, ref_alpha, atol=1e-4)
    for name in PARAMS:
        assert (grads[name] - ref_grads[name]).norm() / ref_grads[name].norm() < 1e-3, name


def test_median_depth_is_the_surface_where_transmittance_halves(compositing):
    from vid3d.splats.rasterize import median_depth

    scene = random_scene(1, cameras=1)
    # seen from the camera: a faint Gaussian in front (alpha 0.3), an opaque one behind it
    eye = torch.linalg.inv(scene["viewmats"][0])[:3, 3]
    forward = -eye / eye.norm()
    means = torch.stack([eye + 2.0 * forward, eye + 3.0 * forward])
    kwargs = {
        "means": means,
        "quats": torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64),
        "scales": torch.full((2, 3), 0.5, dtype=torch.float64),
        "opacities": torch.tensor([0.3, 0.99], dtype=torch.float64),
        "viewmats": scene["viewmats"],
        "Ks": scene["Ks"],
        "width": scene["width"],
        "height": scene["height"],
    }
    depth = median_depth(**kwargs)[0]
    centre = depth[scene["height"] // 2, scene["width"] // 2]
    assert float(centre) == pytest.approx(3.0, abs=1e-6)  # 0.7 left after the faint one: not yet half
    kwargs["opacities"] = torch.tensor([0.6, 0.99], dtype=torch.float64)
    assert float(median_depth(**kwargs)[0][scene["height"] // 2, scene["width"] // 2]) == pytest.approx(2.0, abs=1e-6)
    assert float(depth[0, 0]) == 0.0  # a corner no Gaussian covers by half
