"""The shipped orbit model on a held-out procedural scene: the orbit starts at the reference and
turns the way the camera turns."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vid3d.generate.adapters.base import Request
from vid3d.generate.adapters.orbit import OrbitVideoModel
from vid3d.generate.model.data import HELD_OUT_SEED, render_orbit, render_orbit_start
from vid3d.generate.sampler import Plan, Stabilizers, sample
from vid3d.metrics.video import object_motion

SEED = HELD_OUT_SEED + 50  # held out, and not one of the quality gate's scenes
FRAMES = 16  # 7.5 degrees apart, as in training: 112.5 degrees of orbit
SAMPLER_SEEDS = range(5)  # one orbit is a single draw: the direction is judged over several
WEIGHTS = os.environ.get("VID3D_ORBIT_WEIGHTS")  # default: the shipped weights


@pytest.fixture(scope="module")
def orbit_video(tmp_path_factory):
    """Generated in a child process: loading the model sets process-wide state (flush-to-zero for
    denormals) after which a later test in the same pytest process crashed (segfault) in CI runs."""
    out = tmp_path_factory.mktemp("orbit") / "video.npz"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_model; test_model.generate_to(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=600)
    data = np.load(out)
    return data["truth"], data["objects"], data["videos"]


def generate_to(path: str) -> None:
    truth, objects, videos = _generate()
    np.savez(path, truth=truth, objects=objects, videos=videos)


def _generate():
    truth, objects = render_orbit_start(SEED, FRAMES)
    model = OrbitVideoModel.load(WEIGHTS)
    request = Request(image=truth[0], num_frames=FRAMES, orbit_degrees=FRAMES * 7.5)
    videos = []
    for seed in SAMPLER_SEEDS:
        generator = torch.Generator().manual_seed(seed)
        condition = model.prepare(request, generator)
        latents = sample(model, condition, request, Plan(steps=20), Stabilizers(anchors=(0,)), generator)
        videos.append(model.decode(latents, condition))
    return truth, objects, np.stack(videos)


def mae(a, b) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255)


def chance_threshold(pairs: int, p_value: float = 0.01) -> float:
    """The fraction of right signs that a directionless model (a coin toss per pair) reaches with
    probability below p_value."""
    for k in range(pairs + 1):
        if sum(math.comb(pairs, j) for j in range(k, pairs + 1)) / 2**pairs < p_value:
            return k / pairs
    return 1.0


@pytest.mark.slow
def test_first_frame_is_the_reference(orbit_video):
    truth, _, videos = orbit_video
    other_scene = render_orbit(SEED + 1, frames=1)[0]
    for generated in videos:
        assert mae(generated[0], truth[0]) < 0.5 * mae(generated[0], other_scene)
        assert mae(generated[0], truth[0]) < 0.06


@pytest.mark.slow
def test_frames_move_the_way_the_camera_turns(orbit_video):
    truth, objects, videos = orbit_video
    # Objects nearer than the orbit's pivot move one way, farther ones the other: the direction is
    # taken from the true renders, pair by pair, where the objects clearly move.
    motions = [object_motion(generated, truth, objects) for generated in videos]
    right = np.concatenate([r for r, _ in motions])
    assert right.size >= 5 * len(videos), right.size
    assert right.mean() >= chance_threshold(right.size), [r.mean() for r, _ in motions]
    assert np.mean([share for _, share in motions]) > 0.3, motions
