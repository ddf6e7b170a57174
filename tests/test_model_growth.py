"""Growing a trained orbit transformer with more plane warps and the refinement (training phase 3)
starts from exactly the smaller model's function, and the new inputs are then live."""

import torch

from vid3d.generate.model.data import RIG
from vid3d.generate.model.network import OrbitTransformer
from vid3d.generate.model.train import grow


def small(**extra) -> OrbitTransformer:
    return OrbitTransformer(dim=32, depth=1, heads=2, **RIG, **extra)


def test_grown_model_computes_what_the_smaller_one_did():
    torch.manual_seed(0)
    smaller = small()
    with torch.no_grad():  # a "trained" model: no zero-initialised layers left
        for p in smaller.parameters():
            p.normal_(0, 0.2)
    grown = small(plane_heights=(0.5, 1.0), refine_width=16)
    grow(grown, smaller)

    sample, reference = torch.randn(1, 3, 8, 16, 16), torch.randn(1, 8, 16, 16)
    azimuth, t = torch.tensor([[0.0, 0.6, 1.2]]), torch.tensor([400])
    with torch.no_grad():
        assert torch.equal(grown(sample, t, reference, azimuth), smaller(sample, t, reference, azimuth))
        # the plane warps' input weights exist and are zero until trained
        assert grown.patchify.weight.shape[1] == 5 * 8
        assert grown.patchify.weight[:, 3 * 8 :].abs().sum() == 0
        grown.patchify.weight[:, 3 * 8 :].normal_(0, 0.2)
        assert not torch.allclose(grown(sample, t, reference, azimuth), smaller(sample, t, reference, azimuth))
