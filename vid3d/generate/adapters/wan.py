"""Wan 2.1 and 2.2 image-to-video (a diffusion transformer with 3D rotary positions, the text in a
cross-attention, a causal 3D VAE) behind the sampler's interface. Conditioning is built with the
pipeline's own helpers and the model is called as the pipeline calls it (conditional pass, then
unconditional), so one window reproduces it exactly.

Latents keep the pipeline's layout [batch, channels, frames, height, width] (frame_dim 2): the
sampler's noise is then the pipeline's own draw. The conditioning (a mask of the given frame and
the VAE latent of the image followed by black frames) is built for the whole video and sliced
per window, so only windows that hold frame 0 see the image. Wan 2.2 A14B's two experts are
switched by timestep at `boundary_ratio`; Wan 2.2 TI2V-5B (`expand_timesteps`) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
)

from vid3d.errors import UserError

from ..tiny import for_inference, word_tokenizer
from .base import Request, VideoModel

# Wan predicts a flow (noise minus clean latents); these schedulers can step it.
FLOW_SCHEDULERS = (UniPCMultistepScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler)


@dataclass
class WanCondition:
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None  # None without guidance
    image_embeds: torch.Tensor | None  # the image encoder's (Wan 2.1); None for Wan 2.2
    image: torch.Tensor  # [1, 4 + channels, latent frames, h, w]: frame mask, then the image's latents
    guidance: float
    num_frames: int


class WanModel(VideoModel):
    frame_dim = 2
    cuda_dtype = torch.bfloat16  # as Wan was trained
    supports_feedback = True

    def __init__(
        self,
        pipe: WanImageToVideoPipeline,
        guidance: float = 5.0,
        height: int = 480,
        width: int = 832,
        window_frames: int = 81,
        max_sequence_length: int = 512,
    ):
        super().__init__()
        if pipe.config.expand_timesteps:
            raise UserError(
                "Wan 2.2 TI2V-5B (expand_timesteps: the image replaces the first latent frame) is not "
                "supported yet; use a Wan 2.1 or Wan 2.2 A14B image-to-video model"
            )
        self.pipe, self.transformer, self.scheduler = pipe, pipe.transformer, pipe.scheduler
        self.experts = [m for m in (pipe.transformer, pipe.transformer_2) if m is not None]
        self.device = pipe.transformer.device
        self.dtype = torch.float32  # the pipeline keeps latents in float32 whatever the transformer's precision
        self.guidance, self.height, self.width = guidance, height, width
        self.max_sequence_length = max_sequence_length
        self.window = self.latent_frames(window_frames)
        for expert in self.experts:
            self.install_stabilizers(expert)

    @classmethod
    def load(cls, spec: str, device: torch.device, dtype: torch.dtype) -> WanModel:
        model = super().load(spec, device, dtype)
        model.pipe.vae.to(torch.float32)  # as Wan's own examples load it: the video decodes in full precision
        return model

    @classmethod
    def tiny(cls, device: torch.device) -> WanModel:
        return cls(tiny_wan().to(device), height=32, width=32, window_frames=9)

    def size(self, request: Request) -> tuple[int, int]:
        """The pipeline's rounding: multiples of the VAE's scale times the patch size."""
        multiple = self.pipe.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        height, width = request.height or self.height, request.width or self.width
        return height // multiple * multiple, width // multiple * multiple

    def latent_frames(self, num_frames: int) -> int:
        """Enough latent frames for `num_frames` (the VAE decodes 4k + 1 frames from k + 1)."""
        scale = self.pipe.vae_scale_factor_temporal
        return -(-(num_frames - 1) // scale) + 1

    def video_frames(self, num_latent: int) -> int:
        return (num_latent - 1) * self.pipe.vae_scale_factor_temporal + 1

    def latent_shape(self, request: Request, num_latent_frames: int) -> tuple[int, ...]:
        height, width = self.size(request)
        scale = self.pipe.vae_scale_factor_spatial
        return (1, self.pipe.vae.config.z_dim, num_latent_frames, height // scale, width // scale)

    @torch.no_grad()
    def prepare(self, request: Request, generator: torch.Generator) -> WanCondition:
        """The pipeline draws nothing at random here (its VAE encodes with argmax): its only draw is
        the initial noise, which the sampler makes."""
        if not isinstance(self.scheduler, FLOW_SCHEDULERS):
            raise UserError(
                f"generate.scheduler: Wan predicts a flow, which {type(self.scheduler).__name__} cannot "
                "step; use default or dpm++"
            )
        pipe, device, dtype = self.pipe, self.device, self.transformer.dtype
        guidance = request.guidance or self.guidance
        prompt_embeds, negative = pipe.encode_prompt(
            request.prompt, None, guidance > 1, 1, max_sequence_length=self.max_sequence_length, device=device
        )
        image = PIL.Image.fromarray(request.image)
        image_embeds = None
        if self.transformer.config.image_dim is not None:  # Wan 2.1
            image_embeds = pipe.encode_image(image, device).to(dtype)
        height, width = self.size(request)
        pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
        num_latent = self.latent_frames(request.num_frames)
        placeholder = torch.zeros(self.latent_shape(request, num_latent), device=device)  # no draw
        _, image_condition = pipe.prepare_latents(
            pixels,
            1,
            pipe.vae.config.z_dim,
            height,
            width,
            self.video_frames(num_latent),
            torch.float32,
            device,
            None,
            placeholder,
        )
        return WanCondition(
            prompt_embeds.to(dtype),
            None if negative is None else negative.to(dtype),
            image_embeds,
            image_condition,
            guidance,
            request.num_frames,
        )

    def expert(self, t: torch.Tensor) -> int:
        """Which transformer denoises at `t`: Wan 2.2 A14B hands the steps below the boundary to the second."""
        boundary = self.pipe.config.boundary_ratio
        if boundary is None or t >= boundary * self.scheduler.config.num_train_timesteps:
            return 0
        return 1

    def guides(self, condition: WanCondition) -> bool:
        return condition.guidance > 1

    def denoise(self, latents, t, condition: WanCondition, frames):
        index = self.expert(t)
        image = condition.image.index_select(2, frames.to(condition.image.device))
        model_input = torch.cat([latents, image], dim=1).to(self.transformer.dtype)
        timestep = t.expand(latents.shape[0])
        output = self._call(index, "cond", model_input, timestep, condition.prompt_embeds, condition)
        if not self.guides(condition):
            return output
        uncond = self._call(index, "uncond", model_input, timestep, condition.negative_prompt_embeds, condition)
        return self.classifier_free(uncond, output, condition.guidance)

    def _call(self, index, branch, model_input, timestep, prompt_embeds, condition):
        expert = self.experts[index]
        with expert.cache_context(branch):
            return expert(
                hidden_states=model_input,
                timestep=timestep,
                encoder_hidden_states=prompt_embeds,
                encoder_hidden_states_image=condition.image_embeds,
                return_dict=False,
            )[0]

    def _decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's decode: latents [1, C, F, h, w] -> video [1, 3, 4(F - 1) + 1, H, W] in [-1, 1]."""
        latents = latents[:1].to(self.pipe.vae.dtype)
        mean, inverse_std = self._latent_statistics(latents)
        return self.pipe.vae.decode(latents / inverse_std + mean, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, latents, condition: WanCondition) -> np.ndarray:
        video = self._decode_video(latents)
        frames = self.pipe.video_processor.postprocess_video(video, output_type="np")[0][: condition.num_frames]
        return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [1, C, F, h, w] (the sampler's layout for Wan) -> frames [4(F - 1) + 1, H, W, 3] in [0, 1]."""
        return ((self._decode_video(latents)[0].permute(1, 2, 3, 0).float() + 1) / 2).clamp(0, 1)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [4k + 1, H, W, 3] in [0, 1] -> latents [1, C, k + 1, h, w], normalised as the pipeline does."""
        video = frames.permute(3, 0, 1, 2)[None].to(self.pipe.vae.dtype) * 2 - 1
        latents = self.pipe.vae.encode(video).latent_dist.mode()
        mean, inverse_std = self._latent_statistics(latents)
        return ((latents - mean) * inverse_std).to(self.dtype)

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent mean and 1 / std, shaped and computed as the pipeline does."""
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inverse_std

    def layout_of(self, processor_name: str):
        return "rotary" if processor_name.endswith("attn1.processor") else None


def tiny_wan(seed: int = 0, version: str = "2.1") -> WanImageToVideoPipeline:
    """Wan I2V with 2-layer transformers, an 8x VAE (4x in time), a 2-layer UMT5 and a word-level tokenizer
    built in memory, and Wan 2.1-I2V's scheduler (UniPC on flow sigmas). "2.1": a 2-layer CLIP image
    encoder whose embeddings the cross-attention also attends to; "2.2": no image encoder and two
    experts, `transformer` for the noisy steps and `transformer_2` after boundary_ratio (as Wan 2.2 A14B)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    if version not in ("2.1", "2.2"):
        raise ValueError(f"tiny Wan {version!r}: 2.1 or 2.2")
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4))
    image_dim = 8 if version == "2.1" else None

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=36,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            rope_max_seq_len=32,
            image_dim=image_dim,
            added_kv_proj_dim=None if image_dim is None else 24,
        )

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    parts = {
        "tokenizer": word_tokenizer(),
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "transformer": transformer(),
    }
    if version == "2.1":
        parts["image_encoder"] = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=image_dim,
                projection_dim=image_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                intermediate_size=16,
                patch_size=8,
            )
        )
        parts["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    else:
        parts.update(transformer_2=transformer(), boundary_ratio=0.875)
    return for_inference(WanImageToVideoPipeline(**parts))
