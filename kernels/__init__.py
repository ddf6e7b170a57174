"""Compute kernels (Triton, CUDA) for vid3d, each with a PyTorch reference beside it.

Installed as ``vid3d_kernels``; the kernels arrive with the stages that use them.
"""
