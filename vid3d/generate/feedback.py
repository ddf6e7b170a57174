"""The feedback stabilizer: Gaussians fitted to the frames during denoising, their renders fed back.

At each acting step the fused model output is turned into the clean video it predicts (x0),
decoded to frames; one set of 3D Gaussians, kept from the previous acting step (warm start), is
trained a few iterations on those frames at their cameras, rendered at every camera, and the
prediction is pulled toward the renders, so the frames move toward what one 3D scene can show from
their cameras. The Gaussian fit is the splats stage's own training (`vid3d.splats.train.Trainer`).
How the renders pull (`MOVES`, one row per `generate.feedback` mode):

- rectify: x0 blended toward the renders' latents (VistaDream's rectification, in latent space).
- rectify_noise: VistaDream's multi-view consistency sampling (ICCV 2025): the noise that turns the
  current latents into the renders' latents, rescaled to the predicted noise's std, blended with it.
- gradient: a Polyak step on x0 against L1 + SSIM between decoded x0 and the renders, through the decoder.
- gradient_guided: guidedvd-3dgs' scene-grounding guidance (CVPR 2025): a step on the model output
  against the L2 between decoded x0 and the renders, as large as the model's own guidance correction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from vid3d.cameras import Camera
from vid3d.config import GenerateSettings, SplatsSettings

FeedbackMode = Literal["off", "rectify", "rectify_noise", "gradient", "gradient_guided"]
GUIDED = ("gradient_guided",)  # modes whose step is sized by the model's guidance correction
SSIM_LAMBDA = SplatsSettings.ssim_lambda  # the weight of (1 - SSIM) in the gradient's loss, as in training
BALL_POINTS = 5_000  # Gaussians the loop starts from (a quarter of poses.given's): plenty for 64-pixel frames


@dataclass
class Feedback:
    """The loop's settings; the defaults are the [generate] settings' (vid3d.config)."""

    mode: FeedbackMode = GenerateSettings.feedback  # off, or a row of MOVES
    start: int = GenerateSettings.feedback_start  # first acting step (0-based index into the schedule)
    stop: int = GenerateSettings.feedback_stop  # steps from here on do not act; 0: to the end
    weight: float = GenerateSettings.feedback_weight
    iterations: int = GenerateSettings.feedback_iterations  # Gaussian training iterations per acting step
    size: int = GenerateSettings.feedback_size  # render side in pixels; 0: the frames' own
    warm_start: bool = GenerateSettings.feedback_warm_start  # keep the Gaussians from step to step

    @classmethod
    def of(cls, settings: GenerateSettings) -> Feedback:
        """From [generate]: `mode` is `feedback`, every other field `feedback_<field>`."""
        return cls(
            **{f.name: getattr(settings, "feedback" if f.name == "mode" else f"feedback_{f.name}") for f in fields(cls)}
        )

    def acts(self, step: int, steps: int) -> bool:
        return self.mode != "off" and self.weight > 0 and self.start <= step < (self.stop or steps)


# -- model output <-> x0 <-> noise -----------------------------------------------------------------
def _prediction_kind(scheduler) -> str:
    return scheduler.config.get("prediction_type", "flow_prediction")  # flow-matching schedulers name none


def _sigma(scheduler, t: torch.Tensor) -> float:
    index = int((scheduler.timesteps == t).nonzero()[0])
    return float(scheduler.sigmas[index])


def _noise_levels(scheduler, t: torch.Tensor) -> tuple[float, float, float]:
    """(a, s, c) with x_t = a * x0 + s * eps for the latents the scheduler steps, and c the scale
    of the model's input (1 but for variance-exploding schedulers, whose model sees c * x_t)."""
    if _prediction_kind(scheduler) == "flow_prediction":  # flow matching (Wan): x_t = (1 - sigma) x0 + sigma eps
        sigma = _sigma(scheduler, t)
        return 1.0 - sigma, sigma, 1.0
    if getattr(scheduler, "init_noise_sigma", 1.0) != 1.0:  # variance exploding: Euler's x = x0 + sigma * eps
        sigma = _sigma(scheduler, t)
        return 1.0, sigma, 1.0 / (sigma**2 + 1) ** 0.5
    alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    return alpha_bar**0.5, (1 - alpha_bar) ** 0.5, 1.0


def _x0_coefficients(scheduler, t: torch.Tensor) -> tuple[float, float]:
    """(p, q) with x0 = p * latents + q * model output, for the scheduler's prediction type."""
    kind = _prediction_kind(scheduler)
    if kind == "sample":
        return 0.0, 1.0
    if kind == "flow_prediction":  # x_t = (1 - sigma) x0 + sigma eps, and the model predicts eps - x0 (Wan)
        return 1.0, -_sigma(scheduler, t)
    a, s, c = _noise_levels(scheduler, t)
    if kind == "epsilon":
        return 1 / a, -s / a
    if kind == "v_prediction":  # v is defined on the variance-preserving input c * x_t
        return a * c * c, -s * c
    raise ValueError(f"prediction type {kind!r} is not supported by the feedback loop")


def noise_of(scheduler, x0: torch.Tensor, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The noise eps with latents = a * x0 + s * eps at `t` (the scheduler's latents, not the model's
    scaled input)."""
    a, s, _ = _noise_levels(scheduler, t)
    return (latents - a * x0) / s


def x0_of_noise(scheduler, noise: torch.Tensor, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean latents x0 with latents = a * x0 + s * noise at `t` (inverse of noise_of)."""
    a, s, _ = _noise_levels(scheduler, t)
    return (latents - s * noise) / a


def prediction_to_x0(scheduler, output: torch.Tensor, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean latents a model output predicts at `latents` (the latents the scheduler steps)."""
    p, q = _x0_coefficients(scheduler, t)
    return p * latents + q * output


def x0_to_prediction(scheduler, x0: torch.Tensor, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The model output that predicts `x0` at `latents` (inverse of prediction_to_x0)."""
    p, q = _x0_coefficients(scheduler, t)
    return (x0 - p * latents) / q


# -- the loop -----------------------------------------------------------------------------------------
class FeedbackLoop:
    """The 3D state carried through one sampling: Gaussians warm-started from acting step to step."""

    def __init__(
        self, model, cameras: list[Camera] | None, feedback: Feedback, steps: int, device: torch.device, seed: int = 0
    ):
        self.model, self.feedback, self.device, self.seed = model, feedback, device, seed
        self.cameras = cameras  # camera i for frame i; None until estimated
        self.estimated = not cameras  # no cameras: COLMAP on the frames of the first acting step
        acting = sum(feedback.acts(i, steps) for i in range(steps))
        # One learning-rate schedule over the whole sampling; no densification (as VistaDream: the
        # points of the initial ball are enough for 64-pixel frames) and view-independent colour
        # (view-dependent colour would let the Gaussians explain disagreeing views instead of fixing them).
        schedule = acting * feedback.iterations if feedback.warm_start else feedback.iterations
        self.splat_settings = SplatsSettings(
            steps=max(1, schedule), sh_degree=0, densify=False, test_every=0, seed=seed
        )
        self.trainer = None
        self.history: list[dict] = []  # per acting step: the fit's loss and how far the prediction moved

    def acts(self, step: int, steps: int) -> bool:
        return self.feedback.acts(step, steps)

    @property
    def wants_corrections(self) -> bool:
        """Whether `apply` takes the fused guidance correction of the windows (see VideoModel.recording_corrections)."""
        return self.feedback.mode in GUIDED

    def apply(
        self,
        output: torch.Tensor,
        latents: torch.Tensor,
        t: torch.Tensor,
        correction: torch.Tensor | None = None,  # like output: what the model's guidance adds (GUIDED modes)
    ) -> torch.Tensor:
        """The fused model output, pulled toward what the Gaussians render."""
        if self.wants_corrections and correction is None:
            raise ValueError(f"feedback {self.feedback.mode}: apply needs the model's guidance correction")
        scheduler = self.model.scheduler
        x0 = prediction_to_x0(scheduler, output, latents, t)
        frames = self.model.decode_frames(x0)
        if not self.cameras:
            self.cameras = estimated_cameras(frames, self.seed)
        # Decoders with temporal compression may give more frames than there are cameras: those
        # frames are left as decoded.
        n = min(len(frames), len(self.cameras))
        renders = frames.detach().clone()
        renders[:n] = self.fit(frames[:n])
        move = MOVES[self.feedback.mode]
        moved = move(self.model, x0, renders, latents, t, correction, self.feedback.weight) - x0
        self.history.append(
            {
                "fit_l1": round(float((frames - renders).abs().mean()), 5),
                "moved_rms": round(float(moved.pow(2).mean().sqrt()), 5),
            }
        )
        return x0_to_prediction(scheduler, x0 + moved, latents, t)

    def fit(self, frames: torch.Tensor) -> torch.Tensor:
        """Train the Gaussians on `frames` [F, H, W, 3] in [0, 1] (at the render size) and render
        every camera back at the frames' size."""
        from vid3d.splats.data import Dataset

        height, width = frames.shape[1:3]
        side = self.feedback.size or width
        small = (
            frames
            if side == width
            else F.interpolate(frames.permute(0, 3, 1, 2), size=(side * height // width, side), mode="area").permute(
                0, 2, 3, 1
            )
        )
        n = len(frames)
        cameras = [camera.resized(width, height) for camera in self.cameras[:n]]
        data = Dataset.of_cameras(
            names=[f"{i:05d}" for i in range(n)],
            images=small.detach().float().to(self.device),
            cameras=cameras,
            train=list(range(n)),
            test=[],
        )
        if self.trainer is None or not self.feedback.warm_start:
            self.trainer = self._start(data)
        else:
            self.trainer.set_targets(data)  # warm start: the same Gaussians and optimiser state, new targets
        with torch.enable_grad():  # the sampler runs without gradients; the fit needs them
            self.trainer.train(self.feedback.iterations)
        renders = self.trainer.render_all()
        if side != width:
            renders = F.interpolate(
                renders.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        return renders.to(frames.dtype)

    def _start(self, data):
        from vid3d.poses.given import coloured_ball
        from vid3d.splats.rasterize import resolve_backend
        from vid3d.splats.train import Trainer

        images = (data.images.clamp(0, 1) * 255).round().byte().cpu().numpy()
        points = coloured_ball(data.cameras(), lambda i: images[i], BALL_POINTS, self.seed)
        backend = resolve_backend("auto", self.device)
        return Trainer(
            data,
            self.splat_settings,
            backend,
            self.device,
            (points[0].astype(np.float32), points[1].astype(np.float32) / 255.0),
        )


def estimated_cameras(frames: torch.Tensor, seed: int) -> list[Camera]:
    """The cameras of decoded frames [F, H, W, 3] in [0, 1], from COLMAP (the poses stage's own
    steps: SIFT, sequential matching with loop closing, the mapper); every frame must register."""
    from vid3d.config import PosesSettings
    from vid3d.errors import StageError
    from vid3d.poses.colmap import estimate_cameras
    from vid3d.ui import log

    images = (frames.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    settings = PosesSettings(camera_model="PINHOLE", min_registered=1.0, seed=seed)  # generated video: no lens
    try:
        return estimate_cameras(images, settings)
    except StageError as error:
        log.info("feedback: %s", error)
        raise StageError(
            "generate.feedback: COLMAP could not register every frame of the first acting step's "
            "prediction to estimate the cameras; pass the frames' cameras with --cameras "
            "cameras.json (vid3d's cameras.json format)"
        ) from None


def consistency_loss(frames: torch.Tensor, renders: torch.Tensor) -> torch.Tensor:
    """The splats training's loss between frames and renders [F, H, W, 3], at its default weight."""
    from vid3d.splats.train import photometric_loss

    return photometric_loss(frames, renders, SSIM_LAMBDA)


def gradient_step(model, x0: torch.Tensor, renders: torch.Tensor, weight: float) -> torch.Tensor:
    """x0 moved against the consistency loss between its decoded frames and `renders`, by the step
    that would cut the loss by `weight` of itself if the loss were linear (a Polyak step: scale-free)."""
    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)
        loss = consistency_loss(model.decode_frames(x), renders.detach())
        (grad,) = torch.autograd.grad(loss, x)
    return x0 - weight * float(loss.detach()) / grad.pow(2).sum().clamp(min=1e-20) * grad


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).mean().sqrt()


def rectify_noise_step(
    scheduler,
    x0: torch.Tensor,  # the prediction's clean latents
    rendered: torch.Tensor,  # the renders' latents, like x0
    latents: torch.Tensor,  # the scheduler's current latents x_t
    t: torch.Tensor,
    weight: float,
) -> torch.Tensor:
    """VistaDream's multi-view consistency sampling: the noise that would turn x_t into the renders'
    latents, rescaled to the predicted noise's standard deviation, blended with the predicted noise
    by `weight`, and turned back into clean latents at x_t."""
    a, _, _ = _noise_levels(scheduler, t)
    if a == 0:  # pure noise (flow matching at sigma 1): x_t says nothing of x0, so neither does its noise
        return x0
    predicted = noise_of(scheduler, x0, latents, t)
    rectified = noise_of(scheduler, rendered, latents, t)
    rectified = rectified * (predicted.std() / rectified.std().clamp(min=1e-12))
    return x0_of_noise(scheduler, (1 - weight) * predicted + weight * rectified, latents, t)


def guided_gradient_step(
    model,
    x0: torch.Tensor,  # the prediction's clean latents
    renders: torch.Tensor,  # [F, H, W, 3] in [0, 1], as decode_frames(x0) gives
    latents: torch.Tensor,  # the scheduler's current latents x_t
    t: torch.Tensor,
    correction: torch.Tensor,  # like the model output: what the model's guidance adds at this step
    weight: float,
) -> torch.Tensor:
    """guidedvd-3dgs' scene-grounding guidance: the model output moved down the gradient of the L2
    between decoded x0 and the renders (through the decoder, not the denoiser) by `weight` times the
    rms of the model's own guidance correction, so one weight fits every timestep; returns the x0
    that output predicts."""
    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)
        loss = F.mse_loss(model.decode_frames(x).float(), renders.detach().float())
        (grad,) = torch.autograd.grad(loss, x)
    _, q = _x0_coefficients(model.scheduler, t)  # moving the output by delta moves x0 by q * delta
    direction = grad / q  # the output's move along -direction moves x0 along -grad
    step = -weight * _rms(correction) * direction / _rms(direction).clamp(min=1e-20)
    return x0 + q * step.to(x0.dtype)


def _rectify(model, x0, renders, latents, t, correction, weight):
    return x0 + weight * (model.encode_frames(renders) - x0)


def _rectify_noise(model, x0, renders, latents, t, correction, weight):
    return rectify_noise_step(model.scheduler, x0, model.encode_frames(renders), latents, t, weight)


def _gradient(model, x0, renders, latents, t, correction, weight):
    return gradient_step(model, x0, renders, weight)


# Each mode's move: (model, x0, renders, latents, t, correction, weight) -> the moved x0.
MOVES: dict[str, Callable[..., torch.Tensor]] = {
    "rectify": _rectify,
    "rectify_noise": _rectify_noise,
    "gradient": _gradient,
    "gradient_guided": guided_gradient_step,
}
