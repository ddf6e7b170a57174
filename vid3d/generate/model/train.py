"""Training of the shipped orbit model: the autoencoder first, then the latent diffusion transformer.

Reproducible by seed: every batch is drawn from a generator seeded by (seed, stage, step), so a run
resumed from its checkpoint draws the same batches as an uninterrupted one. Checkpoints, the
rendered data and the cached latents live under the run folder; `export` writes the final weights
(safetensors + configs), the scheduler config, loss.csv and settings.json to one folder.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from ..attention import AttentionState, install_processors
from . import RIG
from .autoencoder import OrbitAutoencoder
from .data import render_set
from .network import OrbitTransformer, spatial_layout

SHARD = 500  # scenes per cached render file
CPU = torch.device("cpu")


@dataclass
class Settings:
    seed: int = 0
    scenes: int = 2000  # training scenes: seeds 0 .. scenes-1
    latent_channels: int = 8
    ae_steps: int = 3000
    ae_batch: int = 32
    ae_crop: int = 32  # the autoencoder is convolutional: it trains on crops, runs on 64x64
    ae_lr: float = 1e-3
    steps: int = 3000
    batch: int = 8
    window: int = 8  # frames per training clip = the sampler's window
    lr: float = 3e-4
    warmup: int = 200
    anchor_probability: float = 0.75  # batches trained with the reference frame's K/V as anchors
    ema_decay: float = 0.998
    dim: int = 128
    depth: int = 6
    heads: int = 4
    checkpoint_every: int = 200
    plane_heights: str = ""  # extra reprojections of the reference over planes at these heights, "0.3,0.6"
    refine_width: int = 0  # channels of the convolutional refinement after the transformer (0: none)
    init_from: str = ""  # a transformer folder to start from (grown to these settings), "" for scratch
    temporal_weight: float = 0.0  # weight of the loss on frame-to-frame differences (0: off)
    own_input_probability: float = 0.0  # batches whose input is a DDIM step from the model's own prediction
    own_input_gap: int = 200  # ... made at up to this many timesteps more noise

    @property
    def heights(self) -> tuple[float, ...]:
        return tuple(float(h) for h in self.plane_heights.split(",") if h.strip())


def make_scheduler() -> DDIMScheduler:
    # x0 ("sample") prediction; "trailing" spacing starts sampling at the last training timestep.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def batch_generator(settings: Settings, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(settings.seed * 1_000_003 + stage * 100_003 + step)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1
    return x.movedim(-1, -3)


def load_clips(settings: Settings, data_dir: Path) -> np.ndarray:
    shards = [
        render_set(range(lo, min(lo + SHARD, settings.scenes)), data_dir / f"orbits_{lo:07d}_{lo + SHARD:07d}.npy")
        for lo in range(0, settings.scenes, SHARD)
    ]
    return np.concatenate([np.asarray(s) for s in shards])


class Log:
    """loss.csv rows (stage, step, loss, seconds); kept in the checkpoint so resumes continue it."""

    def __init__(self, path: Path, rows: list | None = None):
        self.path, self.rows = path, rows or []

    def add(self, stage: str, step: int, loss: float, seconds: float) -> None:
        self.rows.append((stage, step, round(loss, 6), round(seconds, 1)))

    def write(self) -> None:
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows([("stage", "step", "loss", "seconds"), *self.rows])


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.rename(path)


# ---------------------------------------------------------------- autoencoder


def train_autoencoder(
    settings: Settings, clips: np.ndarray, run: Path, log: Log, device: torch.device = CPU
) -> OrbitAutoencoder:
    torch.manual_seed(settings.seed)
    ae = OrbitAutoencoder(latent_channels=settings.latent_channels).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=settings.ae_lr, weight_decay=0.0)
    ckpt, start = run / "autoencoder.pt", 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        ae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, log.rows = state["step"], state["log"]
    began = time.time()
    for step in range(start, settings.ae_steps):
        g = batch_generator(settings, 1, step)
        images = ae_batch(clips, settings, g).to(device)
        lr = settings.ae_lr * 0.5 * (1 + math.cos(math.pi * step / settings.ae_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.l1_loss(ae(images), images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            log.add("autoencoder", step, loss.item(), time.time() - began)
            print(f"ae step {step} loss {loss.item():.4f} {time.time() - began:.0f}s", flush=True)
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.ae_steps:
            save_checkpoint(ckpt, model=ae.state_dict(), optimizer=opt.state_dict(), step=step + 1, log=log.rows)
            log.write()
    return ae


def ae_batch(clips: np.ndarray, settings: Settings, g: torch.Generator) -> torch.Tensor:
    n, crop = settings.ae_batch, settings.ae_crop
    scene = torch.randint(0, len(clips), (n,), generator=g)
    frame = torch.randint(0, clips.shape[1], (n,), generator=g)
    offset = torch.randint(0, (clips.shape[2] - crop) // 4 + 1, (n, 2), generator=g) * 4
    crops = [
        clips[s, f, y : y + crop, x : x + crop] for s, f, (y, x) in zip(scene.tolist(), frame.tolist(), offset.tolist())
    ]
    return to_unit(np.stack(crops))


@torch.no_grad()
def encode_clips(ae: OrbitAutoencoder, clips: np.ndarray, path: Path, device: torch.device = CPU) -> np.ndarray:
    """Unscaled latents of every frame [scenes, frames, C, 16, 16] as float16, cached at `path`."""
    if path.exists():
        return np.load(path)
    out = np.empty((len(clips), clips.shape[1], ae.config.latent_channels, 16, 16), np.float16)
    for i in range(0, len(clips), 8):
        images = to_unit(clips[i : i + 8]).flatten(0, 1).to(device)
        out[i : i + 8] = ae.encode(images).view(-1, clips.shape[1], *out.shape[2:]).cpu().numpy()
    np.save(path, out)
    return out


# ---------------------------------------------------------------- diffusion


def train_transformer(
    settings: Settings,
    latents: np.ndarray,
    scaling: float,
    run: Path,
    log: Log,
    max_minutes: float | None = None,
    device: torch.device = CPU,
) -> tuple[OrbitTransformer, int]:
    torch.manual_seed(settings.seed)
    model = OrbitTransformer(
        latent_channels=settings.latent_channels,
        dim=settings.dim,
        depth=settings.depth,
        heads=settings.heads,
        plane_heights=settings.heights,
        refine_width=settings.refine_width,
        **RIG,
    )
    if settings.init_from:
        grow(model, OrbitTransformer.from_pretrained(settings.init_from))
    model.to(device)
    ema = OrbitTransformer.from_config(model.config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    state = AttentionState()
    install_processors(model, state, spatial_layout)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    scheduler = make_scheduler()
    ckpt, start = run / "transformer.pt", 0
    if ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        start, log.rows = saved["step"], saved["log"]
    began, step = time.time(), start
    for step in range(start, settings.steps):
        if max_minutes is not None and time.time() - began > 60 * max_minutes:
            print(f"stopping at step {step}: --max-minutes reached", flush=True)
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(settings, step)
        g = batch_generator(settings, 2, step)
        loss = diffusion_loss(model, state, scheduler, latents, scaling, settings, g, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - settings.ema_decay)
        if step % 10 == 0:
            log.add("transformer", step, loss.item(), time.time() - began)
            print(f"step {step} loss {loss.item():.4f} {time.time() - began:.0f}s", flush=True)
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
            save_checkpoint(
                ckpt,
                model=model.state_dict(),
                ema=ema.state_dict(),
                optimizer=opt.state_dict(),
                step=step + 1,
                log=log.rows,
            )
            log.write()
    else:
        step = settings.steps
    save_checkpoint(
        ckpt, model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(), step=step, log=log.rows
    )
    log.write()
    return ema, step


def grow(model: OrbitTransformer, smaller: OrbitTransformer) -> None:
    """Start `model` from a trained `smaller` one: same-shaped parameters are copied, the patchify
    weights of inputs it lacked (extra plane warps, appended last) start at zero, and new layers keep
    their zero-initialised outputs, so the grown model computes exactly what `smaller` did."""
    own, theirs = model.state_dict(), smaller.state_dict()
    for name, value in theirs.items():
        if own[name].shape == value.shape:
            own[name].copy_(value)
        else:  # patchify.weight [dim, inputs, p, p]
            own[name].zero_()
            own[name][:, : value.shape[1]].copy_(value)
    model.load_state_dict(own)


def learning_rate(settings: Settings, step: int) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def diffusion_loss(model, state, scheduler, latents, scaling, settings, g, device: torch.device = CPU) -> torch.Tensor:
    """x0-prediction MSE on a batch of windows at random azimuth offsets from the reference (frame 0),
    plus the frame-difference loss when `temporal_weight` > 0. With `own_input_probability`, some
    batches start one DDIM step earlier, from the model's own (blurrier) prediction at more noise,
    as in sampling: the input the sampler gives it, not the ideal one."""
    b, w, frames = settings.batch, settings.window, latents.shape[1]
    scene = torch.randint(0, len(latents), (b,), generator=g)
    start = torch.randint(0, frames, (b,), generator=g)
    index = (start[:, None] + torch.arange(w)) % frames  # [b, w]
    clean = torch.from_numpy(latents[scene[:, None].numpy(), index.numpy()].astype(np.float32)) * scaling
    reference = torch.from_numpy(latents[scene.numpy(), 0].astype(np.float32)) * scaling
    azimuth = index.float() * (2 * math.pi / frames)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g)
    noise = torch.randn(clean.shape, generator=g)
    noisy = add_noise(scheduler, clean, noise, t)
    use_anchor = torch.rand((), generator=g).item() < settings.anchor_probability
    anchor_noise = torch.randn(reference.shape, generator=g)
    earlier = None
    if settings.own_input_probability > 0 and torch.rand((), generator=g).item() < settings.own_input_probability:
        gap = torch.randint(1, settings.own_input_gap + 1, (b,), generator=g)
        earlier = (t + gap).clamp(max=scheduler.config.num_train_timesteps - 1)
    # Batches are drawn on the CPU, so a run on a GPU trains on the same batches as one on the CPU.
    clean, reference, azimuth, t, noise, noisy, anchor_noise = (
        x.to(device) for x in (clean, reference, azimuth, t, noise, noisy, anchor_noise)
    )
    state.videos = b
    anchors = anchor_noise if use_anchor else None
    if earlier is not None:
        earlier = earlier.to(device)
        before = add_noise(scheduler, clean, noise, earlier)
        with torch.no_grad():
            guess = denoise(model, state, scheduler, before, earlier, reference, azimuth, anchors)
        noisy = ddim_step(scheduler, before, guess, earlier, t)
    pred = denoise(model, state, scheduler, noisy, t, reference, azimuth, anchors)
    return F.mse_loss(pred, clean) + settings.temporal_weight * temporal_loss(pred, clean)


def denoise(model, state, scheduler, noisy, t, reference, azimuth, anchor_noise) -> torch.Tensor:
    """The model's x0 prediction; with `anchor_noise`, it also attends to the reference frame at the
    same noise level, as the sampler records its anchors."""
    state.anchors.clear()
    if anchor_noise is not None:
        anchor = add_noise(scheduler, reference[:, None], anchor_noise[:, None], t)
        with state.record_anchors():
            model(anchor, t, reference, torch.zeros(len(t), 1, device=t.device))
    pred = model(noisy, t, reference, azimuth)
    state.anchors.clear()
    return pred


def ddim_step(scheduler, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from timestep t to the lower `to`, given the x0 prediction. By hand because
    diffusers' DDIMScheduler.step takes one timestep for the batch; here each video has its own."""
    a_t, a_to = alpha_at(scheduler, t, noisy), alpha_at(scheduler, to, noisy)
    epsilon = (noisy - a_t.sqrt() * pred) / (1 - a_t).sqrt()
    return a_to.sqrt() * pred + (1 - a_to).sqrt() * epsilon


def temporal_loss(pred: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """MSE of the frame-to-frame differences of clips [B, F, ...]. It has the same minimiser as the
    per-frame loss but weighs errors that change from frame to frame (an object that stays put or
    wobbles while the camera turns) more than errors the whole clip shares."""
    return F.mse_loss(pred[:, 1:] - pred[:, :-1], clean[:, 1:] - clean[:, :-1])


def add_noise(scheduler, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Noise [B, F, ...] latents at one timestep per video."""
    alpha = alpha_at(scheduler, t, clean)
    return alpha.sqrt() * clean + (1 - alpha).sqrt() * noise


def alpha_at(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The cumulative alpha of each video's timestep, shaped to broadcast over `like` [B, ...]."""
    return scheduler.alphas_cumprod.to(t.device)[t].view(-1, *[1] * (like.dim() - 1))


# ---------------------------------------------------------------- the whole run


def run(
    settings: Settings,
    run_dir: Path,
    data_dir: Path,
    max_minutes: float | None = None,
    device: torch.device | str = "cpu",
) -> Path:
    device = torch.device(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    log = Log(run_dir / "loss.csv")
    began = time.time()
    clips = load_clips(settings, data_dir)
    print(f"data: {clips.shape} in {time.time() - began:.0f}s", flush=True)
    ae = train_autoencoder(settings, clips, run_dir, log, device)
    latents = encode_clips(ae.eval(), clips, run_dir / "latents.npy", device)
    scaling = float(1.0 / latents[:200].astype(np.float32).std())
    ae.register_to_config(scaling_factor=scaling)
    print(f"latents {latents.shape}, scaling {scaling:.4f} at {time.time() - began:.0f}s", flush=True)
    del clips
    model, steps = train_transformer(settings, latents, scaling, run_dir, log, max_minutes, device)
    return export(ae, model, settings, steps, log, run_dir / "weights", time.time() - began, device)


def export(ae, model, settings, steps, log, out: Path, seconds: float, device: torch.device = CPU) -> Path:
    if out.exists():
        shutil.rmtree(out)
    ae.save_pretrained(out / "autoencoder", safe_serialization=True)
    model.save_pretrained(out / "transformer", safe_serialization=True)
    make_scheduler().save_pretrained(out)  # scheduler_config.json
    shutil.copy(log.path, out / "loss.csv")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    info = {**asdict(settings), "steps_done": steps, "wall_seconds": round(seconds), "device": where}
    (out / "settings.json").write_text(json.dumps(info, indent=2))
    return out
