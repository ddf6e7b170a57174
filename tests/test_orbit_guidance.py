"""Autoguidance in the orbit model's adapter: the weaker guide transformer's prediction is
extrapolated away from, by the request's scale or the model's default; scale 1 or no guide leaves
the transformer's own prediction, as do the low-noise steps below GUIDANCE_FROM_T."""

import numpy as np
import torch
from diffusers import DDIMScheduler

from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import GUIDANCE, GUIDANCE_FROM_T, OrbitVideoModel
from vid3d.generate.model.autoencoder import OrbitAutoencoder
from vid3d.generate.model.data import RIG
from vid3d.generate.model.network import OrbitTransformer


def transformer(seed: int) -> OrbitTransformer:
    torch.manual_seed(seed)
    model = OrbitTransformer(dim=32, depth=1, heads=2, **RIG)
    with torch.no_grad():  # no zero-initialised output layers: predictions differ between seeds
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def predictions(model: OrbitVideoModel, guidance: float, timestep: int = 900):
    request = Request(image=np.full((64, 64, 3), 120, np.uint8), num_frames=4, orbit_degrees=30, guidance=guidance)
    condition = model.prepare(request, torch.Generator().manual_seed(0))
    latents, t, frames = torch.randn(1, 4, 8, 16, 16), torch.tensor(timestep), torch.arange(4)
    return condition, model.predict(latents, t, condition, frames), latents, t


def test_guidance_extrapolates_from_the_guide():
    good, weak = transformer(0), transformer(1)
    model = OrbitVideoModel(good, OrbitAutoencoder(), DDIMScheduler(prediction_type="sample"), 4, guide=weak)
    for scale in (0.0, 1.0, 3.0):  # 0: the model's default
        condition, guided, latents, t = predictions(model, scale)
        assert condition.guidance == (scale or GUIDANCE)
        reference = condition.reference.expand(1, -1, -1, -1)
        azimuth = condition.azimuth[None]
        with torch.no_grad():
            own, weaker = good(latents, t, reference, azimuth), weak(latents, t, reference, azimuth)
        assert torch.allclose(guided, weaker + condition.guidance * (own - weaker), atol=1e-5)
        if scale == 1.0:
            assert torch.equal(guided, own)


def test_no_guidance_at_low_noise():
    good, weak = transformer(0), transformer(1)
    model = OrbitVideoModel(good, OrbitAutoencoder(), DDIMScheduler(prediction_type="sample"), 4, guide=weak)
    for timestep, guided in ((GUIDANCE_FROM_T, True), (GUIDANCE_FROM_T - 1, False)):
        condition, prediction, latents, t = predictions(model, 3.0, timestep)
        with torch.no_grad():
            own = good(latents, t, condition.reference.expand(1, -1, -1, -1), condition.azimuth[None])
        assert torch.equal(prediction, own) != guided


def test_no_guide_no_guidance():
    good = transformer(0)
    model = OrbitVideoModel(good, OrbitAutoencoder(), DDIMScheduler(prediction_type="sample"), 4)
    condition, prediction, latents, t = predictions(model, 3.0)
    assert condition.guidance == 1.0
    with torch.no_grad():
        own = good(latents, t, condition.reference.expand(1, -1, -1, -1), condition.azimuth[None])
    assert torch.equal(prediction, own)
