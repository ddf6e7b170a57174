"""The contract every video model adapter keeps, checked on each one's random-weight model (the
embedded orbit model's and every registered family's): the K/V cache acts through `predict` alone,
feedback's decode and encode invert each other's shapes, and the registry picks the adapter, and
its precision, from the pipeline class. (Anchors on a window's own frames change nothing only
where the self-attention holds no text: see the tests of SVD and Wan.)"""

import json

import numpy as np
import pytest
import torch

from vid3d.device import resolve_dtype
from vid3d.generate.adapters import TINY, adapter_class, load_model
from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import OrbitVideoModel
from vid3d.generate.adapters.wan import WanModel

MODELS = {"orbit": OrbitVideoModel, **{name: adapter_class(name) for name in TINY}}
VIDEO_FRAMES = 21  # 6 latent frames with 4x temporal compression


@pytest.fixture(scope="module", params=list(MODELS))
def window(request):
    """A model, its condition and a whole video's latents at the first of 4 steps."""
    model = MODELS[request.param].tiny(torch.device("cpu"))
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    video = Request(image, prompt="an orbit", num_frames=VIDEO_FRAMES, height=32, width=32)
    condition = model.prepare(video, torch.Generator().manual_seed(0))
    model.scheduler.set_timesteps(4)
    shape = model.latent_shape(video, model.latent_frames(VIDEO_FRAMES))
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * model.scheduler.init_noise_sigma
    return model, condition, latents


def output(model, condition, latents, frames):
    """The model's output for the window of `frames` of the whole video's `latents`, at the first step."""
    t = model.scheduler.timesteps[0]
    latents = model.scheduler.scale_model_input(latents.index_select(model.frame_dim, frames), t)
    return model.predict(latents, t, condition, frames)


@torch.no_grad()
def test_kv_cache_appends_earlier_steps_weighted_by_decay(window):
    model, condition, latents = window
    state, frames = model.attention, torch.arange(3)
    other = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    plain = output(model, condition, latents, frames)

    def cached_then_current(decay):
        state.clear()
        state.cache_until, state.decay, state.window = 1, decay, 0
        output(model, condition, other, frames)  # step 0: cached
        state.step = 1
        result = output(model, condition, latents, frames)
        state.clear()
        state.cache_until = 0
        return result

    assert torch.allclose(cached_then_current(1e-6), plain, atol=1e-4)  # weight 1e-6: negligible
    assert (cached_then_current(1.0) - plain).abs().max() > 1e-3


@torch.no_grad()
def test_a_model_that_supports_feedback_encodes_its_decoded_frames_back_to_latents_of_its_shape(window):
    model, _, latents = window
    if not model.supports_feedback:
        pytest.skip(f"{type(model).__name__} does not support feedback")
    frames = model.decode_frames(latents)
    assert frames.ndim == 4 and frames.shape[-1] == 3 and len(frames) >= VIDEO_FRAMES
    assert 0 <= frames.min() and frames.max() <= 1
    assert model.encode_frames(frames).shape == latents.shape


def test_the_tiny_models_are_named_after_the_registered_families_modules():
    names = {"tiny-svd": "SVDModel", "tiny-cogvideox": "CogVideoXModel", "tiny-wan": "WanModel"}
    assert {name: adapter_class(name).__name__ for name in names} == names
    assert isinstance(load_model("tiny-wan", torch.device("cpu"), torch.float32), WanModel)


def test_the_precision_comes_from_the_pipeline_class_not_the_folder_name(tmp_path):
    """A folder called my-model holding Wan weights computes in Wan's bfloat16 on CUDA."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    adapter = adapter_class(str(folder))
    assert adapter is WanModel
    assert resolve_dtype("auto", torch.device("cuda"), adapter.cuda_dtype) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu"), adapter.cuda_dtype) == torch.float32
    assert resolve_dtype("float16", torch.device("cuda"), adapter.cuda_dtype) == torch.float16
    assert adapter_class("").cuda_dtype == torch.float32  # the embedded model: float32 everywhere
    assert adapter_class("tiny-svd").cuda_dtype == torch.float16
