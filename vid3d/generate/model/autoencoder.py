"""A small convolutional autoencoder: 64x64x3 images <-> 16x16xC latents (4x spatial downsampling).

Deterministic (no KL term): the diffusion model only needs a compact grid that decodes sharply;
latents are scaled by `scaling_factor` (their standard deviation over the training frames) before
diffusion, as diffusers' VAEs are.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class OrbitAutoencoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, latent_channels: int = 8, width: int = 64, encoder_width: int = 32, scaling_factor: float = 1.0):
        super().__init__()
        # The encoder is lighter than the decoder: it runs over every training frame once (cached),
        # while the decoder decides how sharp the generated frames are.
        e, w = encoder_width, width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, e // 2, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(e // 2, e, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(e, 2 * e, 3, stride=2, padding=1),
            ResBlock(2 * e),
            nn.GroupNorm(8, 2 * e),
            nn.SiLU(),
            nn.Conv2d(2 * e, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * w, 3, padding=1),
            ResBlock(2 * w),
            ResBlock(2 * w),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * w, w, 3, padding=1),
            ResBlock(w),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(w, w // 2, 3, padding=1),
            ResBlock(w // 2),
            nn.GroupNorm(8, w // 2),
            nn.SiLU(),
            nn.Conv2d(w // 2, 3, 3, padding=1),
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> unscaled latents [N, C, H/4, W/4]."""
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> images in [-1, 1] (not clamped)."""
        return self.decoder(latents)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))
