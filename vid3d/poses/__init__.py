"""Poses: frames/ -> poses/, a self-contained dataset in COLMAP's and nerfstudio's layouts.

Two ways to the same dataset: `colmap.estimate_poses` (structure from motion with pycolmap) and
`given.poses_from_cameras` (known cameras, e.g. a generated orbit's). This package owns poses/:
`dataset.py` holds its writers and `read_dataset`, the one reader every other module uses.
"""

from .dataset import PosesDataset, read_dataset

__all__ = ["PosesDataset", "read_dataset"]
