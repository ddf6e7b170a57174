"""Video models behind one interface (`VideoModel`), and `load_model` to pick one by name or folder."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from vid3d.errors import UserError

from .base import Request, VideoModel

# The adapter of each diffusers pipeline class, as "module.Class" in this package: imported only when
# used (each imports its diffusers pipeline). The module names the family: `tiny-<module>` is its
# random-weight test model.
ADAPTERS = {
    "StableVideoDiffusionPipeline": "svd.SVDModel",
    "CogVideoXImageToVideoPipeline": "cogvideox.CogVideoXModel",
    "WanImageToVideoPipeline": "wan.WanModel",
}
TINY = {f"tiny-{path.split('.')[0]}": path for path in ADAPTERS.values()}
ORBIT = "orbit.OrbitVideoModel"  # the embedded model: no diffusers pipeline


def load_model(spec: str, device: torch.device, dtype: torch.dtype) -> VideoModel:
    """`spec`: empty for the embedded orbit model (or a folder of orbit weights); tiny-svd /
    tiny-cogvideox / tiny-wan for random-weight test models; else a diffusers pipeline folder or a Hugging Face
    id already in the local cache."""
    adapter = adapter_class(spec)
    return adapter.tiny(device) if spec in TINY else adapter.load(spec, device, dtype)


def adapter_class(spec: str) -> type[VideoModel]:
    """The adapter `load_model(spec, ...)` makes, found without loading any weights (from the pipeline
    class a diffusers folder's model_index.json names)."""
    if spec in TINY:
        return _adapter(TINY[spec])
    folder = Path(spec)
    if not spec or ((folder / "transformer").is_dir() and (folder / "settings.json").is_file()):
        return _adapter(ORBIT)  # the shipped weights, or orbit weights written by scripts/train_model.py
    name = _pipeline_class(spec)
    if name not in ADAPTERS:
        raise UserError(f"model {spec!r} is a {name}; supported: {', '.join(ADAPTERS)}")
    return _adapter(ADAPTERS[name])


def _adapter(path: str) -> type[VideoModel]:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def _pipeline_class(spec: str) -> str:
    path = Path(spec)
    index = path / "model_index.json"
    if path.exists() and not index.exists():
        raise UserError(
            f"{path}: not a diffusers pipeline folder (no model_index.json); pass a folder saved with "
            "save_pretrained or a Hugging Face id"
        )
    try:
        if not index.exists():
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(spec, "model_index.json", local_files_only=True))
        return json.loads(index.read_text())["_class_name"]
    except Exception as exc:  # not in the cache, no network
        raise UserError(
            f"model {spec!r} is neither a folder nor in the Hugging Face cache: download it first "
            f"(huggingface-cli download {spec}) or pass its folder"
        ) from exc


__all__ = ["ADAPTERS", "Request", "VideoModel", "adapter_class", "load_model"]
