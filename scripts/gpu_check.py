"""Every CUDA check of vid3d in one run that fits a lent GPU's time, written to one results file.

    bash scripts/gpu_check.sh                          # on the GPU machine (see docs/gpu-checks.md)
    python scripts/gpu_check.py --dry-run --out F.json # here: every check starts, CUDA-only parts skip

Checks, each timed; a failure is recorded and the next check runs:
  environment   torch, the device, nvcc, package versions
  gsplat_build  gsplat compiles its CUDA extension on first use (nvcc + ninja, JIT); started in the
                background at once so the checks that do not need it run meanwhile
  attention     the Triton multi-source attention kernel against SDPA: largest difference, ms per call
  generate      tiny-svd and tiny-cogvideox through `vid3d generate` on CUDA in float16 and bfloat16
  ranks         window-parallel sampling under torchrun: tiny-cogvideox's frames with 2 ranks (NCCL with a
                GPU per rank, gloo between ranks sharing one) against one process's, bit for bit
  feedback      the feedback loop inside the sampler with gsplat fitting its Gaussians: the embedded model's
                48-frame orbit plain, with feedback=gradient and with rectify_noise; seconds each
  rasterizer    gsplat against vid3d's torch backend on the same Gaussians: images and gradients
  reconstruct   `vid3d reconstruct --preset fast` of the bundled example with gsplat, from frames and
                poses prepared on the CPU machine (`gpu_check.sh --prepare`): seconds, held-out PSNR
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "runs" / "gpu-check" / "project"  # frames + poses of examples/orbit.mp4, made by --prepare
TORCH_BACKEND_FIGURES = "docs/benchmarks.md: fast preset on the CPU, torch backend: 26.14 dB, 1,500 steps in 456 s"
BUILD_SNIPPET = (
    "import torch, gsplat; from gsplat.cuda._backend import _C; "
    "print('gsplat', gsplat.__version__, 'built' if _C is not None else 'not built')"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu-check")) / "gpu-check.json")
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: start every check, skip what needs CUDA")
    parser.add_argument("--ranks-worker", type=Path, help=argparse.SUPPRESS)  # one rank of the ranks check
    args = parser.parse_args()
    if args.ranks_worker:
        return ranks_worker(args.ranks_worker, "cpu" if args.dry_run else "cuda")
    cuda = torch.cuda.is_available() and not args.dry_run
    results: dict[str, dict] = {}
    build = start_gsplat_build() if cuda else None
    checks = [
        ("environment", environment),
        ("attention", attention),
        ("generate", generate),
        ("ranks", lambda c: ranks(c, args.dry_run)),
        ("gsplat_build", lambda c: finish_gsplat_build(build)),
        ("feedback", lambda c: feedback(c, results["gsplat_build"]["status"] == "ok")),
        ("rasterizer", rasterizer),
        ("surface_channels", surface_channels),
        ("reconstruct", reconstruct),
    ]
    for name, check in checks:
        began = time.time()
        try:
            results[name] = {"status": "ok", **check(cuda)}
        except Skipped as reason:
            results[name] = {"status": "skipped", "why": str(reason)}
        except Exception as error:  # noqa: BLE001  # record it and go on: one failure must not cost the other checks
            results[name] = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=6),
            }
        results[name]["seconds"] = round(time.time() - began, 1)
        print(f"{name}: {results[name]['status']} ({results[name]['seconds']} s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))  # after every check: a timeout keeps what ran
    print(f"results: {args.out}")


class Skipped(Exception):
    """A check that cannot run here (no CUDA, nothing prepared)."""


def environment(cuda: bool) -> dict:
    import importlib.metadata as meta

    versions = {}
    for package in ("torch", "triton", "gsplat", "diffusers", "pycolmap", "open3d"):
        try:
            versions[package] = meta.version(package)
        except meta.PackageNotFoundError:
            versions[package] = None
    nvcc = shutil.which("nvcc")
    return {
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_cuda": torch.version.cuda,
        "nvcc": nvcc
        and subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
        .stdout.strip()
        .splitlines()[-1],
        "python": sys.version.split()[0],
        "versions": versions,
    }


def start_gsplat_build() -> subprocess.Popen:
    env = {
        **os.environ,
        "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", _arch()),
        "MAX_JOBS": str(os.cpu_count() or 8),
    }
    return subprocess.Popen(
        [sys.executable, "-c", BUILD_SNIPPET], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish_gsplat_build(build: subprocess.Popen | None) -> dict:
    if build is None:
        raise Skipped("no CUDA: gsplat's extension is only built on a GPU machine")
    output, _ = build.communicate(timeout=420)
    if build.returncode != 0 or "not built" in output:
        raise RuntimeError(f"gsplat's CUDA extension did not build: {output[-1500:]}")
    return {"output": output.strip().splitlines()[-1], "arch": os.environ.get("TORCH_CUDA_ARCH_LIST", _arch())}


def _arch() -> str:
    major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
    return f"{major}.{minor}"  # only the GPU at hand: a fraction of the build time of every arch


def attention(cuda: bool) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from vid3d_kernels.attention import multi_source_attention_reference, triton_multi_source_attention

    if not cuda:
        raise Skipped("no CUDA: the Triton kernel's correctness on CPU is tested under TRITON_INTERPRET=1")
    from attention import make_inputs, measure  # benchmarks/attention.py

    rows = []
    for batch, heads, lq in [(2, 8, 4096), (2, 16, 8192)]:
        query, sources = make_inputs(batch, heads, lq)
        with torch.no_grad():
            kernel = triton_multi_source_attention(query, sources)
            reference = multi_source_attention_reference(query, sources)
            kernel_ms, kernel_mb = measure(functools.partial(triton_multi_source_attention, query, sources))
            sdpa_ms, sdpa_mb = measure(functools.partial(multi_source_attention_reference, query, sources))
        rows.append(
            {
                "B": batch,
                "H": heads,
                "Lq": lq,
                "max_abs_diff": float((kernel - reference).abs().max()),
                "triton_ms": round(kernel_ms, 3),
                "sdpa_ms": round(sdpa_ms, 3),
                "triton_mb": round(kernel_mb),
                "sdpa_mb": round(sdpa_mb),
            }
        )
    return {"cases": rows}


def generate(cuda: bool) -> dict:
    """The sampler on CUDA with each tiny model and half-precision type (in-process: the stage's
    video.mp4 needs ffmpeg, whose wheel is larger than a device call may carry)."""
    import numpy as np

    from vid3d.config import GenerateSettings
    from vid3d.generate.adapters import Request, load_model
    from vid3d.generate.stage import generate as sample_video
    from vid3d.generate.stage import read_reference

    device = torch.device("cuda" if cuda else "cpu")
    image = read_reference(ROOT / "examples" / "reference.png")
    runs = []
    for name in ("tiny-svd", "tiny-cogvideox"):
        for dtype in (torch.float16, torch.bfloat16) if cuda else (torch.float32,):
            frames = 9 if name == "tiny-cogvideox" else 8
            settings = GenerateSettings(model=name, frames=frames, steps=4 if cuda else 1, height=64, width=64)
            began = time.time()
            model = load_model(name, device, dtype)
            video = sample_video(model, Request(image=image, num_frames=frames, height=64, width=64), settings)
            runs.append(
                {
                    "model": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "frames": list(video.shape),
                    "seconds": round(time.time() - began, 2),
                    "mean_level": round(float(np.mean(video)), 2),
                }
            )
            if video.shape[0] < 1 or not np.isfinite(video.astype(np.float32)).all():
                raise RuntimeError(f"{name} in {dtype}: no frames: {runs[-1]}")
    return {"runs": runs}


RANKS_SETTINGS = {
    "model": "tiny-cogvideox",
    "frames": 17,
    "steps": 4,
    "height": 32,
    "width": 32,
    "stride": 1,
    "anchor_every": 8,
    "kv_cache_until": 2,
}


def ranks(cuda: bool, dry_run: bool) -> dict:
    """One process, then two ranks under torchrun, each sampling tiny-cogvideox (5 latent frames in 3
    windows, anchors and the K/V cache on); rank 0's frames must be equal. On the CPU (dry run) gloo."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "vid3d-gpu-check-ranks"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    runs = {}
    for world in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
        command += [__file__, "--ranks-worker", str(folder / f"{world}.npy"), *(["--dry-run"] if dry_run else [])]
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, cwd=ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"{world} ranks: exit {result.returncode}: {result.stderr[-1500:]}")
        runs[world] = json.loads((folder / f"{world}.json").read_text())
    import numpy as np

    one, two = (np.load(folder / f"{world}.npy") for world in (1, 2))
    if not np.array_equal(one, two):
        raise RuntimeError(f"2 ranks differ from one process: largest difference {np.abs(one - two).max()}")
    return {"bit_identical": True, "runs": runs, "cuda": cuda}


def ranks_worker(out: Path, device: str) -> None:
    """One rank of the ranks check (or the one process): sample, and rank 0 saves the frames."""
    import numpy as np
    import torch.distributed as dist

    from vid3d.config import GenerateSettings
    from vid3d.generate.adapters import Request
    from vid3d.generate.ranks import joined
    from vid3d.generate.stage import generate as sample_video
    from vid3d.generate.stage import load_generator, read_reference

    settings = GenerateSettings(**RANKS_SETTINGS)
    image = read_reference(ROOT / "examples" / "reference.png")
    request = Request(image=image, num_frames=settings.frames, height=settings.height, width=settings.width)
    with joined(device) as group:
        model = load_generator(settings, torch.device(device))  # generate.dtype auto
        began = time.time()
        video = sample_video(model, request, settings, ranks=group)
        seconds = time.time() - began
        if group.leads:
            np.save(out, video)
            backend = dist.get_backend() if group.spread else None
            figures = {
                "ranks": group.world,
                "backend": backend,
                "dtype": str(model.dtype),
                "seconds": round(seconds, 2),
            }
            out.with_suffix(".json").write_text(json.dumps(figures))


FEEDBACK_MODES = ("off", "gradient", "rectify_noise")  # off: plain generation, the reference


def feedback(cuda: bool, gsplat_built: bool) -> dict:
    """The embedded model's orbit generated plain and with each feedback mode acting on the last steps,
    the loop's Gaussians fitted with gsplat on CUDA: seconds each, against plain. The dry run generates
    8 frames with the torch backend, to run the code."""
    from vid3d.config import GenerateSettings
    from vid3d.generate.stage import feedback_loop, load_generator, read_reference, request_of
    from vid3d.generate.stage import generate as sample_video

    if cuda and not gsplat_built:
        raise RuntimeError("gsplat's CUDA extension did not build (see gsplat_build): the loop would fit with it")
    device = torch.device("cuda" if cuda else "cpu")
    image = read_reference(ROOT / "examples" / "reference.png")
    model = load_generator(GenerateSettings(), device)
    frames, steps, start, iterations = (48, 8, 5, 30) if cuda else (8, 2, 1, 3)

    def timed(mode: str, steps: int, start: int) -> dict:
        settings = GenerateSettings(
            frames=frames, steps=steps, feedback=mode, feedback_start=start, feedback_iterations=iterations
        )
        request = request_of(settings, image)
        loop = feedback_loop(model, request, settings, device)
        if cuda:
            torch.cuda.synchronize()
        began = time.time()
        video = sample_video(model, request, settings, feedback=loop)
        if cuda:
            torch.cuda.synchronize()
        return {
            "feedback": mode,
            "seconds": round(time.time() - began, 2),
            "acting_steps": len(loop.history) if loop else 0,
            "backend": loop.trainer.backend if loop else None,
            "frames": list(video.shape),
        }

    if cuda:
        timed("gradient", 2, 1)  # warm-up: CUDA's kernels and gsplat's extension load outside the timings
    runs = [timed(mode, steps, start) for mode in FEEDBACK_MODES]
    for run in runs:
        run["over_plain"] = round(run["seconds"] / max(runs[0]["seconds"], 1e-9), 2)
    print(f"feedback: {frames} frames, {steps} steps, acting from step {start}, {iterations} fit iterations each")
    print(f"  {'feedback':<14}{'backend':<9}{'acting':>7}{'seconds':>9}{'x plain':>9}")
    for run in runs:
        backend = run["backend"] or "-"
        print(
            f"  {run['feedback']:<14}{backend:<9}{run['acting_steps']:>7}{run['seconds']:>9.2f}{run['over_plain']:>9.2f}"
        )
    if not cuda:
        raise Skipped(f"no CUDA: {frames} frames with the torch backend only, to run the code: {runs}")
    if any(run["backend"] not in (None, "gsplat") for run in runs):
        raise RuntimeError(f"the loop did not fit with gsplat on CUDA: {runs}")
    return {"frames": frames, "steps": steps, "feedback_start": start, "iterations": iterations, "runs": runs}


def _random_scene(cuda: bool, cameras: int, seed: int):
    """20,000 random Gaussians (SH degree 3) and `cameras` orbit cameras at 256x192, on the check's device."""
    import numpy as np

    from vid3d.scenes import orbit_cameras
    from vid3d.splats.model import init_splats

    device = "cuda" if cuda else "cpu"
    rng = np.random.default_rng(seed)
    splats = init_splats(
        rng.normal(0, 0.4, (20_000, 3)).astype(np.float32),
        rng.uniform(0, 1, (20_000, 3)).astype(np.float32),
        3,
        0.5,
        1.0,
        torch.Generator().manual_seed(0),
    ).to(device)
    cams = orbit_cameras(cameras, width=256, height=192)
    viewmats = torch.tensor(np.linalg.inv(cams.cam_to_world), dtype=torch.float32, device=device)
    return splats, viewmats, torch.tensor(cams.K, dtype=torch.float32, device=device)


def rasterizer(cuda: bool) -> dict:
    """gsplat and the torch backend on the same 20,000 Gaussians and cameras (the dry run renders
    with the torch backend only, to run the code)."""

    from vid3d.splats.model import render

    splats, viewmats, Ks = _random_scene(cuda, cameras=2, seed=0)
    out = {}
    for backend in ("gsplat", "torch") if cuda else ("torch",):
        for p in splats.values():
            p.grad = None
        began = time.time()
        images, _, _ = render(splats, viewmats, Ks, 256, 192, 3, backend=backend)
        images.square().mean().backward()
        if cuda:
            torch.cuda.synchronize()
        out[backend] = (images.detach(), {k: p.grad.clone() for k, p in splats.items()}, time.time() - began)
    if not cuda:
        raise Skipped("no CUDA: rendered with the torch backend only")
    (a, grads_a, _), (b, grads_b, _) = out["gsplat"], out["torch"]
    cosine = lambda x, y: float(torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0))
    return {
        "image_max_abs_diff": float((a - b).abs().max()),
        "image_mean_abs_diff": float((a - b).abs().mean()),
        "gradient_cosine": {k: round(cosine(grads_a[k], grads_b[k]), 5) for k in grads_a},
        "seconds_first_call": {k: round(v[2], 3) for k, v in out.items()},
    }


def surface_channels(cuda: bool) -> dict:
    """Colour and every surface channel (issue 26: 9 channels; gsplat pads them itself) on gsplat and
    the torch backend, one camera, with the normal and distortion losses' gradients."""

    from vid3d.config import SplatsSettings
    from vid3d.splats import surface

    splats, viewmats, Ks = _random_scene(cuda, cameras=1, seed=1)
    settings = SplatsSettings(normal_weight=1.0, distortion_weight=1.0)
    regularisers = surface.active(settings, 0)
    out = {}
    for backend in ("gsplat", "torch") if cuda else ("torch",):
        for p in splats.values():
            p.grad = None
        rendered = surface.render_surface(
            splats, viewmats, Ks, 256, 192, 3, surface.channels_of(regularisers), backend=backend
        )
        context = surface.Context(splats, 1.0, rendered)
        losses = {r.name: r.loss(context) for r in regularisers}
        sum(losses.values()).backward()
        maps = torch.cat([rendered.image[0], *(m.reshape(192, 256, -1) for m in rendered.maps.values())], -1)
        out[backend] = (
            maps.detach(),
            {k: float(v.detach()) for k, v in losses.items()},
            {k: p.grad.clone() for k, p in splats.items()},
        )
    if not cuda:
        raise Skipped("no CUDA: rendered with the torch backend only")
    (a, losses_a, grads_a), (b, losses_b, grads_b) = out["gsplat"], out["torch"]
    cosine = lambda x, y: float(torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0))
    return {
        "channel_max_abs_diff": [round(float(v), 6) for v in (a - b).abs().amax(dim=(0, 1))],
        "losses": {"gsplat": losses_a, "torch": losses_b},
        "gradient_cosine": {k: round(cosine(grads_a[k], grads_b[k]), 5) for k in grads_a if grads_a[k].abs().sum() > 0},
    }


def reconstruct(cuda: bool) -> dict:
    if not cuda:
        raise Skipped("no CUDA: gsplat's rasterizer needs a GPU")
    if not (PREPARED / "poses").is_dir():
        raise Skipped(f"{PREPARED} was not prepared: run `bash scripts/gpu_check.sh --prepare` here and carry it")
    project = Path(os.environ.get("TMPDIR", "/tmp")) / "vid3d-gpu-check-reconstruct"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(PREPARED, project)
    # the input by a path of this tree: its content fingerprint matches, so frames and poses stay cached
    code, out, seconds = _vid3d(
        "reconstruct",
        project,
        "--input",
        ROOT / "examples" / "orbit.mp4",
        "--preset",
        "fast",
        "--device",
        "cuda",
        timeout=300,
    )
    if code != 0:
        raise RuntimeError(json.dumps(out)[:2000])
    stages = out.get("stages", out)
    return {"seconds": seconds, "result": stages, "torch_backend_figures": TORCH_BACKEND_FIGURES}


def _vid3d(*args, timeout: int) -> tuple[int, dict, float]:
    began = time.time()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vid3d.cli", *map(str, args), "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 124, {"error": f"timed out after {timeout} s"}, round(time.time() - began, 1)
    try:
        out = json.loads(result.stdout)
    except json.JSONDecodeError:
        out = {"stdout": result.stdout[-1000:], "stderr": result.stderr[-1500:]}
    return result.returncode, out, round(time.time() - began, 1)


if __name__ == "__main__":
    main()
