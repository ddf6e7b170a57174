"""CogVideoX image-to-video (a diffusion transformer with joint text/video attention and 3D rotary
positions) behind the sampler's interface. Conditioning follows the pipeline's own steps and order
of random draws, so one window reproduces it exactly.

The reference image's latent sits in the conditioning channels of video frame 0 and zeros
elsewhere, as the model was trained; a window that does not hold frame 0 gets zeros only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import CogVideoXImageToVideoPipeline
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import retrieve_latents

from ..tiny import for_inference, word_tokenizer
from .base import Request, VideoModel


@dataclass
class CogVideoXCondition:
    prompt_embeds: torch.Tensor  # negative first with guidance
    image_latent: torch.Tensor  # [1, 1, channels, h, w]
    guidance: float
    height: int
    width: int
    num_frames: int


class CogVideoXModel(VideoModel):
    cuda_dtype = torch.bfloat16  # as CogVideoX was trained
    supports_feedback = True

    def __init__(self, pipe: CogVideoXImageToVideoPipeline, guidance: float = 6.0, max_sequence_length: int = 226):
        super().__init__()
        config = pipe.transformer.config
        if config.patch_size_t is not None:
            raise ValueError("CogVideoX 1.5 (temporal patches) is not supported yet: use a CogVideoX 1.0 model")
        self.pipe, self.transformer, self.scheduler = pipe, pipe.transformer, pipe.scheduler
        self.window = self.latent_frames(int(config.sample_frames))
        self.device, self.dtype = pipe.transformer.device, pipe.transformer.dtype
        self.guidance, self.max_sequence_length = guidance, max_sequence_length
        self.install_stabilizers(self.transformer)

    @classmethod
    def tiny(cls, device: torch.device) -> CogVideoXModel:
        return cls(tiny_cogvideox().to(device), max_sequence_length=16)

    def size(self, request: Request) -> tuple[int, int]:
        config, scale = self.transformer.config, self.pipe.vae_scale_factor_spatial
        return request.height or config.sample_height * scale, request.width or config.sample_width * scale

    @torch.no_grad()
    def prepare(
        self, request: Request, generator: torch.Generator, prompt_embeds=None, negative_prompt_embeds=None
    ) -> CogVideoXCondition:
        pipe, device = self.pipe, self.device
        guidance = request.guidance or self.guidance
        guided = guidance > 1
        prompt_embeds, negative = pipe.encode_prompt(
            request.prompt if prompt_embeds is None else None,
            "" if negative_prompt_embeds is None else None,
            guided,
            1,
            prompt_embeds,
            negative_prompt_embeds,
            self.max_sequence_length,
            device,
        )
        if guided:
            prompt_embeds = torch.cat([negative, prompt_embeds], dim=0)
        height, width = self.size(request)
        image = pipe.video_processor.preprocess(PIL.Image.fromarray(request.image), height=height, width=width)
        image = image.to(device, dtype=prompt_embeds.dtype).unsqueeze(2)  # [1, C, 1, H, W]
        latent = retrieve_latents(pipe.vae.encode(image), generator)
        latent = latent.to(prompt_embeds.dtype).permute(0, 2, 1, 3, 4)
        if pipe.vae.config.invert_scale_latents:
            latent = latent / pipe.vae_scaling_factor_image
        else:
            latent = latent * pipe.vae_scaling_factor_image
        return CogVideoXCondition(prompt_embeds, latent, guidance, height, width, request.num_frames)

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1

    def latent_shape(self, request: Request, num_latent_frames: int) -> tuple[int, ...]:
        height, width = self.size(request)
        scale = self.pipe.vae_scale_factor_spatial
        return (1, num_latent_frames, self.transformer.config.in_channels // 2, height // scale, width // scale)

    def guides(self, condition: CogVideoXCondition) -> bool:
        return condition.guidance > 1

    def denoise(self, latents, t, condition: CogVideoXCondition, frames):
        guided = self.guides(condition)
        num = latents.shape[1]
        image_input = torch.zeros_like(latents)
        first = (frames == 0).nonzero()
        if len(first):
            image_input[:, int(first[0])] = condition.image_latent[:, 0]
        model_input = torch.cat([latents] * 2) if guided else latents
        image_input = torch.cat([image_input] * 2) if guided else image_input
        model_input = torch.cat([model_input, image_input], dim=2)
        rotary = None
        if self.transformer.config.use_rotary_positional_embeddings:
            rotary = self.pipe._prepare_rotary_positional_embeddings(
                condition.height, condition.width, num, self.device
            )
        ofs = None if self.transformer.config.ofs_embed_dim is None else latents.new_full((1,), fill_value=2.0)
        output = self.transformer(
            hidden_states=model_input,
            encoder_hidden_states=condition.prompt_embeds,
            timestep=t.expand(model_input.shape[0]),
            ofs=ofs,
            image_rotary_emb=rotary,
            return_dict=False,
        )[0].float()
        if not guided:
            return output
        uncond, cond = output.chunk(2)
        return self.classifier_free(uncond, cond, condition.guidance)

    @torch.no_grad()
    def decode(self, latents, condition) -> np.ndarray:
        video = self.pipe.decode_latents(latents[:1].to(self.pipe.vae.dtype))
        frames = self.pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
        frames = frames[: condition.num_frames]  # the decoder's temporal upsampling may round up
        return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        video = self.pipe.decode_latents(latents[:1].to(self.pipe.vae.dtype))  # [1, C, F, H, W] in [-1, 1]
        return ((video[0].permute(1, 2, 3, 0).float() + 1) / 2).clamp(0, 1)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        video = frames.permute(3, 0, 1, 2)[None].to(self.pipe.vae.dtype) * 2 - 1
        latents = self.pipe.vae.encode(video).latent_dist.mode() * self.pipe.vae_scaling_factor_image
        return latents.permute(0, 2, 1, 3, 4).to(self.dtype)

    def layout_of(self, processor_name: str):
        return "joint" if processor_name.endswith("attn1.processor") else None


def tiny_cogvideox(seed: int = 0, sample_frames: int = 9, size: int = 32) -> CogVideoXImageToVideoPipeline:
    """CogVideoX I2V with one transformer layer, an 8x VAE (4x in time), a 2-layer T5 and a word-level
    tokenizer built in memory."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel, DDIMScheduler
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    latent = size // 8
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=1,
        sample_width=latent,
        sample_height=latent,
        sample_frames=sample_frames,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    text_encoder = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4))
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=word_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    return for_inference(pipe)
