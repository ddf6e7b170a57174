"""The splat asset: the Gaussians themselves, in one of the formats of ASSET_KINDS' splat row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from gsplat.exporter import export_splats

from vid3d.export import Asset
from vid3d.splats.model import PARAM_NAMES, save_ply


def write(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    if asset.settings["format"] == "ply":  # with the normals fixed-record readers expect (see save_ply)
        save_ply(splats, out_dir / asset.files[0])
    else:
        export_splats(
            *(splats[k].detach().cpu() for k in PARAM_NAMES),
            format=asset.settings["format"],
            save_to=str(out_dir / asset.files[0]),
        )
    return {}
