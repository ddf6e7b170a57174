"""Training details with known answers: images loaded at a reduced size, the densification
schedule fitted to the step count, and opacity resets at the step the setting names."""

from dataclasses import replace

import numpy as np
import torch

from vid3d.cameras import Camera, write_cameras
from vid3d.config import SplatsSettings
from vid3d.ingest import write_frames
from vid3d.poses.given import poses_from_cameras
from vid3d.scenes import Cameras, make_scene, orbit_cameras, render
from vid3d.splats.data import Dataset, load_dataset
from vid3d.splats.strategy import GSPLAT_SCHEDULE, fitted_schedule
from vid3d.splats.train import Trainer


def poses_folder(tmp_path, cams):
    """poses/ of the procedural scene's renders at the cameras, as `vid3d poses` writes it."""
    frames_dir, poses_dir = tmp_path / "frames", tmp_path / "poses"
    frames_dir.mkdir()
    poses_dir.mkdir()
    write_frames(frames_dir, render(make_scene(4), cams).images, source="test")
    write_cameras(
        tmp_path / "cameras.json", [Camera(cams.cam_to_world[i], cams.K[i], cams.width) for i in range(len(cams))]
    )
    poses_from_cameras(frames_dir, tmp_path / "cameras.json", poses_dir, points=500)
    return poses_dir


def test_images_loaded_at_a_reduced_size_match_resizing_by_hand(tmp_path):
    cams = orbit_cameras(3, width=96, height=64)
    poses_dir = poses_folder(tmp_path, cams)
    full = load_dataset(poses_dir, test_every=0)
    half = load_dataset(poses_dir, test_every=0, max_side=48)
    assert (half.width, half.height) == (48, 32)
    # by hand: each new pixel is the mean of the 2x2 pixels it covers
    by_hand = (full.images * 255).round().reshape(3, 32, 2, 48, 2, 3).mean(dim=(2, 4))
    assert torch.allclose(half.images * 255, by_hand.round(), atol=0.51)
    expected_K = cams.K.copy()
    expected_K[:, :2] *= 0.5
    assert np.allclose(half.Ks.numpy(), expected_K, atol=1e-4)
    assert torch.equal(half.viewmats, full.viewmats)
    # the known answer: the scene rendered directly at the small size with those intrinsics
    small = render(make_scene(4), Cameras(expected_K, cams.cam_to_world, 48, 32), supersample=4).images
    assert np.abs(half.images.numpy() * 255 - small).mean() < 4.0
    # coarse to fine's half-size frames, made from the loaded ones, are the same frames
    coarse = full.downscaled(2)
    assert torch.allclose(coarse.images * 255, by_hand, atol=1e-3) and torch.allclose(coarse.Ks, half.Ks)


def test_max_side_leaves_smaller_images_alone(tmp_path):
    poses_dir = poses_folder(tmp_path, orbit_cameras(2, width=64, height=48))
    assert load_dataset(poses_dir, test_every=0, max_side=64).images.shape[1:3] == (48, 64)


def test_the_schedule_is_scaled_with_the_step_count_unless_given():
    fitted = fitted_schedule(SplatsSettings(steps=7000))
    assert fitted.refine_stop == 3500 and fitted.refine_start == 117 and fitted.sh_degree_interval == 233
    assert fitted.refine_every == 23 and fitted.reset_every == 700
    assert fitted.refine_stop <= fitted.steps
    full = fitted_schedule(SplatsSettings(steps=30000))
    assert {name: getattr(full, name) for name in GSPLAT_SCHEDULE} == GSPLAT_SCHEDULE
    given = fitted_schedule(SplatsSettings(steps=7000, refine_stop=5000, reset_every=1000))
    assert given.refine_stop == 5000 and given.reset_every == 1000
    short = fitted_schedule(SplatsSettings(steps=300))  # floors: no reset every few steps
    assert short.refine_every >= 10 and short.reset_every >= 30 * short.refine_every


def tiny_trainer(settings: SplatsSettings) -> Trainer:
    cams = orbit_cameras(4, width=32, height=32)
    images = torch.tensor(render(make_scene(4), cams).images, dtype=torch.float32) / 255
    data = Dataset(
        names=[f"{i}.png" for i in range(4)],
        images=images,
        viewmats=torch.tensor(np.linalg.inv(cams.cam_to_world), dtype=torch.float32),
        Ks=torch.tensor(cams.K, dtype=torch.float32),
        train=[0, 1, 2, 3],
        test=[],
    )
    points = np.random.default_rng(0).normal(0, 0.5, (300, 3)).astype(np.float32)
    return Trainer(data, settings, "torch", torch.device("cpu"), (points, np.full((300, 3), 0.5, np.float32)))


def test_opacities_are_reset_at_the_step_the_setting_names():
    trainer = tiny_trainer(
        SplatsSettings(steps=20, reset_every=6, refine_start=100, refine_stop=20, refine_every=10, init_opacity=0.5)
    )
    trainer.train(6)  # steps 0-5
    before = torch.sigmoid(trainer.splats["opacities"]).detach()
    assert float(before.min()) > 0.1
    trainer.train(1)  # step 6: the reset, to twice gsplat's pruning opacity (0.01)
    after = torch.sigmoid(trainer.splats["opacities"]).detach()
    assert float(after.max()) <= 0.0101
    assert len(after) == len(before)


def test_coarse_steps_train_on_half_size_frames_first(monkeypatch):
    import vid3d.splats.train

    sizes = []
    real_render = vid3d.splats.train.render

    def spy(splats, viewmats, Ks, width, height, *args, **kwargs):
        sizes.append((width, height, round(float(Ks[0, 0, 0]), 3)))
        return real_render(splats, viewmats, Ks, width, height, *args, **kwargs)

    monkeypatch.setattr(vid3d.splats.train, "render", spy)
    trainer = tiny_trainer(SplatsSettings(steps=4, coarse_steps=2, densify=False))
    trainer.train(4)
    focal = float(trainer.data.Ks[0, 0, 0])
    assert sizes == [(16, 16, round(focal / 2, 3))] * 2 + [(32, 32, round(focal, 3))] * 2


def test_new_targets_keep_the_gaussians_and_the_step():
    """The feedback loop's warm start: the same Gaussians and step, trained on the new frames."""
    trainer = tiny_trainer(SplatsSettings(steps=8, coarse_steps=8, densify=False))
    trainer.train(2)
    splats, new = trainer.splats, replace(trainer.data, images=1 - trainer.data.images)
    trainer.set_targets(new)
    assert trainer.data is new and trainer.step == 2 and trainer.splats is splats
    assert torch.equal(trainer.coarse.images, new.downscaled(2).images)  # the half-size frames follow
