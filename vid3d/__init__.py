"""vid3d: video to 3D. Generate video, recover cameras, fit Gaussian splats, export meshes."""

__version__ = "0.1.0"
