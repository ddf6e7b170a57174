"""Compute kernels (Triton, CUDA) for vid3d, each with a PyTorch reference beside it.

The kernels arrive with the stages that use them.
"""
