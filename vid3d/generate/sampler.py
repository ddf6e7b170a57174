"""Sampling a video longer than the model's window: overlapping windows, fused every step.

At each step the model predicts every window (after one pass over the anchor frames, when anchor
attention is on), the predictions are fused frame by frame, and ONE scheduler step moves the whole
video's latent. Stabilizers (see `Stabilizers`) are each a switch, so each can be measured alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from diffusers import (
    CogVideoXDPMScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

from vid3d.config import GenerateSettings
from vid3d.errors import UserError

from .adapters.base import Request, VideoModel
from .ranks import Ranks
from .windows import Weighting, fuse, shared_noise, windows

SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}


@dataclass
class Stabilizers:
    """Each stabilizer's switch; the defaults are the [generate] settings' (vid3d.config)."""

    shared_noise: bool = GenerateSettings.shared_noise  # one noise field sliced per window (else one per window)
    freenoise: bool = GenerateSettings.freenoise  # frames past the first window reuse its noise, shuffled
    anchors: tuple[int, ...] = ()  # latent frames every window also attends to
    kv_cache_until: int = GenerateSettings.kv_cache_until  # steps whose self-attention K/V later steps reuse (0: off)
    kv_decay: float = GenerateSettings.kv_decay

    @classmethod
    def of(cls, settings: GenerateSettings, anchors: tuple[int, ...] = ()) -> Stabilizers:
        return cls(**_same_fields(cls, settings), anchors=anchors)


@dataclass
class Plan:
    """How the windows are laid and stepped; the defaults are the [generate] settings' (vid3d.config)."""

    steps: int = GenerateSettings.steps
    window: int = GenerateSettings.window  # latent frames per window; 0: the model's
    stride: int = GenerateSettings.stride  # latent frames between window starts; 0: half a window
    weighting: Weighting = GenerateSettings.weighting
    loop: bool = GenerateSettings.loop  # circular windows: the last frames share windows with the first
    scheduler: str = GenerateSettings.scheduler  # default (the model's own), euler, ddim or dpm++

    @classmethod
    def of(cls, settings: GenerateSettings) -> Plan:
        return cls(**_same_fields(cls, settings))


def _same_fields(cls, settings: GenerateSettings) -> dict[str, Any]:
    """The settings' values of the fields `cls` shares with them (one name, one meaning)."""
    return {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}


def frame_sets(num_latent: int, model_window: int, plan: Plan) -> list[torch.Tensor]:
    window = min(plan.window or model_window, num_latent)
    stride = plan.stride or max(window // 2, 1)
    if num_latent <= window:
        return [torch.arange(num_latent)]
    return windows(num_latent, window, stride, circular=plan.loop)


def use_scheduler(model: VideoModel, name: str) -> None:
    """Swap the model's scheduler for another diffusers scheduler built from the same config."""
    if name == "default":
        return
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: default, {', '.join(SCHEDULERS)}")
    model.scheduler = SCHEDULERS[name].from_config(model.scheduler.config)


def window_noises(
    shape: tuple[int, ...],
    sets: list[torch.Tensor],
    frame_dim: int,
    stabilizers: Stabilizers,
    generator: torch.Generator,
    device,
    dtype,
) -> list[torch.Tensor]:
    """The noise each window sees: slices of one field (shared), or one draw per window."""
    if stabilizers.shared_noise:
        window = len(sets[0]) if stabilizers.freenoise else 0
        field = shared_noise(shape, frame_dim, generator, window, device, dtype)
        return [field.index_select(frame_dim, frames.to(field.device)) for frames in sets]
    window_shape = list(shape)
    noises = []
    for frames in sets:
        window_shape[frame_dim] = len(frames)
        noises.append(shared_noise(tuple(window_shape), frame_dim, generator, 0, device, dtype))
    return noises


def initial_noise(shape, sets, frame_dim, stabilizers, generator, device, dtype, weighting) -> torch.Tensor:
    """The whole video's starting noise. Shared: the field itself. Independent: the windows' draws
    fused, whose variance shrinks where windows overlap (what covariance-preserving noise avoids)."""
    if stabilizers.shared_noise:
        window = len(sets[0]) if stabilizers.freenoise else 0
        return shared_noise(shape, frame_dim, generator, window, device, dtype)
    noises = window_noises(shape, sets, frame_dim, stabilizers, generator, device, dtype)
    return fuse(noises, sets, shape[frame_dim], frame_dim, weighting)


@torch.no_grad()
def sample(
    model: VideoModel,
    condition: Any,
    request: Request,
    plan: Plan,
    stabilizers: Stabilizers,
    generator: torch.Generator,
    on_step: Callable[[int, int], None] | None = None,
    feedback=None,
    ranks: Ranks | None = None,
) -> torch.Tensor | None:
    """The whole video's denoised latents; `feedback` (a feedback.FeedbackLoop) acts on the fused
    prediction of the steps it is set for. With `ranks` spread over several processes, each predicts
    its own windows and rank 0 does the rest (vid3d.generate.ranks); the others return None."""
    ranks = ranks or Ranks()
    num_latent = model.latent_frames(request.num_frames)
    shape = model.latent_shape(request, num_latent)
    sets = frame_sets(num_latent, model.window, plan)
    if ranks.leads and feedback is not None and feedback.wants_corrections:
        check_corrections(model, condition, ranks, feedback.feedback.mode)
    if ranks.leads and ranks.world > len(sets):  # the others learn of it as rank 0 stops
        raise UserError(
            f"generate: {ranks.world} ranks for {len(sets)} windows; start at most {len(sets)} "
            "(torchrun --nproc-per-node), or generate more frames"
        )
    scheduler, dim = model.scheduler, model.frame_dim
    scheduler.set_timesteps(plan.steps, device=model.device)
    latents = None
    if ranks.leads:  # every random draw is rank 0's, from the one generator
        latents = initial_noise(shape, sets, dim, stabilizers, generator, model.device, model.dtype, plan.weighting)
        latents = latents * scheduler.init_noise_sigma
    anchors = torch.tensor(sorted(set(stabilizers.anchors)), dtype=torch.long) if stabilizers.anchors else None

    state = model.attention
    state.clear()
    state.cache_until, state.decay = stabilizers.kv_cache_until, stabilizers.kv_decay
    stepper = _Stepper(scheduler, generator, sets, dim, stabilizers, plan.weighting)
    try:
        for i, t in enumerate(scheduler.timesteps):
            state.step = i
            scaled = scheduler.scale_model_input(latents, t) if ranks.leads else None
            scaled = ranks.share_input(scaled, shape, model.device)
            if anchors is not None:  # on every rank: its windows attend to its own recording
                state.window = None
                with state.record_anchors():
                    model.predict(scaled.index_select(dim, anchors.to(scaled.device)), t, condition, anchors)
            acting = feedback is not None and feedback.acts(i, len(scheduler.timesteps))
            outputs = []
            with model.recording_corrections(acting and feedback.wants_corrections) as corrections:
                for k, frames in enumerate(sets):
                    if ranks.owns(k):
                        state.window = k
                        outputs.append(
                            model.predict(scaled.index_select(dim, frames.to(scaled.device)), t, condition, frames)
                        )
            state.window = None
            outputs = ranks.gather_windows(outputs, len(sets))
            if not ranks.leads:
                continue
            fused = fuse(outputs, sets, num_latent, dim, plan.weighting)
            if acting:
                correction = fuse(corrections, sets, num_latent, dim, plan.weighting) if corrections else None
                fused = feedback.apply(fused, latents, t, correction)
            latents = stepper.step(fused, t, latents, i).to(model.dtype)
            if on_step:
                on_step(i + 1, len(scheduler.timesteps))
        ranks.finish()
    finally:
        state.clear()
    return latents


def check_corrections(model: VideoModel, condition: Any, ranks: Ranks, mode: str) -> None:
    """A feedback mode sized by the model's guidance correction needs guidance on, and every window's
    correction on rank 0: the other ranks do not record theirs, so it runs on one rank."""
    if not model.guides(condition):
        raise UserError(
            f"generate.feedback={mode}: {type(model).__name__} applies no guidance here (guidance 1, or the "
            "embedded model without its guide/ transformer), so its step has no size; set generate.guidance "
            "above 1 with a model that guides, or use generate.feedback=gradient"
        )
    if ranks.spread:
        raise UserError(
            f"generate.feedback={mode}: runs on one rank only (rank 0 does not gather the windows' guidance "
            f"corrections), not {ranks.world}; start it without torchrun, or use generate.feedback=gradient"
        )


class _Stepper:
    """One scheduler step over the whole latent, with the arguments each scheduler takes."""

    def __init__(self, scheduler, generator, sets, frame_dim, stabilizers, weighting):
        self.scheduler, self.generator = scheduler, generator
        self.parameters = set(inspect.signature(scheduler.step).parameters)
        self.sets, self.frame_dim, self.stabilizers, self.weighting = sets, frame_dim, stabilizers, weighting
        self.old_pred_original_sample = None

    def step(self, output, t, latents, index):
        kwargs = {}
        if "generator" in self.parameters:
            kwargs["generator"] = self.generator
        if "variance_noise" in self.parameters and not self.stabilizers.shared_noise and self._stochastic():
            kwargs["variance_noise"] = initial_noise(
                latents.shape,
                self.sets,
                self.frame_dim,
                self.stabilizers,
                self.generator,
                latents.device,
                latents.dtype,
                self.weighting,
            )
        if isinstance(self.scheduler, CogVideoXDPMScheduler):
            timesteps = self.scheduler.timesteps
            previous = timesteps[index - 1] if index > 0 else None
            latents, self.old_pred_original_sample = self.scheduler.step(
                output, self.old_pred_original_sample, t, previous, latents, **kwargs, return_dict=False
            )
            return latents
        return self.scheduler.step(output, t, latents, **kwargs, return_dict=False)[0]

    def _stochastic(self) -> bool:
        return "sde" in str(self.scheduler.config.get("algorithm_type", ""))
