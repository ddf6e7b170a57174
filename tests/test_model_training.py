"""The orbit model's training script: a run interrupted and resumed from its checkpoint ends with
the same weights as an uninterrupted one, and the frame-difference loss measures motion."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vid3d.generate.model import train
from vid3d.generate.model.train import Settings, temporal_loss

TINY = Settings(
    scenes=2,
    ae_steps=2,
    ae_batch=2,
    steps=4,
    batch=2,
    window=4,
    warmup=1,
    dim=32,
    depth=1,
    heads=2,
    checkpoint_every=2,
    plane_heights="0.5",
    refine_width=8,
    temporal_weight=1.0,
)


def weights(run_dir):
    return load_file(run_dir / "weights" / "transformer" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    data = tmp_path / "data"
    train.run(TINY, tmp_path / "straight", data)

    calls, loss, dies_at = [], train.diffusion_loss, [3]

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == dies_at[0]:  # the node dies during step 3, after the step-2 checkpoint
            raise KeyboardInterrupt
        return loss(*args, **kwargs)

    monkeypatch.setattr(train, "diffusion_loss", counted)
    with pytest.raises(KeyboardInterrupt):
        train.run(TINY, tmp_path / "resumed", data)
    calls.clear()
    dies_at[0] = 0
    train.run(TINY, tmp_path / "resumed", data)
    assert len(calls) == 2  # steps 3 and 4 only: it went on from the checkpoint

    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name
    info = json.loads((tmp_path / "resumed" / "weights" / "settings.json").read_text())
    assert info["steps_done"] == 4 and info["temporal_weight"] == 1.0


def test_frame_difference_loss_sees_a_frozen_clip_not_a_shared_offset():
    torch.manual_seed(0)
    clip = torch.randn(2, 5, 8, 4, 4).cumsum(dim=1)  # [videos, frames, ...]: content that changes
    shifted = clip + 0.5  # every frame wrong by the same amount
    frozen = clip[:, :1].expand_as(clip)  # the first frame held: nothing moves
    assert temporal_loss(shifted, clip) < 1e-10
    assert torch.nn.functional.mse_loss(shifted, clip) == pytest.approx(0.25)
    assert temporal_loss(frozen, clip) == pytest.approx(float((clip[:, 1:] - clip[:, :-1]).pow(2).mean()))


def test_a_ddim_step_from_the_true_sample_lands_on_the_forward_noising():
    """The own-prediction inputs are made by this step: from a perfect prediction it gives what
    noising the clean latents directly gives; a wrong prediction carries its error into the input."""
    scheduler = train.make_scheduler()
    torch.manual_seed(1)
    clean, noise = torch.randn(3, 4, 8, 4, 4), torch.randn(3, 4, 8, 4, 4)
    t, earlier = torch.tensor([10, 400, 800]), torch.tensor([200, 600, 999])
    start = train.add_noise(scheduler, clean, noise, earlier)
    step = train.ddim_step(scheduler, start, clean, earlier, t)
    assert torch.allclose(step, train.add_noise(scheduler, clean, noise, t), atol=1e-4)
    wrong = train.ddim_step(scheduler, start, clean + 1.0, earlier, t)
    assert ((wrong - step).mean(dim=(1, 2, 3, 4)) > 0.1).all()
