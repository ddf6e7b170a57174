"""Video models behind one interface (`VideoModel`), and `load_model` to pick one by name or folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vid3d.errors import UserError

from .base import Request, VideoModel

TINY = ("tiny-svd", "tiny-cogvideox", "tiny-wan")
PIPELINES = {
    "StableVideoDiffusionPipeline": "svd",
    "CogVideoXImageToVideoPipeline": "cogvideox",
    "WanImageToVideoPipeline": "wan",
}


def load_model(spec: str, device: torch.device, dtype: torch.dtype) -> VideoModel:
    """`spec`: empty for the embedded orbit model (or a folder of orbit weights); tiny-svd /
    tiny-cogvideox / tiny-wan for random-weight test models; else a diffusers pipeline folder or a Hugging Face
    id already in the local cache."""
    if not spec:
        from .orbit import OrbitVideoModel

        return OrbitVideoModel.load(device=device)
    if spec in TINY:
        return _tiny(spec, device)
    if (Path(spec) / "transformer").is_dir() and (Path(spec) / "settings.json").is_file():
        from .orbit import OrbitVideoModel  # orbit weights written by scripts/train_model.py

        return OrbitVideoModel.load(spec, device=device)
    family, pipe = _load_pipeline(spec, dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if family == "svd":
        from .svd import SVDModel

        return SVDModel(pipe)
    if family == "wan":
        from .wan import WanModel

        pipe.vae.to(torch.float32)  # as Wan's own examples load it: the video decodes in full precision
        return WanModel(pipe)
    from .cogvideox import CogVideoXModel

    return CogVideoXModel(pipe)


def _tiny(spec: str, device: torch.device) -> VideoModel:
    from vid3d.generate import tiny

    if spec == "tiny-svd":
        from .svd import SVDModel

        return SVDModel(tiny.tiny_svd().to(device))
    if spec == "tiny-wan":
        from .wan import WanModel

        return WanModel(tiny.tiny_wan().to(device), height=32, width=32, window_frames=9)
    from .cogvideox import CogVideoXModel

    return CogVideoXModel(tiny.tiny_cogvideox().to(device), max_sequence_length=16)


def _load_pipeline(spec: str, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    path = Path(spec)
    index = path / "model_index.json"
    if path.exists() and not index.exists():
        raise UserError(
            f"{path}: not a diffusers pipeline folder (no model_index.json); pass a folder saved with "
            "save_pretrained or a Hugging Face id"
        )
    try:
        if index.exists():
            name = json.loads(index.read_text())["_class_name"]
        else:
            from huggingface_hub import hf_hub_download

            name = json.loads(Path(hf_hub_download(spec, "model_index.json", local_files_only=True)).read_text())[
                "_class_name"
            ]
    except Exception as exc:  # not in the cache, no network
        raise UserError(
            f"model {spec!r} is neither a folder nor in the Hugging Face cache: download it first "
            f"(huggingface-cli download {spec}) or pass its folder"
        ) from exc
    if name not in PIPELINES:
        raise UserError(f"model {spec!r} is a {name}; supported: {', '.join(PIPELINES)}")
    pipe = DiffusionPipeline.from_pretrained(spec, torch_dtype=dtype, local_files_only=True)
    return PIPELINES[name], pipe


__all__ = ["Request", "VideoModel", "load_model"]
