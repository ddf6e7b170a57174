"""3D Gaussian Splatting: rasterization backends and training."""
