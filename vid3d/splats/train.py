"""Training 3D Gaussians on poses/ (the `splats` stage), following gsplat's simple_trainer:
its learning rates and schedules (fitted to the step count), L1 + SSIM loss, SH degree raised
progressively, and gsplat's DefaultStrategy (opacity reset repaired, vid3d.splats.strategy) for
densification on either rasterization backend.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from pytorch_msssim import ssim

from vid3d.config import SplatsSettings
from vid3d.device import resolve_device
from vid3d.errors import UserError
from vid3d.project import StageOutput, record_progress
from vid3d.splats import surface
from vid3d.splats.data import Dataset, load_dataset, load_points
from vid3d.splats.model import SPLATS_FILE, init_splats, load_ply, render, save_ply, with_sh_degree
from vid3d.splats.rasterize import resolve_backend
from vid3d.splats.results import CHECKPOINT_DIR, HISTORY_FILE, METRICS_FILE, RENDERS_DIR, write_history
from vid3d.splats.strategy import fitted_schedule, strategy_for
from vid3d.ui import log, progress

# gsplat simple_trainer's learning rates (means scaled by the scene size)
LEARNING_RATES = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
BACKGROUND_LR = 1e-2
SCENE_SCALE_MARGIN = 1.1  # gsplat's simple_trainer: the cameras' extent plus 10% sets the scale of the scene
CHECKPOINT = "ckpt.pt"


def train_splats(
    poses_dir: Path,
    settings: SplatsSettings,
    out_dir: Path,
    resume_dir: Path,
    device: str = "auto",
    start: Path | None = None,
) -> StageOutput:
    """Train, evaluate on the held-out frames and write splats.ply, renders/, metrics.json, ckpt/.
    The Gaussians start from poses/' points, or from the Gaussians in `start` (a splats.ply)."""
    torch_device = resolve_device(device)
    backend = resolve_backend(settings.backend, torch_device)
    if backend == "gsplat" and torch_device.type != "cuda":
        raise UserError("splats.backend = gsplat: gsplat's rasterizer needs a CUDA GPU; use torch or --device cuda")
    data = load_dataset(poses_dir, settings.test_every, torch_device, settings.max_side)
    if not data.train:
        raise UserError(f"{poses_dir}: no training frames left (splats.test_every={settings.test_every})")

    initial = None if start is None else with_sh_degree(load_ply(start), settings.sh_degree)
    trainer = Trainer(data, settings, backend, torch_device, load_points(poses_dir), initial)
    started = time.time()
    trainer.resume(resume_dir / CHECKPOINT)
    trainer.fit(resume_dir / CHECKPOINT)
    seconds = time.time() - started

    metrics = trainer.evaluate(out_dir / RENDERS_DIR)
    metrics.update(
        gaussians=len(trainer.splats["means"]),
        steps=settings.steps,
        train_seconds=round(seconds, 1),
        train_size=[data.width, data.height],
        background=[round(v, 4) for v in trainer.backgrounds()[0].tolist()],
        backend=backend,
        device=str(torch_device),
        peak_memory_mb=round(_peak_memory_mb(torch_device)),
    )
    save_ply(trainer.splats, out_dir / SPLATS_FILE)
    write_history(out_dir / HISTORY_FILE, trainer.history)
    (out_dir / CHECKPOINT_DIR).mkdir()
    trainer.save(out_dir / CHECKPOINT_DIR / CHECKPOINT)
    # the held-out frames by name (every test_every-th of transforms.json: nerfstudio's
    # --eval-mode interval --eval-interval N holds out the same)
    held_out = [data.names[i] for i in data.test]
    (out_dir / METRICS_FILE).write_text(json.dumps({**metrics, "held_out_frames": held_out}, indent=1))
    return StageOutput(
        outputs=[SPLATS_FILE, METRICS_FILE, RENDERS_DIR, CHECKPOINT_DIR, HISTORY_FILE],
        metrics=metrics,
        timings={"train": seconds},
    )


class Trainer:
    def __init__(
        self,
        data: Dataset,
        settings: SplatsSettings,
        backend: str,
        device: torch.device,
        points: tuple[np.ndarray, np.ndarray],
        initial: torch.nn.ParameterDict | None = None,
    ):
        """Gaussians initialised at `points` (positions, colours in [0, 1]), or `initial` ones."""
        settings = fitted_schedule(settings)
        self.data, self.settings, self.backend, self.device = data, settings, backend, device
        self.coarse = data.downscaled(2) if settings.coarse_steps else None  # the frames of the first steps
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.scene_scale = data.scene_scale() * SCENE_SCALE_MARGIN
        if initial is None:
            initial = init_splats(
                *points, settings.sh_degree, settings.init_opacity, settings.init_scale, self.generator
            )
        self.splats = initial.to(device)
        self.optimizers = {
            name: torch.optim.Adam(
                [
                    {
                        "params": param,
                        "lr": LEARNING_RATES[name] * (self.scene_scale if name == "means" else 1.0),
                        "name": name,
                    }
                ],
                eps=1e-15,
            )
            for name, param in self.splats.items()
        }
        # gsplat's schedule: the means' learning rate decays to 1% over training
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizers["means"], gamma=0.01 ** (1.0 / settings.steps)
        )
        # A learned background colour stands in for what is at infinity (the sky): without it, sky
        # pixels are painted by opaque Gaussians placed near the cameras, floaters in other views.
        self.background = torch.nn.Parameter(torch.zeros(3, device=device))
        self.background_optimizer = torch.optim.Adam([self.background], lr=BACKGROUND_LR)
        self.strategy = strategy_for(settings)
        self.strategy.check_sanity(self.splats, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self.step = 0
        self.order: list[int] | None = None
        self.history: list[tuple[int, float, float, int]] = []  # (step, loss, PSNR, Gaussians) of fit()'s steps

    def fit(self, checkpoint: Path) -> None:
        settings = self.settings
        try:
            with progress("splats: training", settings.steps) as advance:
                advance(self.step)
                while self.step < settings.steps:
                    loss, psnr = self.train_step()
                    self.history.append((self.step, loss, psnr, len(self.splats["means"])))
                    if self.step % settings.checkpoint_every == 0 and self.step < settings.steps:
                        self.checkpoint(checkpoint)
                    advance(1, loss=loss, psnr=psnr, gaussians=len(self.splats["means"]))
        except KeyboardInterrupt:
            self.checkpoint(checkpoint)  # Ctrl-C or SIGTERM: the rerun continues from here
            log.info("splats: saved a checkpoint at step %d; rerun to continue", self.step)
            raise

    def set_targets(self, data: Dataset) -> None:
        """Train on `data` from here on (new frames, or cameras, with as many training frames as before)
        and keep the Gaussians, the optimisers' state and the step: the feedback loop's warm start."""
        self.data = data
        self.coarse = data.downscaled(2) if self.settings.coarse_steps else None

    def train(self, steps: int) -> None:
        """`steps` more training steps, quietly (the feedback loop of generation trains this way)."""
        for _ in range(steps):
            self.train_step()

    def train_step(self) -> tuple[float, float]:
        """One step on the next frame of the seeded order: (loss, PSNR of the frame)."""
        if self.order is None:
            self.order = self._frame_order()
        result = self._train_step(self.order[self.step % len(self.order)])
        self.step += 1
        return result

    @torch.no_grad()
    def render_all(self) -> torch.Tensor:
        """[N, H, W, 3] every camera of the dataset, at the training SH degree reached."""
        sh_degree = min(self.step // self.settings.sh_degree_interval, self.settings.sh_degree)
        cameras = len(self.data.names)
        images, _, _ = render(
            self.splats,
            self.data.viewmats,
            self.data.Ks,
            self.data.width,
            self.data.height,
            sh_degree,
            backend=self.backend,
            backgrounds=self.backgrounds().expand(cameras, -1),
        )
        return images.clamp(0, 1)

    def _frame_order(self) -> list[int]:
        """One training frame per step: shuffled epochs, fixed by the seed (so a resumed run agrees)."""
        generator = torch.Generator().manual_seed(self.settings.seed + 1)
        epochs = math.ceil(self.settings.steps / len(self.data.train))
        train = torch.tensor(self.data.train)
        return torch.cat([train[torch.randperm(len(train), generator=generator)] for _ in range(epochs)]).tolist()

    def _train_step(self, index: int) -> tuple[float, float]:
        settings = self.settings
        data = self.coarse if self.coarse is not None and self.step < settings.coarse_steps else self.data
        sh_degree = min(self.step // settings.sh_degree_interval, settings.sh_degree)
        regularisers = surface.active(settings, self.step)
        channels = surface.channels_of(regularisers)
        camera = (data.viewmats[index : index + 1], data.Ks[index : index + 1], data.width, data.height, sh_degree)
        if channels:
            rendered = surface.render_surface(
                self.splats, *camera, channels, backend=self.backend, backgrounds=self.backgrounds()
            )
            image, info = rendered.image, rendered.info
        else:
            rendered = None
            image, _, info = render(self.splats, *camera, backend=self.backend, backgrounds=self.backgrounds())
        target = data.images[index : index + 1]
        loss = photometric_loss(image, target, settings.ssim_lambda)
        context = surface.Context(self.splats, self.scene_scale, rendered)
        for regulariser in regularisers:
            loss = loss + getattr(settings, f"{regulariser.name}_weight") * regulariser.loss(context)

        if settings.densify:
            self.strategy.step_pre_backward(self.splats, self.optimizers, self.strategy_state, self.step, info)
        loss.backward()
        for optimizer in (*self.optimizers.values(), self.background_optimizer):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if settings.densify:
            self.strategy.step_post_backward(
                self.splats, self.optimizers, self.strategy_state, self.step, info, packed=False
            )
        mse = float(((image.detach().clamp(0, 1) - target) ** 2).mean())
        return float(loss.detach()), -10 * math.log10(max(mse, 1e-10))

    @torch.no_grad()
    def evaluate(self, renders_dir: Path) -> dict[str, float]:
        """Held-out PSNR and SSIM; each held-out render is saved beside its original."""
        renders_dir.mkdir()
        frames = self.data.test or self.data.train
        psnrs, ssims = [], []
        for index in frames:
            image, _, _ = render(
                self.splats,
                self.data.viewmats[index : index + 1],
                self.data.Ks[index : index + 1],
                self.data.width,
                self.data.height,
                self.settings.sh_degree,
                backend=self.backend,
                backgrounds=self.backgrounds(),
            )
            image, target = image.clamp(0, 1), self.data.images[index : index + 1]
            psnrs.append(float(-10 * torch.log10(((image - target) ** 2).mean())))
            ssims.append(float(ssim(image.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=1.0)))
            side_by_side = torch.cat([image[0], target[0]], dim=1)
            picture = renders_dir / Path(self.data.names[index]).with_suffix(
                ".png"
            )  # lossless, whatever the frames are
            iio.imwrite(picture, (side_by_side * 255).round().byte().cpu().numpy())
        return {
            "psnr": round(float(np.mean(psnrs)), 3),
            "ssim": round(float(np.mean(ssims)), 4),
            "eval_frames": len(frames),
            "held_out": bool(self.data.test),
        }

    def backgrounds(self) -> torch.Tensor:
        """[1, 3] colour behind every Gaussian, in [0, 1]."""
        return torch.sigmoid(self.background)[None]

    def save(self, path: Path) -> None:
        """Everything a resumed run needs, written atomically."""
        state = {
            "step": self.step,
            "splats": {k: v.detach() for k, v in self.splats.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict(),
            "strategy_state": self.strategy_state,
            "background": self.background.detach(),
            "background_optimizer": self.background_optimizer.state_dict(),
            "history": self.history,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def checkpoint(self, path: Path) -> None:
        """save(), and its step beside it for `vid3d status`."""
        self.save(path)
        record_progress(path.parent, self.step, self.settings.steps)

    def resume(self, path: Path) -> None:
        if not path.exists():
            return
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.splats = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in state["splats"].items()})
        for name, optimizer in self.optimizers.items():
            optimizer.param_groups[0]["params"] = [self.splats[name]]
            optimizer.load_state_dict(state["optimizers"][name])
        self.scheduler.load_state_dict(state["scheduler"])
        self.strategy_state = state["strategy_state"]
        self.background.data.copy_(state["background"])
        self.background_optimizer.load_state_dict(state["background_optimizer"])
        self.step = state["step"]
        self.history = state.get("history", [])
        log.info("splats: resuming from the checkpoint at step %d", self.step)


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_lambda: float) -> torch.Tensor:
    """gsplat simple_trainer's loss between images [N, H, W, 3] in [0, 1]: L1 and (1 - SSIM) weighted
    by `ssim_lambda` (symmetric in its images)."""
    l1 = (render - target).abs().mean()
    similarity = ssim(render.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=1.0, size_average=True)
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - similarity)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
