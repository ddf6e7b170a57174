"""The feedback stabilizer: prediction <-> x0 conversions, and the loop on a synthetic model whose
frames are a true orbit, each frame shifted in colour by its own amount (views that disagree)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_line, run_cli, run_json, tree
from diffusers import (
    CogVideoXDPMScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from vid3d.cameras import Camera, stacked
from vid3d.config import GenerateSettings
from vid3d.errors import StageError, UserError
from vid3d.generate.adapters.base import Request, VideoModel
from vid3d.generate.adapters.orbit import OrbitVideoModel
from vid3d.generate.feedback import (
    GUIDED,
    Feedback,
    FeedbackLoop,
    consistency_loss,
    gradient_step,
    guided_gradient_step,
    noise_of,
    prediction_to_x0,
    rectify_noise_step,
    x0_of_noise,
    x0_to_prediction,
)
from vid3d.generate.ranks import Ranks
from vid3d.generate.sampler import Plan, Stabilizers, sample
from vid3d.generate.stage import feedback_loop, read_reference
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


class GuidedShiftedOrbit(ShiftedOrbit):
    """ShiftedOrbit with classifier-free guidance: away from the true frames, toward the shifted ones."""

    def denoise(self, latents, t, condition, frames):
        cond = super().denoise(latents, t, condition, frames)
        uncond = self.encode_frames(self.truth.clamp(0.02, 0.98)[frames])
        return self.classifier_free(uncond, cond, 1.5)

    def guides(self, condition):
        return True


class UncalibratedOrbit(ShiftedOrbit):
    """A textured orbit (so COLMAP can register it) from a model that gives no cameras."""

    def __init__(self):
        super().__init__(shift=0.05, size=128, arc=90.0, scene=make_scene(2))

    def cameras(self, request):
        return None


def run(model, feedback: Feedback | None, ranks: Ranks | None = None):
    request = Request(image=np.zeros((model.size, model.size, 3), np.uint8), num_frames=FRAMES)
    generator = torch.Generator().manual_seed(0)
    loop = (
        None if feedback is None else FeedbackLoop(model, model.cameras(request), feedback, STEPS, torch.device("cpu"))
    )
    latents = sample(model, None, request, Plan(steps=STEPS), Stabilizers(), generator, feedback=loop, ranks=ranks)
    return model.decode_frames(latents), loop


@pytest.mark.parametrize("mode", ["rectify", "rectify_noise", "gradient", "gradient_guided"])
def test_weight_zero_leaves_the_sampler_bit_for_bit(mode):
    model = GuidedShiftedOrbit() if mode in GUIDED else ShiftedOrbit()
    plain, _ = run(model, None)
    off, loop = run(model, Feedback(mode=mode, start=0, weight=0.0))
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


# -- rectify_noise and gradient_guided --------------------------------------------------------------
def _noised(scheduler, x0, noise, t):
    """x_t by the scheduler's own forward process: the reference the noise solve must invert."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler.scale_noise(x0, t[None], noise)
    return scheduler.add_noise(x0, noise, t[None])


NOISE_SCHEDULERS = {
    "ddim-epsilon": lambda: DDIMScheduler(prediction_type="epsilon", clip_sample=False),
    "ddim-v": lambda: DDIMScheduler(prediction_type="v_prediction", clip_sample=False),
    "euler-variance-exploding": lambda: EulerDiscreteScheduler(prediction_type="epsilon"),
    "flow-match-euler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    "unipc-flow (tiny Wan's)": lambda: UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    ),
}


@pytest.mark.parametrize("make", NOISE_SCHEDULERS.values(), ids=NOISE_SCHEDULERS.keys())
@pytest.mark.parametrize("index", [1, 5, 9])
def test_the_noise_solve_inverts_the_schedulers_forward_process(make, index):
    scheduler = make()
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[index]
    generator = torch.Generator().manual_seed(index)
    # float64: at the last steps sigma is under 0.01, and eps = (x_t - a x0) / sigma would show float32's rounding
    x0, eps = torch.randn(2, 1, 3, 4, 5, generator=generator, dtype=torch.float64)
    latents = _noised(scheduler, x0, eps, t)
    assert torch.allclose(noise_of(scheduler, x0, latents, t), eps, atol=1e-5)
    assert torch.allclose(x0_of_noise(scheduler, eps, latents, t), x0, atol=1e-5)
    # the blend, given renders whose latents are the prediction's own x0, gives the model output back
    output = torch.randn(1, 3, 4, 5, generator=generator, dtype=torch.float64)
    own = prediction_to_x0(scheduler, output, latents, t)
    blended = rectify_noise_step(scheduler, own, own.clone(), latents, t, weight=0.5)
    assert torch.allclose(x0_to_prediction(scheduler, blended, latents, t), output, atol=1e-4)


def test_rectify_noise_given_renders_of_the_prediction_returns_the_model_output(monkeypatch):
    model = ShiftedOrbit()
    loop = FeedbackLoop(model, model.cameras(None), Feedback(mode="rectify_noise", weight=0.5), STEPS, "cpu")
    monkeypatch.setattr(loop, "fit", lambda frames: frames)  # the Gaussians render the frames themselves
    model.scheduler.set_timesteps(STEPS)
    t = model.scheduler.timesteps[5]
    output = model.predict(None, t, None, torch.arange(FRAMES))
    latents = _noised(model.scheduler, output, torch.randn(output.shape, generator=torch.Generator()), t)
    assert torch.allclose(loop.apply(output, latents, t), output, atol=1e-4)
    assert len(loop.history) == 1 and loop.history[0]["moved_rms"] < 1e-4


def test_the_guided_gradient_step_is_the_guidance_corrections_size_and_lowers_the_l2():
    shifted = ShiftedOrbit()
    scheduler = DDIMScheduler(prediction_type="epsilon", clip_sample=False)  # q < 0: the sign matters
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[7]
    model = type("EpsilonOrbit", (), {"scheduler": scheduler, "decode_frames": staticmethod(shifted.decode_frames)})
    generator = torch.Generator().manual_seed(0)
    x0 = shifted.predict(None, t, None, torch.arange(FRAMES))
    latents = _noised(scheduler, x0, torch.randn(x0.shape, generator=generator), t)
    output = x0_to_prediction(scheduler, x0, latents, t)
    correction = 0.3 * torch.randn(x0.shape, generator=generator)
    rms = lambda x: float(x.pow(2).mean().sqrt())
    loss = lambda x: float(torch.nn.functional.mse_loss(shifted.decode_frames(x), shifted.truth))

    stepped = guided_gradient_step(model, x0, shifted.truth, latents, t, correction, weight=0.5)
    moved = x0_to_prediction(scheduler, stepped, latents, t) - output
    assert rms(moved) == pytest.approx(0.5 * rms(correction), rel=1e-3)
    assert loss(stepped) < 0.9 * loss(x0), (loss(stepped), loss(x0))


@pytest.fixture(scope="module")
def orbit():
    return OrbitVideoModel.load(None)


def orbit_run(model, mode: str, stabilizers: Stabilizers, frames: int = 6, steps: int = 3):
    """A short orbit from the reference image, the loop acting from step 1 (t 666 and 332: below the
    model's guidance_from_t)."""
    request = Request(image=read_reference(EXAMPLES / "reference.png"), num_frames=frames)
    generator = torch.Generator().manual_seed(0)
    condition = model.prepare(request, generator)
    feedback = Feedback(mode=mode, start=1, weight=0.5, iterations=5)
    loop = FeedbackLoop(model, model.cameras(request), feedback, steps, torch.device("cpu"))
    latents = sample(model, condition, request, Plan(steps=steps), stabilizers, generator, feedback=loop)
    return latents, loop


def test_rectify_noise_runs_on_the_embedded_model(orbit):
    latents, loop = orbit_run(orbit, "rectify_noise", Stabilizers())
    assert torch.isfinite(latents).all()
    assert len(loop.history) == 2 and all(step["moved_rms"] > 0 for step in loop.history)


def test_gradient_guided_runs_on_the_embedded_model_with_anchors_and_the_kv_cache(orbit):
    calls = []
    guide = orbit.guide.forward
    orbit.guide.forward = lambda *args: calls.append(float(args[1])) or guide(*args)
    try:
        latents, loop = orbit_run(orbit, "gradient_guided", Stabilizers(anchors=(0,), kv_cache_until=1))
    finally:
        del orbit.guide.forward
    assert torch.isfinite(latents).all()
    assert len(loop.history) == 2 and all(step["moved_rms"] > 0 for step in loop.history)
    # guidance at 999 (the anchors' pass, then the window); at the acting steps the window's call for the size only
    assert calls == [999.0, 999.0, 666.0, 332.0]


def test_recording_the_correction_leaves_the_embedded_models_prediction_bit_for_bit(orbit):
    request = Request(image=read_reference(EXAMPLES / "reference.png"), num_frames=4)
    condition = orbit.prepare(request, torch.Generator().manual_seed(0))
    latents = torch.randn(1, 4, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    frames = torch.arange(4)
    for t in (torch.tensor(500), torch.tensor(800)):  # below and above guidance_from_t
        plain = orbit.predict(latents, t, condition, frames)
        with orbit.recording_corrections() as corrections:
            recorded = orbit.predict(latents, t, condition, frames)
        assert torch.equal(plain, recorded)
        assert len(corrections) == 1 and corrections[0].shape == plain.shape and corrections[0].abs().max() > 0
    assert orbit.guidance_corrections is None


def test_classifier_free_guidance_records_what_it_adds_to_the_conditional_prediction():
    model = GuidedShiftedOrbit()
    with model.recording_corrections() as corrections:
        guided = model.predict(None, None, None, torch.arange(FRAMES))
    cond = ShiftedOrbit.denoise(model, None, None, None, torch.arange(FRAMES))
    assert torch.allclose(cond + corrections[0], guided, atol=1e-6)


@pytest.mark.parametrize("case", ["no guide transformer", "guidance 1"])
def test_gradient_guided_without_guidance_is_refused_before_sampling_with_one_line(orbit, case):
    model = OrbitVideoModel.tiny() if case == "no guide transformer" else orbit
    request = Request(image=read_reference(EXAMPLES / "reference.png"), num_frames=4, guidance=1.0)
    generator = torch.Generator().manual_seed(0)
    condition = model.prepare(request, generator)
    loop = FeedbackLoop(model, model.cameras(request), Feedback(mode="gradient_guided", start=0), 2, "cpu")
    steps = []
    with pytest.raises(UserError, match="generate.feedback=gradient_guided: OrbitVideoModel applies no guidance") as e:
        sample(model, condition, request, Plan(steps=2), Stabilizers(), generator, lambda i, n: steps.append(i), loop)
    assert "\n" not in str(e.value) and steps == []


def test_gradient_guided_on_several_ranks_is_refused_with_one_line():
    with pytest.raises(UserError, match="generate.feedback=gradient_guided: runs on one rank only"):
        run(GuidedShiftedOrbit(), Feedback(mode="gradient_guided", start=0), Ranks(rank=0, world=2))
