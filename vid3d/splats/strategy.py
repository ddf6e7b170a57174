"""Densification with gsplat's DefaultStrategy: its opacity reset made to work, and its schedule
fitted to the step count.

gsplat 1.5.3 never resets opacities: its condition `step % reset_every == 0 & step > 0` parses as
`step % reset_every == (0 & step) > 0`, always False (fixed upstream after 1.5.3, not released).
`ResettingStrategy` adds the reset the setting names; once gsplat resets too, resetting twice in
one step is harmless (a reset clamps opacities to a ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

from vid3d.config import SplatsSettings

GSPLAT_STEPS = 30_000  # the step count of gsplat's default schedule (simple_trainer's max_steps)
GSPLAT_SCHEDULE = {
    "refine_start": 500,
    "refine_stop": 15_000,
    "refine_every": 100,
    "reset_every": 3_000,
    "sh_degree_interval": 1_000,
    "normal_start": 7_000,  # 2DGS's schedule for its surface regularisers
    "distortion_start": 3_000,
}  # DefaultStrategy's and simple_trainer's defaults
MIN_REFINE_EVERY = 10
RESET_PASSES = GSPLAT_SCHEDULE["reset_every"] // GSPLAT_SCHEDULE["refine_every"]  # 30


@dataclass
class ResettingStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy, resetting opacities every `reset_every` steps before `refine_stop_iter`."""

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)


def fitted_schedule(settings: SplatsSettings) -> SplatsSettings:
    """The settings with each schedule setting left at 0 set to gsplat's value (2DGS's for the
    surface regularisers' starts) scaled by steps / 30,000, as gsplat's simple_trainer does with `adjust_steps`. For short runs two floors
    keep the schedule sane (adjust_steps has none): a densification pass averages the gradients of
    at least MIN_REFINE_EVERY steps, and opacity resets stay at least 30 passes apart, gsplat's ratio
    (a reset every few steps would keep every Gaussian transparent)."""
    factor = settings.steps / GSPLAT_STEPS
    automatic = {
        name: max(1, round(value * factor)) for name, value in GSPLAT_SCHEDULE.items() if getattr(settings, name) == 0
    }
    if "refine_every" in automatic:
        automatic["refine_every"] = max(automatic["refine_every"], MIN_REFINE_EVERY)
    if "reset_every" in automatic:
        refine_every = automatic.get("refine_every", settings.refine_every)
        automatic["reset_every"] = max(automatic["reset_every"], RESET_PASSES * refine_every)
    return replace(settings, **automatic)


def strategy_for(settings: SplatsSettings) -> ResettingStrategy:
    """The densification strategy of (fitted) settings."""
    return ResettingStrategy(
        refine_start_iter=settings.refine_start,
        refine_stop_iter=settings.refine_stop,
        refine_every=settings.refine_every,
        reset_every=settings.reset_every,
        grow_grad2d=settings.grow_grad2d,
        verbose=False,
    )
