"""OrbitTransformer: a latent video diffusion transformer for turntable orbits around a reference.

Each frame's input is its noisy latent, the reference latent and the reference reprojected over the
ground plane to the frame's camera (see warp.py), concatenated as channels and cut into 2x2 patches.
Blocks alternate spatial self-attention (one frame's tokens; with anchor attention also the
reference frame's keys and values) and temporal self-attention (one token position across the
window's frames), then an MLP; the timestep and the frame's relative azimuth drive adaLN, and the
azimuth embedding is also added to the tokens so temporal attention knows where each frame is.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from . import RIG
from .warp import warp_grid, warp_reference


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class AttentionLayer(nn.Module):
    """Pre-norm self-attention; `attn1` so processor names read `...spatial.attn1.processor`."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=True, out_bias=True)

    def forward(self, x, shift, scale, gate):
        return x + gate * self.attn1(modulate(self.norm(x), shift, scale))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.spatial = AttentionLayer(dim, heads)
        self.temporal = AttentionLayer(dim, heads)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.modulation = nn.Linear(dim, 9 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x, cond, frames: int):
        """x [videos * frames, tokens, dim]; cond [videos * frames, dim]."""
        # adaLN: a shift, scale and gate for each of the three sub-layers
        mods = self.modulation(nn.functional.silu(cond))[:, None].chunk(9, dim=-1)
        spatial_mods, temporal_mods, (mlp_shift, mlp_scale, mlp_gate) = mods[0:3], mods[3:6], mods[6:9]
        x = self.spatial(x, *spatial_mods)
        # temporal: [videos * frames, tokens, dim] -> [videos * tokens, frames, dim]
        n, tokens, dim = x.shape
        to_time = lambda t: t.view(n // frames, frames, -1, dim).transpose(1, 2).reshape(-1, frames, dim)
        from_time = lambda t: t.view(n // frames, tokens, frames, dim).transpose(1, 2).reshape(n, tokens, dim)
        shift, scale, gate = (to_time(m.expand(-1, tokens, -1)) for m in temporal_mods)
        x = from_time(self.temporal(to_time(x), shift, scale, gate))
        return x + mlp_gate * self.mlp(modulate(self.norm(x), mlp_shift, mlp_scale))


class OrbitTransformer(ModelMixin, AttentionMixin, ConfigMixin):
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        sample_size: int = 16,
        patch_size: int = 2,
        dim: int = 128,
        depth: int = 6,
        heads: int = 4,
        radius: float = RIG["radius"],
        elevation_deg: float = RIG["elevation_deg"],
        fov_deg: float = RIG["fov_deg"],
        look_at: tuple = RIG["look_at"],
        plane_heights: tuple = (),
        refine_width: int = 0,
    ):
        super().__init__()
        c, p = latent_channels, patch_size
        inputs = (3 + len(plane_heights)) * c
        self.patchify = nn.Conv2d(inputs, dim, p, stride=p)
        grid = sample_size // p
        pos = get_2d_sincos_pos_embed(dim, grid, output_type="pt")
        self.register_buffer("pos_embed", pos.float()[None], persistent=False)
        self.time_proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(dim, dim)
        self.camera_embed = nn.Sequential(nn.Linear(8, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.camera_to_tokens = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, p * p * c)
        for layer in (self.modulation_out, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.refine = Refine(inputs + c, refine_width, c, dim) if refine_width else None

    def warp(self, reference: torch.Tensor, azimuth: torch.Tensor, height: float = 0.0) -> torch.Tensor:
        """The reference latents [B, C, H, W] reprojected to the cameras at azimuth [B, F] (radians)
        over the horizontal plane z = height."""
        cfg = self.config
        grid = warp_grid(
            azimuth.detach().cpu(),
            reference.shape[-1],
            cfg.radius,
            cfg.elevation_deg,
            cfg.fov_deg,
            tuple(cfg.look_at),
            height,
        )
        return warp_reference(reference, grid.to(reference.device))

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, reference: torch.Tensor, azimuth: torch.Tensor
    ) -> torch.Tensor:
        """sample [B, F, C, H, W] (scaled noisy latents), timestep [B] or scalar, reference [B, C, H, W]
        (scaled clean latents of the reference image), azimuth [B, F] radians relative to the
        reference; returns the predicted clean latents [B, F, C, H, W]."""
        videos, frames, c, h, w = sample.shape
        p = self.config.patch_size
        reference_frames = reference[:, None].expand(-1, frames, -1, -1, -1)
        warps = [self.warp(reference, azimuth, h) for h in (0.0, *self.config.plane_heights)]
        inputs = torch.cat([sample, reference_frames, *warps], dim=2).flatten(0, 1)
        x = self.patchify(inputs).flatten(2).transpose(1, 2) + self.pos_embed

        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(videos)
        t_emb = self.time_embed(self.time_proj(timestep).to(sample.dtype))
        t_emb = t_emb[:, None].expand(-1, frames, -1).flatten(0, 1)
        cam = self.camera_embed(camera_features(azimuth.flatten()).to(sample.dtype))
        x = x + self.camera_to_tokens(cam)[:, None]
        cond = t_emb + cam

        for block in self.blocks:
            x = block(x, cond, frames)
        shift, scale = self.modulation_out(nn.functional.silu(cond))[:, None].chunk(2, dim=-1)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))
        # unpatchify: [n, (h/p)(w/p), p*p*c] -> [n, c, h, w]
        x = x.view(-1, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(-1, c, h, w)
        if self.refine is not None:
            x = x + self.refine(torch.cat([x, inputs], dim=1), cond)
        return x.view(videos, frames, c, h, w)


class Refine(nn.Module):
    """Convolutions at the latent resolution after the 2x2-patch transformer: they see its prediction
    and the inputs (noisy latent, reference, warps) pixel by pixel, so detail is not decided per
    token. The timestep/camera condition scales and shifts the hidden features; the last layer
    starts at zero, so a model grown from one without it starts out unchanged."""

    def __init__(self, inputs: int, width: int, out: int, dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(inputs, width, 3, padding=1)
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, out, 3, padding=1)
        self.modulation = nn.Linear(dim, 2 * width)
        for layer in (self.modulation, self.conv_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(nn.functional.silu(cond))[:, :, None, None].chunk(2, dim=1)
        x = nn.functional.silu(self.conv_in(x))
        x = nn.functional.silu(modulate(self.conv_mid(x), shift, scale))
        return self.conv_out(x)


def camera_features(azimuth: torch.Tensor) -> torch.Tensor:
    """[N] radians -> [N, 8]: sin and cos of 1, 2, 3 and 4 times the angle."""
    k = torch.arange(1, 5, device=azimuth.device, dtype=azimuth.dtype)
    angles = azimuth[:, None] * k
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def spatial_layout(name: str):
    """The stabilizer layout of a processor name: spatial self-attention takes anchors."""
    return "frames" if "spatial" in name and name.endswith("attn1.processor") else None
