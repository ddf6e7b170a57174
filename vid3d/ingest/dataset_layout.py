"""Which kind of dataset a folder is, from its files' names alone: no pycolmap, so the check every
command makes on --input (a cached rerun too) costs no import of it (issue 24)."""

from __future__ import annotations

from pathlib import Path

TRANSFORMS_FILE = "transforms.json"
COLMAP_IMAGES_DIR = "images"


def colmap_model_dir(folder: Path) -> Path | None:
    """sparse/0, or sparse/ itself when it holds the model files; None when neither does."""
    for candidate in (folder / "sparse" / "0", folder / "sparse"):
        if any((candidate / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return candidate
    return None


def dataset_format(path: Path) -> str | None:
    """'nerfstudio' (transforms.json), 'colmap' (a sparse model and images/), or None: not a dataset."""
    if not path.is_dir():
        return None
    if (path / TRANSFORMS_FILE).is_file():
        return "nerfstudio"
    if colmap_model_dir(path) is not None and (path / COLMAP_IMAGES_DIR).is_dir():
        return "colmap"
    return None
