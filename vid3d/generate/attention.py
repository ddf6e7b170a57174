"""Attention processors for the stabilizers: anchor-frame attention and a cross-step K/V cache.

A processor is a small callable swapped into a diffusers model's `Attention` modules (as diffusers'
own processors are). Every installed processor shares one `AttentionState`, which the sampler drives
(the window, the step, anchor recording) and `track_passes` updates before each denoiser call (the
batch's videos, which call of the prediction it is):

- anchor attention: in a *recording* pass over the anchor frames, each self-attention layer keeps
  its keys and values; in the windows' passes every query also attends to them. Anchors are
  computed once per step and layer and reused by all windows.
- cross-step K/V cache: while `step < cache_until`, each layer keeps the keys and values of each
  window (the latest such step's); later steps append them with their logits weighted by
  log(decay ** steps since cached).

Two layouts of self-attention are handled:
- "frames": batch = videos x frames, tokens = one frame's tokens (SVD's spatial attention, the
  embedded orbit model's spatial attention). Anchor tokens are shared by all frames of a video.
- "joint": batch = videos, tokens = text tokens then all frames' tokens with rotary positions
  (CogVideoX). Anchor keys are stored after their rotary embedding, so they keep their positions.
- "rotary": batch = videos, tokens = all frames' tokens with rotary positions, the text in a
  separate cross-attention (Wan). Keys are stored after their rotary embedding too.

With no anchors and no cache the processors compute exactly what diffusers' defaults compute.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Layout = Literal["frames", "joint", "rotary"]


@dataclass
class AttentionState:
    """What the processors of one model share; the sampler (or trainer) sets it between passes."""

    videos: int = 1  # videos in the denoiser's batch: 2 with batched classifier-free guidance (set per call)
    cache_until: int = 0  # steps before this one are cached (0: no cache)
    decay: float = 0.9  # cached logits are weighted by log(decay ** steps since cached)
    step: int = 0
    window: int | None = None  # the window being denoised, keys the cache
    recording: bool = False
    # Which of a prediction's separate denoiser calls runs ("/denoiser/call"; Wan: conditional or not, per
    # expert): each keeps its own anchors and cache, as a batched pass keeps one per video.
    branch: str = ""
    passes: dict[int, int] = field(default_factory=dict)  # per denoiser: its calls in the current prediction
    anchors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    cache: dict[tuple[str, int], list[tuple[int, torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    @contextmanager
    def record_anchors(self):
        """The pass inside records every layer's keys and values as the anchors."""
        self.anchors.clear()
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    def begin_prediction(self) -> None:
        """A new model prediction starts: its denoiser calls count from 0 again."""
        self.passes.clear()

    def begin_pass(self, denoiser: int, videos: int) -> None:
        """Denoiser number `denoiser` is called on a batch of `videos`: the pass is named by the
        denoiser and how many times the prediction called it before, the same in every prediction."""
        count = self.passes.get(denoiser, 0)
        self.passes[denoiser] = count + 1
        self.branch, self.videos = f"/{denoiser}/{count}", videos

    def clear(self) -> None:
        self.anchors.clear()
        self.cache.clear()
        self.step, self.window, self.recording = 0, None, False

    def extra_sources(self, name: str, video: slice) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """Anchor and cached keys/values a layer's queries attend to besides their own."""
        sources = []
        if name in self.anchors and not self.recording:
            key, value = self.anchors[name]
            sources.append((key[video], value[video], 0.0))
        if self.window is not None and not self.recording:
            for cached_step, key, value in self.cache.get((name, self.window), []):
                if cached_step < self.step:
                    sources.append((key, value, (self.step - cached_step) * math.log(self.decay)))
        return sources

    def keep_in_cache(self, name: str, key: torch.Tensor, value: torch.Tensor) -> None:
        if self.window is None or self.recording or self.step >= self.cache_until:
            return
        # Only the latest cached step is kept: one extra source per layer, whatever cache_until is,
        # bounds the cost and the memory (the earlier steps' keys are noisier anyway).
        self.cache[(name, self.window)] = [(self.step, key.detach(), value.detach())]


def _attend(query, key, value, extra, attention_mask=None):
    """Attention over the layer's own keys plus extra sources; plain SDPA when there are none."""
    if not extra:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
    if attention_mask is not None:
        raise ValueError("anchor attention and the K/V cache do not support attention masks")
    from vid3d_kernels.attention import multi_source_attention

    return multi_source_attention(query, [(key, value, 0.0), *extra])


class FramesAttnProcessor:
    """Self-attention over one frame's tokens (batch = videos x frames), with anchors and cache.
    Mirrors diffusers' `AttnProcessor2_0`."""

    def __init__(self, name: str, state: AttentionState):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(f"{self.name}: the frames processor is for plain self-attention layers")
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = _project(attn, hidden_states, batch_size)
        out = self._attention(query, key, value, attention_mask)
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, out.shape[1] * out.shape[3]).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attention(self, query, key, value, attention_mask):
        state, videos = self.state, self.state.videos
        name = self.name + state.branch
        frames = query.shape[0] // videos
        if state.recording:
            # [videos * anchors, heads, tokens, dim] -> [videos, heads, anchors * tokens, dim]
            state.anchors[name] = tuple(_frames_to_tokens(t, videos) for t in (key, value))
        state.keep_in_cache(name, key, value)
        if not state.extra_sources(name, slice(0, 1)):
            return _attend(query, key, value, [], attention_mask)
        # Anchors are [1, ...] per video and broadcast over its frames; cached keys are per frame.
        per_video = []
        for video in range(videos):
            rows = slice(video * frames, (video + 1) * frames)
            extra = [
                (k if k.shape[0] == 1 else k[rows], v if v.shape[0] == 1 else v[rows], w)
                for k, v, w in state.extra_sources(name, slice(video, video + 1))
            ]
            per_video.append(_attend(query[rows], key[rows], value[rows], extra, attention_mask))
        return torch.cat(per_video)


class JointAttnProcessor:
    """Self-attention over text then all frames' tokens with rotary positions (batch = videos).
    Mirrors diffusers' `CogVideoXAttnProcessor2_0`."""

    def __init__(self, name: str, state: AttentionState):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        text_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = _project(attn, hidden_states, batch_size)
        if image_rotary_emb is not None:
            query[:, :, text_length:] = apply_rotary_emb(query[:, :, text_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_length:] = apply_rotary_emb(key[:, :, text_length:], image_rotary_emb)

        state = self.state
        name = self.name + state.branch
        video_key, video_value = key[:, :, text_length:], value[:, :, text_length:]
        if state.recording:
            state.anchors[name] = (video_key, video_value)
        state.keep_in_cache(name, video_key, video_value)
        extra = state.extra_sources(name, slice(None))
        out = _attend(query, key, value, extra, attention_mask)

        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, out.shape[1] * out.shape[3])
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_length, hidden_states.size(1) - text_length], dim=1
        )
        return hidden_states, encoder_hidden_states


class RotaryAttnProcessor:
    """Self-attention over all frames' tokens with rotary positions (batch = videos; the text is in
    a separate cross-attention). Mirrors diffusers' `WanAttnProcessor` on self-attention layers."""

    def __init__(self, name: str, state: AttentionState):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: the rotary processor is for self-attention layers")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        # [batch, tokens, heads, dim], as diffusers' attention backends take them
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _wan_rotary(query, *rotary_emb), _wan_rotary(key, *rotary_emb)

        state = self.state
        name = self.name + state.branch
        heads_first = [t.transpose(1, 2) for t in (query, key, value)]  # [batch, heads, tokens, dim]
        if state.recording:
            state.anchors[name] = tuple(heads_first[1:])
        state.keep_in_cache(name, *heads_first[1:])
        extra = state.extra_sources(name, slice(None))
        if extra:
            out = _attend(*heads_first, extra, attention_mask).transpose(1, 2)
        else:
            out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        hidden_states = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


def _wan_rotary(hidden_states, freqs_cos, freqs_sin):
    """Wan's rotary embedding of [batch, tokens, heads, dim] (a function inside WanAttnProcessor)."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


def _project(attn, hidden_states, batch_size):
    """Queries, keys and values [batch, heads, tokens, head_dim], normalised as the layer says."""
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def _frames_to_tokens(tensor: torch.Tensor, videos: int) -> torch.Tensor:
    frames_videos, heads, tokens, dim = tensor.shape
    frames = frames_videos // videos
    return tensor.view(videos, frames, heads, tokens, dim).transpose(1, 2).reshape(videos, heads, frames * tokens, dim)


PROCESSORS = {"frames": FramesAttnProcessor, "joint": JointAttnProcessor, "rotary": RotaryAttnProcessor}


def install_processors(model, state: AttentionState, layout_of: Callable[[str], Layout | None]) -> list[str]:
    """Swap the stabilizing processor into every attention layer `layout_of(name)` names a layout
    for (name as in `model.attn_processors`); returns those names."""
    processors, chosen = {}, []
    for name, processor in model.attn_processors.items():
        layout = layout_of(name)
        if layout is None:
            processors[name] = processor
        else:
            processors[name] = PROCESSORS[layout](name, state)
            chosen.append(name)
    if not chosen:
        raise ValueError("no self-attention layer matched: the model's layers are named differently")
    model.set_attn_processor(processors)
    return chosen


def track_passes(denoiser: torch.nn.Module, state: AttentionState, index: int) -> None:
    """Before each call of `denoiser` (number `index` of a model's denoisers), tell `state` which pass
    runs and on how many videos (its first input's batch): a model that calls its denoiser several
    times per prediction (Wan: conditional, then unconditional) keeps anchors and a cache per pass."""
    first = next(iter(inspect.signature(denoiser.forward).parameters))

    def begin_pass(module, args, kwargs):
        state.begin_pass(index, len(args[0] if args else kwargs[first]))

    denoiser.register_forward_pre_hook(begin_pass, with_kwargs=True)
