"""The point cloud asset: the centres of the opaque Gaussians with their colours, outliers removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import torch
import trimesh

from vid3d.export import Asset
from vid3d.splats.model import SH_C0

OPAQUE = 0.5  # Gaussians above this opacity are points of the point cloud
# Statistical outlier removal as open3d's tutorial does it: a point whose mean distance to its 20
# neighbours is more than 2 standard deviations above the average is dropped.
OUTLIER_NEIGHBOURS, OUTLIER_STD_RATIO = 20, 2.0


def write(
    asset: Asset, splats: torch.nn.ParameterDict, poses_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    cloud = point_cloud(splats)
    cloud.export(out_dir / asset.files[0])
    return {"points": len(cloud.vertices)}


def point_cloud(splats: torch.nn.ParameterDict) -> trimesh.PointCloud:
    """Centres of the opaque Gaussians, coloured by their view-independent colour, outliers removed."""
    keep = torch.sigmoid(splats["opacities"]) > OPAQUE
    points = splats["means"][keep].detach().cpu().numpy().astype(np.float64)
    colours = (splats["sh0"][keep, 0] * SH_C0 + 0.5).clamp(0, 1).detach().cpu().numpy()
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    _, inliers = cloud.remove_statistical_outlier(nb_neighbors=OUTLIER_NEIGHBOURS, std_ratio=OUTLIER_STD_RATIO)
    return trimesh.PointCloud(points[inliers], colors=(colours[inliers] * 255).round().astype(np.uint8))
