"""Tiny random-weight instances of the supported diffusers video models, built from small configs.

They check the mechanics (windows, fusion, processors, exactness against the diffusers pipelines)
and time the stabilizers, where no real weights can be downloaded. Their videos are noise.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLTemporalDecoder,
    AutoencoderKLWan,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
)


def tiny_svd(seed: int = 0, num_frames: int = 8, size: int = 64) -> StableVideoDiffusionPipeline:
    """SVD with a 2-level UNet (32, 64 channels), a 2x VAE and a 2-layer CLIP encoder (224x224 input, as the pipeline resizes)."""
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
    return _inference(pipe)


def tiny_cogvideox(seed: int = 0, sample_frames: int = 9, size: int = 32) -> CogVideoXImageToVideoPipeline:
    """CogVideoX I2V with one transformer layer, an 8x VAE (4x in time), a 2-layer T5 and a word-level
    tokenizer built in memory."""
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
        tokenizer=_word_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    return _inference(pipe)


def tiny_wan(seed: int = 0, version: str = "2.1") -> WanImageToVideoPipeline:
    """Wan I2V with 2-layer transformers, an 8x VAE (4x in time), a 2-layer UMT5 and a word-level tokenizer
    built in memory, and Wan 2.1-I2V's scheduler (UniPC on flow sigmas). "2.1": a 2-layer CLIP image
    encoder whose embeddings the cross-attention also attends to; "2.2": no image encoder and two
    experts, `transformer` for the noisy steps and `transformer_2` after boundary_ratio (as Wan 2.2 A14B)."""
    from diffusers import UniPCMultistepScheduler
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
    parts = dict(
        tokenizer=_word_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer()
    )
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
    return _inference(WanImageToVideoPipeline(**parts))


def _inference(pipe):
    """Eval mode (no dropout), as from_pretrained leaves models, and no progress bars."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _word_tokenizer():
    """A whitespace, word-level tokenizer over a tiny vocabulary (unknown words map to <unk>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "an", "the", "orbit", "around", "of", "on", "object", "scene"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
