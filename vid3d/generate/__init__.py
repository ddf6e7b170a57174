"""Generation: long, temporally coherent video from a reference image with diffusers video models."""
