"""Measurements of vid3d's outputs against known answers."""
