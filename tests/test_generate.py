"""Generation mechanics on tiny random-weight SVD and CogVideoX models: exactness against the
diffusers pipelines, shared noise, the stabilizing processors, and the generate stage."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import error_line, run_cli, run_json, with_processors
from diffusers.models.attention_processor import AttnProcessor2_0

from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.cogvideox import CogVideoXModel, tiny_cogvideox
from vid3d.generate.adapters.svd import SVDModel, tiny_svd
from vid3d.generate.sampler import SCHEDULERS, Plan, Stabilizers, frame_sets, initial_noise, sample, window_noises


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)


def test_one_svd_window_reproduces_the_diffusers_pipeline_bit_for_bit(image):
    pipe = tiny_svd(num_frames=4, size=32)
    expected = pipe(
        PIL.Image.fromarray(image),
        height=32,
        width=32,
        num_frames=4,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).frames
    model = SVDModel(pipe)
    request = Request(image, num_frames=4, height=32, width=32)
    generator = torch.Generator().manual_seed(7)
    latents = sample(model, model.prepare(request, generator), request, Plan(steps=2), Stabilizers(), generator)
    assert torch.equal(latents, expected)


@pytest.mark.parametrize("scheduler", ["default", "euler", "ddim", "dpm++"])
def test_one_cogvideox_window_reproduces_the_diffusers_pipeline_bit_for_bit(image, scheduler):
    pipe = tiny_cogvideox()
    if scheduler != "default":
        pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    expected = pipe(
        PIL.Image.fromarray(image),
        prompt="an orbit",
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=3,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).frames
    model = CogVideoXModel(pipe, max_sequence_length=16)
    request = Request(image, prompt="an orbit", num_frames=9, height=32, width=32)
    generator = torch.Generator().manual_seed(3)
    latents = sample(model, model.prepare(request, generator), request, Plan(steps=3), Stabilizers(), generator)
    assert torch.equal(latents, expected)


def test_shared_noise_is_the_same_in_every_window_that_holds_a_frame():
    sets = frame_sets(20, 8, Plan(stride=4))
    shape = (1, 20, 4, 8, 8)
    shared = window_noises(
        shape, sets, 1, Stabilizers(shared_noise=True), torch.Generator().manual_seed(0), "cpu", torch.float32
    )
    independent = window_noises(
        shape, sets, 1, Stabilizers(shared_noise=False), torch.Generator().manual_seed(0), "cpu", torch.float32
    )
    overlaps = 0
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            for frame in set(sets[a].tolist()) & set(sets[b].tolist()):
                i, j = sets[a].tolist().index(frame), sets[b].tolist().index(frame)
                assert torch.equal(shared[a][:, i], shared[b][:, j])
                assert not torch.equal(independent[a][:, i], independent[b][:, j])
                overlaps += 1
    assert overlaps > 0


def test_fusing_independent_noise_shrinks_its_variance_where_windows_overlap():
    sets = frame_sets(24, 8, Plan(stride=4))
    shape = (1, 24, 4, 32, 32)
    args = (shape, sets, 1)
    shared = initial_noise(
        *args, Stabilizers(shared_noise=True), torch.Generator().manual_seed(0), "cpu", torch.float32, "flat"
    )
    fused = initial_noise(
        *args, Stabilizers(shared_noise=False), torch.Generator().manual_seed(0), "cpu", torch.float32, "flat"
    )
    middle = slice(4, 20)  # frames held by two windows
    assert abs(shared[:, middle].std().item() - 1) < 0.02
    assert abs(fused[:, middle].std().item() - 2**-0.5) < 0.02


def _svd_window_output(model, condition, latents, frames):
    t = model.scheduler.timesteps[0]
    return model.predict(model.scheduler.scale_model_input(latents, t), t, condition, frames)


@pytest.fixture(scope="module")
def svd(image):
    pipe = tiny_svd(num_frames=4, size=32)
    model = SVDModel(pipe)
    request = Request(image, num_frames=6, height=32, width=32)
    condition = model.prepare(request, torch.Generator().manual_seed(0))
    model.scheduler.set_timesteps(4)
    latents = (
        torch.randn((1, 6, 4, 16, 16), generator=torch.Generator().manual_seed(1)) * model.scheduler.init_noise_sigma
    )
    return pipe, model, condition, latents


@pytest.mark.slow
@torch.no_grad()
def test_stabilizing_processors_without_anchors_equal_the_default_processors(svd):
    pipe, model, condition, latents = svd
    frames = torch.arange(4)
    ours = _svd_window_output(model, condition, latents[:, :4], frames)
    default = with_processors(
        pipe.unet,
        AttnProcessor2_0(),  # what diffusers installs on torch 2
        lambda: _svd_window_output(model, condition, latents[:, :4], frames),
    )
    assert torch.equal(ours, default)


@pytest.mark.slow
@torch.no_grad()
def test_anchor_attention_attends_to_the_recorded_frames(svd):
    _, model, condition, latents = svd
    state, one = model.attention, torch.arange(1)
    plain = _svd_window_output(model, condition, latents[:, :1], one)
    with state.record_anchors():
        _svd_window_output(model, condition, latents[:, :1], one)
    # a frame anchored on itself sees every key twice: softmax over duplicates changes nothing
    self_anchored = _svd_window_output(model, condition, latents[:, :1], one)
    with state.record_anchors():
        _svd_window_output(model, condition, latents[:, 5:6], torch.tensor([5]))
    other_anchored = _svd_window_output(model, condition, latents[:, :1], one)
    state.clear()
    assert torch.allclose(self_anchored, plain, atol=1e-5)
    assert (other_anchored - plain).abs().max() > 1e-3


def test_sampler_runs_every_stabilizer_over_several_windows(image):
    model = CogVideoXModel(tiny_cogvideox(), max_sequence_length=16)
    request = Request(image, prompt="an orbit", num_frames=25, height=32, width=32)  # 7 latent frames
    generator = torch.Generator().manual_seed(0)
    condition = model.prepare(request, generator)
    plan = Plan(steps=3, stride=1, loop=True, scheduler="default")
    stabilizers = Stabilizers(freenoise=True, anchors=(0, 3), kv_cache_until=2)
    calls = []
    original = model.predict
    model.predict = lambda latents, t, c, frames: calls.append(frames.tolist()) or original(latents, t, c, frames)
    latents = sample(model, condition, request, plan, stabilizers, generator)
    assert latents.shape == (1, 7, 4, 4, 4) and torch.isfinite(latents).all()
    per_step = len(calls) // 3
    assert calls[0] == [0, 3]  # the anchor pass comes first
    assert calls[1:per_step] == [[k % 7 for k in range(s, s + 3)] for s in range(7)]  # circular windows
    assert model.attention.cache == {} and model.attention.anchors == {}  # cleared after sampling


@pytest.mark.slow
def test_generate_stage_writes_frames_video_and_metrics(tmp_path, image):
    import imageio.v3 as iio

    reference = tmp_path / "ref.png"
    iio.imwrite(reference, image)
    project = tmp_path / "p"
    code, out = run_json(
        "generate",
        str(project),
        "--image",
        str(reference),
        "--model",
        "tiny-cogvideox",
        "--frames",
        "13",
        "--set",
        "generate.steps=2",
        "--set",
        "generate.anchor_every=8",
        "--set",
        "generate.height=32",
        "--set",
        "generate.width=32",
    )
    assert code == 0, out
    frames = sorted((project / "generate" / "frames").glob("*.png"))
    assert len(frames) == 13 and iio.imread(frames[0]).shape == (32, 32, 3)
    assert (project / "generate" / "video.mp4").stat().st_size > 0
    metrics = json.loads((project / "generate" / "metrics.json").read_text())
    assert set(metrics) >= {"warping_error", "flicker", "loop_closure"}
    code, again = run_json("generate", str(project))
    assert code == 0 and again["stages"]["generate"]["status"] == "cached"


@pytest.mark.slow
def test_generate_rejects_bad_input_without_touching_the_project(tmp_path):
    project = tmp_path / "p"
    missing = run_cli("generate", project, "--image", tmp_path / "nope.png", "--model", "tiny-svd")
    assert missing.returncode == 2 and "nope.png" in error_line(missing.stderr) and not project.exists()
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = run_cli("generate", project, "--image", bad, "--model", "tiny-svd")
    assert result.returncode == 2 and "bad.png" in error_line(result.stderr) and not project.exists()
    result = run_cli("generate", project, "--image", bad, "--model", "no/such-model")
    assert result.returncode == 2 and not project.exists()
    image = tmp_path / "ok.png"
    PIL.Image.new("RGB", (32, 32)).save(image)
    result = run_cli(
        "generate", project, "--image", image, "--model", "tiny-svd", "--set", "generate.anchor_frames=0,x"
    )
    assert result.returncode == 2 and "generate.anchor_frames" in error_line(result.stderr) and not project.exists()
    result = run_cli("generate", project, "--image", image, "--model", "no/such-model")
    assert result.returncode == 2 and "no/such-model" in error_line(result.stderr) and not project.exists()


def test_frames_that_cannot_fit_are_refused_before_the_model_loads(tmp_path):
    """A billion 64x64 frames need terabytes for the decoded video alone: one line naming
    generate.frames, exit 2, no project left behind."""
    image = tmp_path / "ok.png"
    PIL.Image.new("RGB", (64, 64)).save(image)
    project = tmp_path / "p"
    result = run_cli("generate", project, "--image", image, "--frames", "1000000000", timeout=60)
    assert result.returncode == 2 and "generate.frames = 1000000000" in error_line(result.stderr)
    assert not project.exists()


def test_the_frame_limit_compares_with_the_memory_the_device_has(monkeypatch):
    from vid3d.config import GenerateSettings
    from vid3d.errors import UserError
    from vid3d.generate.stage import check_memory, video_memory

    settings = GenerateSettings(frames=1000, height=512, width=512)
    needed = video_memory(settings)
    assert needed >= 1000 * 512 * 512 * 3 * 4  # at least the decoded video in float32
    assert video_memory(GenerateSettings(frames=2000, height=512, width=512)) == 2 * needed
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (needed // 2, 4 * needed))
    with pytest.raises(UserError, match="generate.frames = 1000"):
        check_memory(settings, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * needed, 4 * needed))
    check_memory(settings, torch.device("cuda"))
