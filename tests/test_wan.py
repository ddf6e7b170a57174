"""Wan 2.x image-to-video on tiny random-weight models: exactness against WanImageToVideoPipeline
(one expert and Wan 2.2's two), the rotary processors against diffusers' WanAttnProcessor, the
variants refused, the feedback loop with given cameras, and the generate stage end to end."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import run_json, with_processors
from diffusers import EulerDiscreteScheduler
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from vid3d.cameras import Camera
from vid3d.errors import UserError
from vid3d.generate.adapters import load_model
from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.wan import WanModel, tiny_wan
from vid3d.generate.feedback import Feedback, FeedbackLoop, prediction_to_x0, x0_to_prediction
from vid3d.generate.sampler import SCHEDULERS, Plan, Stabilizers, sample
from vid3d.scenes import orbit_cameras

SIZE = 32


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)


def wan(version="2.1"):
    pipe = tiny_wan(version=version)
    return pipe, WanModel(pipe, height=SIZE, width=SIZE, window_frames=9)


@pytest.mark.parametrize("version,scheduler", [("2.1", "default"), ("2.1", "dpm++"), ("2.2", "default")])
def test_one_wan_window_reproduces_the_diffusers_pipeline_bit_for_bit(image, version, scheduler):
    pipe, model = wan(version)
    if scheduler != "default":
        pipe.scheduler = model.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    expected = pipe(
        PIL.Image.fromarray(image),
        prompt="an orbit",
        height=SIZE,
        width=SIZE,
        num_frames=9,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).frames
    request = Request(image, prompt="an orbit", num_frames=9, height=SIZE, width=SIZE)
    generator = torch.Generator().manual_seed(3)
    latents = sample(model, model.prepare(request, generator), request, Plan(steps=2), Stabilizers(), generator)
    assert torch.equal(latents, expected)
    if version == "2.2":  # 2 steps at timesteps 999 and 750 around the boundary 875: both experts ran
        assert [model.expert(t) for t in model.scheduler.timesteps] == [0, 1]


@pytest.fixture(scope="module")
def window(image):
    pipe, model = wan()
    request = Request(image, prompt="an orbit", num_frames=21, height=SIZE, width=SIZE)  # 6 latent frames
    condition = model.prepare(request, torch.Generator().manual_seed(0))
    model.scheduler.set_timesteps(4)
    latents = torch.randn(model.latent_shape(request, 6), generator=torch.Generator().manual_seed(1))
    return pipe, model, condition, latents


def output(model, condition, latents, frames):
    return model.predict(latents[:, :, frames], model.scheduler.timesteps[0], condition, frames)


@torch.no_grad()
def test_rotary_processors_without_anchors_equal_diffusers_wan_processor(window):
    pipe, model, condition, latents = window
    frames = torch.arange(3)
    ours = output(model, condition, latents, frames)
    default = with_processors(pipe.transformer, WanAttnProcessor(), lambda: output(model, condition, latents, frames))
    assert torch.equal(ours, default)


@torch.no_grad()
def test_anchors_keep_their_rotary_positions_and_change_the_output(window):
    """Guided: the conditional and unconditional passes each keep their own anchors."""
    _, model, condition, latents = window
    state, frames = model.attention, torch.arange(3)
    plain = output(model, condition, latents, frames)
    with state.record_anchors():
        output(model, condition, latents, frames)
    # the window anchored on itself sees every key twice at the same positions: softmax is unchanged
    self_anchored = output(model, condition, latents, frames)
    with state.record_anchors():
        output(model, condition, latents, torch.tensor([0, 5]))
    other_anchored = output(model, condition, latents, frames)
    state.clear()
    assert torch.allclose(self_anchored, plain, atol=1e-5)
    assert (other_anchored - plain).abs().max() > 1e-3


def test_wan_latents_decode_to_4k_plus_1_frames_and_encode_back(window):
    _, model, _, latents = window
    assert [model.latent_frames(n) for n in (9, 21, 33, 34, 48)] == [3, 6, 9, 10, 13]
    frames = model.decode_frames(latents)
    assert frames.shape == (21, SIZE, SIZE, 3) and 0 <= frames.min() and frames.max() <= 1
    assert model.encode_frames(frames).shape == latents.shape


def test_flow_predictions_convert_to_x0_as_the_scheduler_does(window):
    _, model, _, latents = window
    scheduler = model.scheduler
    t = scheduler.timesteps[1]
    flow = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    x0 = prediction_to_x0(scheduler, flow, latents, t)
    scheduler._step_index = 1
    assert torch.allclose(x0, scheduler.convert_model_output(flow, sample=latents), atol=1e-6)
    assert torch.allclose(x0_to_prediction(scheduler, x0, latents, t), flow, atol=1e-5)


def test_unsupported_wan_variant_and_scheduler_are_refused_with_one_line(tmp_path, image):
    folder = tmp_path / "wan"
    tiny_wan().save_pretrained(folder)
    model = load_model(str(folder), torch.device("cpu"), torch.float32)
    assert isinstance(model, WanModel)
    model.scheduler = EulerDiscreteScheduler.from_config(model.scheduler.config)
    with pytest.raises(UserError, match="EulerDiscreteScheduler cannot step") as refused:
        model.prepare(Request(image, num_frames=9, height=SIZE, width=SIZE), torch.Generator())
    assert "\n" not in str(refused.value)
    index = folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "expand_timesteps": True}))
    with pytest.raises(UserError, match="Wan 2.2 TI2V-5B") as refused:
        load_model(str(folder), torch.device("cpu"), torch.float32)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("mode", ["rectify", "rectify_noise", "gradient", "gradient_guided"])
def test_feedback_with_given_cameras_pulls_wan_latents_through_its_autoencoder(image, mode):
    model = load_model("tiny-wan", torch.device("cpu"), torch.float32)
    # a prompt: with none, the conditional and unconditional passes agree and gradient_guided's step is 0
    request = Request(image, prompt="an orbit", num_frames=9, height=SIZE, width=SIZE)
    cams = orbit_cameras(9, width=SIZE, height=SIZE, arc_deg=40.0)
    cameras = [Camera(cams.cam_to_world[i], cams.K[i], SIZE) for i in range(9)]
    loop = FeedbackLoop(model, cameras, Feedback(mode=mode, start=1, iterations=2), 2, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    latents = sample(
        model, model.prepare(request, generator), request, Plan(steps=2), Stabilizers(), generator, feedback=loop
    )
    assert latents.shape == (1, 16, 3, 4, 4) and torch.isfinite(latents).all()
    assert len(loop.history) == 1 and loop.history[0]["moved_rms"] > 0


@pytest.mark.slow
def test_generate_with_tiny_wan_end_to_end_and_cached(tmp_path, image):
    import imageio.v3 as iio

    reference = tmp_path / "ref.png"
    iio.imwrite(reference, image)
    project = tmp_path / "p"
    code, out = run_json(
        "generate",
        project,
        "--image",
        reference,
        "--model",
        "tiny-wan",
        "--frames",
        33,
        "--set",
        "generate.steps=2",
        "--set",
        f"generate.height={SIZE}",
        "--set",
        f"generate.width={SIZE}",
        "--set",
        "generate.anchor_every=16",
        "--set",
        "generate.kv_cache_until=1",
    )
    assert code == 0, out
    frames = sorted((project / "generate" / "frames").glob("*.png"))
    assert len(frames) == 33 and iio.imread(frames[0]).shape == (SIZE, SIZE, 3)
    assert (project / "generate" / "video.mp4").stat().st_size > 0
    code, again = run_json("generate", project)
    assert code == 0 and again["stages"]["generate"]["status"] == "cached"
