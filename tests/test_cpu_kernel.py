"""The compiled CPU compositing (vid3d/splats/cpu_rasterize.cpp): float32 against the dense
reference at every tile size it takes, jobs racing to build it, and the fallback without a compiler."""

import os
import subprocess
import sys

import pytest
import torch
from dense_reference import dense_reference
from test_rasterize import PARAMS, random_scene

from vid3d.splats import cpu_kernel
from vid3d.splats.rasterize import rasterization


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_float32_matches_dense_reference(tile_size):
    """Floats take the kernel's own exp (doubles, tested in test_rasterize, take std::exp)."""
    assert cpu_kernel.available()
    scene = random_scene(300, sh_degree=2, seed=tile_size, dtype=torch.float32)
    backgrounds = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])
    results = []
    for render in ("compiled", "dense"):
        inputs = {k: (v.clone().requires_grad_(True) if k in PARAMS else v) for k, v in scene.items()}
        if render == "compiled":
            image, alpha, _ = rasterization(
                **inputs,
                sh_degree=2,
                backgrounds=backgrounds,
                render_mode="RGB+D",
                tile_size=tile_size,
                backend="torch",
            )
        else:
            image, alpha = dense_reference(**inputs, sh_degree=2, backgrounds=backgrounds, render_mode="RGB+D")
        weights = torch.linspace(0.1, 1.0, image.numel()).reshape(image.shape)
        ((image * weights).sum() + alpha.sum()).backward()
        results.append((image.detach(), alpha.detach(), {k: inputs[k].grad for k in PARAMS}))
    (image, alpha, grads), (ref_image, ref_alpha, ref_grads) = results
    assert ref_alpha.max() > 0.9 and (ref_alpha < 0.01).any()
    assert (image - ref_image).abs().max() < 1e-4 and (alpha - ref_alpha).abs().max() < 1e-5
    for name, ref in ref_grads.items():
        assert (grads[name] - ref).norm() / ref.norm() < 1e-3, name


def test_median_depth_agrees_with_the_pytorch_compositing(monkeypatch):
    from vid3d.splats.rasterize import median_depth

    scene = random_scene(300, cameras=2, seed=3)
    kwargs = {k: scene[k] for k in ("means", "quats", "scales", "opacities", "viewmats", "Ks", "width", "height")}
    compiled = median_depth(**kwargs, tile_size=8)
    monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    reference = median_depth(**kwargs, tile_size=8)
    assert (reference > 0).float().mean() > 0.3 and (reference == 0).any()
    assert torch.isclose(compiled, reference, atol=1e-9).float().mean() > 0.995


def run_python(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


RENDER = """
import torch
from test_rasterize import random_scene
from vid3d.splats import cpu_kernel
from vid3d.splats.rasterize import rasterization
image, alpha, _ = rasterization(**random_scene(50, dtype=torch.float32), backend="torch")
print(cpu_kernel.available(), float(alpha.max()))
"""


@pytest.mark.slow
def test_two_jobs_build_it_once_into_an_empty_cache(tmp_path):
    """Two jobs start at once with nothing built: both render with it, one library is left, no scratch."""
    tests = os.path.dirname(__file__)
    jobs = [run_python(RENDER, VID3D_CACHE=str(tmp_path), PYTHONPATH=tests) for _ in range(2)]
    for job in jobs:
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, err
        used, covered = out.split()
        assert used == "True" and float(covered) > 0.5, err
    built = [p.name for p in tmp_path.iterdir()]
    assert len(built) == 1 and not built[0].startswith("."), built
    assert (tmp_path / built[0] / "vid3d_raster.so").is_file()
    # a third job loads it without compiling
    job = run_python(
        RENDER + "\nimport sys; sys.exit('torch.utils.cpp_extension' in sys.modules)",
        VID3D_CACHE=str(tmp_path),
        PYTHONPATH=tests,
    )
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0 and out.startswith("True"), err


@pytest.mark.slow
def test_without_a_compiler_it_warns_once_and_renders_with_pytorch(tmp_path):
    tests = os.path.dirname(__file__)
    job = run_python(
        RENDER + "\nrasterization(**random_scene(5, dtype=torch.float32), backend='torch')",
        VID3D_CACHE=str(tmp_path),
        PYTHONPATH=tests,
        CXX="/bin/false",
    )
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    used, covered = out.split()
    assert used == "False" and float(covered) > 0.5
    assert err.count("could not build the compiled CPU rasterizer") == 1, err
    assert not any(p.name.startswith("cpu-rasterize") for p in tmp_path.iterdir())
