"""Temporal windows, fusion weights and the shared noise field: exact properties."""

import pytest
import torch

from vid3d.generate.windows import frame_weights, fuse, shared_noise, window_starts, windows


@pytest.mark.parametrize("num_frames, window, stride", [(48, 14, 7), (50, 14, 10), (14, 14, 4), (30, 8, 8)])
def test_windows_cover_every_frame_and_end_on_the_last(num_frames, window, stride):
    sets = windows(num_frames, window, stride)
    assert all(len(s) == window for s in sets)
    assert set(torch.cat(sets).tolist()) == set(range(num_frames))
    assert sets[-1][-1] == num_frames - 1 and sets[0][0] == 0


def test_circular_windows_join_the_end_to_the_start():
    sets = windows(48, 14, 7, circular=True)
    assert window_starts(48, 14, 7, circular=True) == list(range(0, 48, 7))
    assert any(47 in s.tolist() and 0 in s.tolist() for s in sets)
    assert all(len(s) == 14 for s in sets)


@pytest.mark.parametrize("kind", ["flat", "pyramid", "gaussian"])
def test_fusion_weights_sum_to_one_per_frame(kind):
    """Fusing windows that all say the same thing returns exactly that thing."""
    truth = torch.randn(2, 4, 40, 3, 3, dtype=torch.float64)  # frames on dim 2, as Wan's latents
    sets = windows(40, 12, 5)
    outputs = [truth.index_select(2, frames) for frames in sets]
    assert torch.allclose(fuse(outputs, sets, 40, frame_dim=2, kind=kind), truth, atol=1e-12)
    assert frame_weights(12, kind).max() == 1.0 and (frame_weights(12, kind) > 0).all()


def test_pyramid_weights_favour_the_middle_of_each_window():
    ones = [torch.zeros(1, 10), torch.ones(1, 10)]
    sets = [torch.arange(0, 10), torch.arange(5, 15)]
    fused = fuse(ones, sets, 15, frame_dim=1, kind="pyramid")[0]
    assert fused[5] < 0.5 < fused[9]  # frame 5 is central in window 0, frame 9 in window 1
    assert torch.allclose(fuse(ones, sets, 15, frame_dim=1, kind="flat")[0][5:10], torch.full((5,), 0.5))


def test_overlapping_frames_see_the_same_noise_in_every_window():
    noise = shared_noise((1, 48, 4, 8, 8), frame_dim=1, generator=torch.Generator().manual_seed(0))
    sets = windows(48, 14, 7, circular=True)
    slices = [noise.index_select(1, frames) for frames in sets]
    for (a, fa), (b, fb) in [((slices[i], sets[i]), (slices[i + 1], sets[i + 1])) for i in range(len(sets) - 1)]:
        shared = sorted(set(fa.tolist()) & set(fb.tolist()))
        assert shared
        for frame in shared:
            ia, ib = fa.tolist().index(frame), fb.tolist().index(frame)
            assert torch.equal(a[:, ia], b[:, ib])


def test_freenoise_reuses_the_first_window_shuffled():
    noise = shared_noise((1, 30, 2, 4, 4), frame_dim=1, generator=torch.Generator().manual_seed(0), freenoise_window=10)
    first = [noise[0, i] for i in range(10)]
    for block in (range(10, 20), range(20, 30)):
        matches = [next(j for j, f in enumerate(first) if torch.equal(noise[0, i], f)) for i in block]
        assert sorted(matches) == list(range(10))  # a permutation of the first window's noise
    assert not torch.equal(noise[0, 10:20], noise[0, :10])
