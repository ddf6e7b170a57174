"""Stable Video Diffusion (UNetSpatioTemporalConditionModel + AutoencoderKLTemporalDecoder + CLIP
image encoder) behind the sampler's interface. Conditioning is prepared with the pipeline's own
helpers, in the pipeline's order of random draws, so one window reproduces it exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..tiny import for_inference
from .base import Request, VideoModel


@dataclass
class SVDCondition:
    image_embeddings: torch.Tensor  # [videos, 1, dim]; unconditional first with guidance
    image_latents: torch.Tensor  # [videos, channels, h, w]
    added_time_ids: torch.Tensor
    guidance: tuple[float, float]  # min and max guidance, ramped over a window's frames
    num_frames: int


class SVDModel(VideoModel):
    supports_feedback = True

    def __init__(
        self,
        pipe: StableVideoDiffusionPipeline,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        min_guidance: float = 1.0,
        max_guidance: float = 3.0,
        decode_chunk_size: int = 8,
    ):
        super().__init__()
        self.pipe, self.unet, self.scheduler = pipe, pipe.unet, pipe.scheduler
        self.window = int(pipe.unet.config.num_frames)
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.fps, self.motion_bucket_id, self.noise_aug_strength = fps, motion_bucket_id, noise_aug_strength
        self.min_guidance, self.max_guidance = min_guidance, max_guidance
        self.decode_chunk_size = decode_chunk_size
        self.install_stabilizers(self.unet)

    @classmethod
    def tiny(cls, device: torch.device) -> SVDModel:
        return cls(tiny_svd().to(device))

    def size(self, request: Request) -> tuple[int, int]:
        default = self.unet.config.sample_size * self.pipe.vae_scale_factor
        return request.height or default, request.width or default

    @torch.no_grad()
    def prepare(self, request: Request, generator: torch.Generator) -> SVDCondition:
        pipe, device = self.pipe, self.device
        max_guidance = request.guidance or self.max_guidance
        guided = max_guidance > 1
        image = PIL.Image.fromarray(request.image)
        height, width = self.size(request)
        embeddings = pipe._encode_image(image, device, 1, guided)
        pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(device)
        noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=pixels.dtype)
        pixels = pixels + self.noise_aug_strength * noise
        upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        if upcast:
            pipe.vae.to(dtype=torch.float32)
        image_latents = pipe._encode_vae_image(pixels, device, 1, guided).to(embeddings.dtype)
        if upcast:
            pipe.vae.to(dtype=torch.float16)
        time_ids = pipe._get_add_time_ids(
            self.fps - 1, self.motion_bucket_id, self.noise_aug_strength, embeddings.dtype, 1, 1, guided
        ).to(device)
        return SVDCondition(embeddings, image_latents, time_ids, (self.min_guidance, max_guidance), request.num_frames)

    def latent_frames(self, num_frames: int) -> int:
        return num_frames

    def latent_shape(self, request: Request, num_latent_frames: int) -> tuple[int, ...]:
        height, width = self.size(request)
        scale = self.pipe.vae_scale_factor
        return (1, num_latent_frames, self.unet.config.in_channels // 2, height // scale, width // scale)

    def guides(self, condition: SVDCondition) -> bool:
        return condition.guidance[1] > 1

    def denoise(self, latents, t, condition: SVDCondition, frames):
        guided = self.guides(condition)
        num = latents.shape[1]
        model_input = torch.cat([latents] * 2) if guided else latents
        image_latents = condition.image_latents.unsqueeze(1).repeat(1, num, 1, 1, 1)
        model_input = torch.cat([model_input, image_latents], dim=2)
        output = self.unet(
            model_input,
            t,
            encoder_hidden_states=condition.image_embeddings,
            added_time_ids=condition.added_time_ids,
            return_dict=False,
        )[0]
        if not guided:
            return output
        uncond, cond = output.chunk(2)
        # SVD ramps guidance over the frames of the clip it denoises: here, the window
        scale = torch.linspace(*condition.guidance, num).unsqueeze(0).to(latents.device, latents.dtype)
        return self.classifier_free(uncond, cond, scale.view(1, num, 1, 1, 1))

    @torch.no_grad()
    def decode(self, latents, condition) -> np.ndarray:
        pipe = self.pipe
        upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        if upcast:
            pipe.vae.to(dtype=torch.float16)
        video = pipe.decode_latents(latents[:1], latents.shape[1], self.decode_chunk_size)
        frames = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
        return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        video = self.pipe.decode_latents(latents[:1].to(self.pipe.vae.dtype), latents.shape[1], self.decode_chunk_size)
        return ((video[0].permute(1, 2, 3, 0).float() + 1) / 2).clamp(0, 1)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        x = frames.permute(0, 3, 1, 2).to(vae.dtype) * 2 - 1
        return (vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)[None].to(self.dtype)

    def layout_of(self, processor_name: str):
        spatial = ".transformer_blocks." in processor_name and "temporal" not in processor_name
        return "frames" if spatial and processor_name.endswith("attn1.processor") else None


def tiny_svd(seed: int = 0, num_frames: int = 8, size: int = 64) -> StableVideoDiffusionPipeline:
    """SVD with a 2-level UNet (32, 64 channels), a 2x VAE and a 2-layer CLIP encoder (224x224 input, as the pipeline resizes)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=size // 2,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=2,
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
        num_frames=num_frames,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        latent_channels=4,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            intermediate_size=37,
            patch_size=32,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor
    )
    return for_inference(pipe)
