"""The feedback stabilizer: prediction <-> x0 conversions, and the loop on a synthetic model whose
frames are a true orbit, each frame shifted in colour by its own amount (views that disagree)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_line, run_cli, run_json, tree
from diffusers import CogVideoXDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from vid3d.cameras import Camera, stacked
from vid3d.config import GenerateSettings
from vid3d.errors import StageError
from vid3d.generate.adapters.base import Request, VideoModel
from vid3d.generate.feedback import (
    Feedback,
    FeedbackLoop,
    consistency_loss,
    gradient_step,
    prediction_to_x0,
    x0_to_prediction,
)
from vid3d.generate.sampler import Plan, Stabilizers, sample
from vid3d.generate.stage import feedback_loop
from vid3d.scenes import make_scene, orbit_cameras, render
from vid3d.splats.model import load_ply as read_ply

EXAMPLES = Path(__file__).parents[1] / "examples"
FRAMES, SIZE, STEPS = 12, 32, 8

SCHEDULERS = [
    (DDIMScheduler, "epsilon"),
    (DDIMScheduler, "v_prediction"),
    (DDIMScheduler, "sample"),
    (EulerDiscreteScheduler, "epsilon"),
    (EulerDiscreteScheduler, "v_prediction"),
    (DPMSolverMultistepScheduler, "epsilon"),
    (CogVideoXDPMScheduler, "v_prediction"),
]


@pytest.mark.parametrize("kind,prediction", SCHEDULERS, ids=lambda v: getattr(v, "__name__", v))
def test_x0_and_model_output_convert_both_ways(kind, prediction):
    scheduler = kind(prediction_type=prediction, **({"clip_sample": False} if kind is DDIMScheduler else {}))
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 5, generator=generator) * float(scheduler.init_noise_sigma)
    output = torch.randn(2, 4, 5, generator=generator)
    x0 = prediction_to_x0(scheduler, output, latents, t)
    assert torch.allclose(x0_to_prediction(scheduler, x0, latents, t), output, atol=1e-4)
    if kind in (DDIMScheduler, EulerDiscreteScheduler):  # their step reports the x0 it used: the known answer
        scheduler._step_index = None
        expected = scheduler.step(output, t, latents).pred_original_sample
        assert torch.allclose(x0, expected, atol=1e-5)


class ShiftedOrbit(VideoModel):
    """Predicts the true orbit with each frame's colours shifted by its own random amount; its
    "autoencoder" is a fixed non-linear map, so the loop's decode and encode are exercised."""

    supports_feedback = True

    def __init__(self, shift: float = 0.15, seed: int = 0, size: int = SIZE, arc: float = 180.0, scene=None):
        super().__init__()
        self.size = size
        self.cams = orbit_cameras(FRAMES, width=size, height=size, arc_deg=arc)
        truth = render(scene or make_scene(3, simple=True), self.cams, supersample=2).images / 255.0
        self.truth = torch.tensor(truth, dtype=torch.float32)  # [F, H, W, 3]
        rng = np.random.default_rng(seed)
        self.shift = torch.tensor(rng.uniform(-shift, shift, (FRAMES, 1, 1, 3)), dtype=torch.float32)
        self.window, self.device, self.dtype = FRAMES, torch.device("cpu"), torch.float32
        self.scheduler = DDIMScheduler(
            prediction_type="sample", set_alpha_to_one=True, timestep_spacing="trailing", clip_sample=False
        )

    def prepare(self, request, generator):
        return None

    def latent_shape(self, request, num_latent_frames):
        return (1, num_latent_frames, 3, self.size, self.size)

    def latent_frames(self, num_frames):
        return num_frames

    def denoise(self, latents, t, condition, frames):
        return self.encode_frames((self.truth + self.shift).clamp(0.02, 0.98)[frames])

    def decode(self, latents, condition):
        return (self.decode_frames(latents) * 255).round().byte().numpy()

    def decode_frames(self, latents):
        return torch.sigmoid(2 * latents[0]).permute(0, 2, 3, 1)

    def encode_frames(self, frames):
        return (torch.logit(frames.clamp(1e-3, 1 - 1e-3)) / 2).permute(0, 3, 1, 2)[None]

    def layout_of(self, processor_name):
        return None

    def cameras(self, request):
        return [Camera(self.cams.cam_to_world[i], self.cams.K[i], self.size) for i in range(FRAMES)]


class UncalibratedOrbit(ShiftedOrbit):
    """A textured orbit (so COLMAP can register it) from a model that gives no cameras."""

    def __init__(self):
        super().__init__(shift=0.05, size=128, arc=90.0, scene=make_scene(2))

    def cameras(self, request):
        return None


def run(model, feedback: Feedback | None):
    request = Request(image=np.zeros((model.size, model.size, 3), np.uint8), num_frames=FRAMES)
    generator = torch.Generator().manual_seed(0)
    loop = (
        None if feedback is None else FeedbackLoop(model, model.cameras(request), feedback, STEPS, torch.device("cpu"))
    )
    latents = sample(model, None, request, Plan(steps=STEPS), Stabilizers(), generator, feedback=loop)
    return model.decode_frames(latents), loop


def test_weight_zero_leaves_the_sampler_bit_for_bit():
    model = ShiftedOrbit()
    plain, _ = run(model, None)
    off, loop = run(model, Feedback(mode="rectify", start=0, weight=0.0))
    assert torch.equal(plain, off) and loop.trainer is None


@pytest.mark.slow
def test_rectify_halves_the_frames_disagreement_with_the_truth():
    model = ShiftedOrbit()
    plain, _ = run(model, None)
    fed, loop = run(model, Feedback(mode="rectify", start=4, weight=0.9, iterations=150))
    error = lambda frames: float((frames - model.truth).abs().mean())
    assert len(loop.history) == STEPS - 4
    assert error(fed) < 0.5 * error(plain), (error(fed), error(plain))


def relative_rotation_degrees(cam_to_world: np.ndarray) -> np.ndarray:
    """Angle between every pair of cameras' orientations: the same in any world frame."""
    R = cam_to_world[:, :3, :3]
    cos = (np.einsum("aji,bjk->abik", R, R).trace(axis1=2, axis2=3) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


@pytest.mark.slow
def test_cameras_are_estimated_with_colmap_when_the_model_gives_none():
    model = UncalibratedOrbit()
    _, loop = run(model, Feedback(mode="rectify", start=STEPS - 2, weight=0.5, iterations=10))
    assert loop.estimated and len(loop.history) == 2
    truth = relative_rotation_degrees(model.cams.cam_to_world)
    error = np.abs(relative_rotation_degrees(stacked(loop.cameras)[0]) - truth)
    assert error.max() < 2.5, error.max()  # pairs up to 90 degrees apart


def test_the_gradient_step_lowers_the_loss_it_differentiates():
    model = ShiftedOrbit()
    x0 = model.predict(None, None, None, torch.arange(FRAMES))
    renders = model.truth
    loss = lambda x: float(consistency_loss(model.decode_frames(x), renders))
    stepped = gradient_step(model, x0, renders, weight=0.3)
    assert loss(stepped) < loss(x0) - 0.1 * loss(x0)


@pytest.mark.slow
def test_generate_with_feedback_keeps_the_gaussians_and_measures_epipolar_error(tmp_path):
    """The whole stage with the embedded model (few steps): generate/splats.ply, the loop's history
    and the epipolar error in metrics.json."""
    project = tmp_path / "project"
    code, out = run_json(
        "generate",
        project,
        "--image",
        EXAMPLES / "reference.png",
        "--frames",
        16,
        "--set",
        "generate.steps=4",
        "--set",
        "generate.feedback=rectify",
        "--set",
        "generate.feedback_start=2",
        "--set",
        "generate.feedback_iterations=20",
    )
    assert code == 0, out
    assert str(project / "generate" / "splats.ply") in out["outputs"]
    metrics = json.loads((project / "generate" / "metrics.json").read_text())
    assert len(metrics["feedback"]) == 2 and metrics["epipolar_px"] >= 0
    generated = read_ply(project / "generate" / "splats.ply")
    assert len(generated["means"]) > 0

    # reconstruct may start from those Gaussians: one step moves them by at most a learning rate
    code, out = run_json(
        "reconstruct",
        project,
        "--set",
        "splats.init=generate",
        "--set",
        "splats.steps=1",
        "--set",
        "splats.densify=false",
    )
    assert code == 0, out
    trained = read_ply(project / "splats" / "splats.ply")
    assert trained["means"].shape == generated["means"].shape
    assert float((trained["means"] - generated["means"]).abs().max().detach()) < 1e-2
    assert trained["shN"].shape[1] == 15  # raised to the default SH degree 3


@pytest.mark.slow
def test_splats_init_generate_without_generated_gaussians_exits_2(tmp_path):
    project = tmp_path / "project"
    code, _ = run_json(
        "generate", project, "--image", EXAMPLES / "reference.png", "--frames", 16, "--set", "generate.steps=1"
    )
    assert code == 0
    before = tree(project)
    result = run_cli("reconstruct", project, "--set", "splats.init=generate")
    assert result.returncode == 2 and "generate/splats.ply" in error_line(result.stderr)
    assert tree(project) == before


SVD = [
    "--model",
    "tiny-svd",
    "--frames",
    4,
    "--set",
    "generate.steps=2",
    "--set",
    "generate.height=32",
    "--set",
    "generate.width=32",
    "--set",
    "generate.feedback=rectify",
    "--set",
    "generate.feedback_start=0",
    "--set",
    "generate.feedback_iterations=5",
]


def write_cameras(path, frames: int):
    cams = orbit_cameras(frames, width=SIZE, height=SIZE, arc_deg=40.0)
    path.write_text(
        json.dumps(
            {
                "frames": [
                    {
                        "frame": i,
                        "camera_to_world": cams.cam_to_world[i].tolist(),
                        "K": cams.K[i].tolist(),
                        "width": SIZE,
                    }
                    for i in range(frames)
                ]
            }
        )
    )
    return path


@pytest.mark.slow
def test_feedback_without_cameras_fails_with_one_line(tmp_path):
    result = run_cli("generate", tmp_path / "project", "--image", EXAMPLES / "reference.png", *SVD)
    assert result.returncode == 1
    assert "--cameras" in error_line(result.stderr)


@pytest.mark.slow
def test_given_cameras_drive_the_feedback_of_a_model_without_its_own(tmp_path):
    cameras = write_cameras(tmp_path / "cameras.json", 4)
    code, out = run_json(
        "generate", tmp_path / "project", "--image", EXAMPLES / "reference.png", *SVD, "--cameras", cameras
    )
    assert code == 0, out
    assert len(json.loads((tmp_path / "project" / "generate" / "metrics.json").read_text())["feedback"]) == 2
    assert (tmp_path / "project" / "generate" / "splats.ply").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["frame count", "broken"])
def test_bad_cameras_exit_2_and_leave_the_project_as_it_was(tmp_path, problem):
    project = tmp_path / "project"
    code, _ = run_json(
        "generate",
        project,
        "--image",
        EXAMPLES / "reference.png",
        "--model",
        "tiny-svd",
        "--frames",
        4,
        "--set",
        "generate.steps=1",
        "--set",
        "generate.height=32",
        "--set",
        "generate.width=32",
    )
    assert code == 0
    before = tree(project)
    cameras = tmp_path / "cameras.json"
    if problem == "broken":
        cameras.write_text('{"frames": [{"frame": 0}')
    else:
        write_cameras(cameras, 3)
    result = run_cli("generate", project, *SVD, "--cameras", cameras)
    assert result.returncode == 2 and str(cameras) in error_line(result.stderr)
    assert tree(project) == before


@pytest.mark.slow
def test_cogvideox_takes_the_gradient_feedback_through_its_3d_autoencoder(tmp_path):
    cameras = write_cameras(tmp_path / "cameras.json", 9)
    code, out = run_json(
        "generate",
        tmp_path / "project",
        "--image",
        EXAMPLES / "reference.png",
        "--model",
        "tiny-cogvideox",
        "--frames",
        9,
        "--set",
        "generate.steps=2",
        "--set",
        "generate.height=32",
        "--set",
        "generate.width=32",
        "--set",
        "generate.feedback=gradient",
        "--set",
        "generate.feedback_start=0",
        "--set",
        "generate.feedback_iterations=5",
        "--cameras",
        cameras,
    )
    assert code == 0, out
    metrics = json.loads((tmp_path / "project" / "generate" / "metrics.json").read_text())
    assert metrics["feedback_cameras"] == "given" and len(metrics["feedback"]) == 2
    assert all(step["moved_rms"] > 0 for step in metrics["feedback"])


def test_a_model_without_a_differentiable_decoder_is_refused_with_one_line():
    class NoDecoder(ShiftedOrbit):
        supports_feedback = False
        decode_frames = VideoModel.decode_frames

    request = Request(image=np.zeros((SIZE, SIZE, 3), np.uint8), num_frames=FRAMES)
    with pytest.raises(StageError, match="not supported for NoDecoder"):
        feedback_loop(NoDecoder(), request, GenerateSettings(feedback="rectify"), torch.device("cpu"))
