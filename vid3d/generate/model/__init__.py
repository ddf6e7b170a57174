"""The embedded orbit model (docs/model.md): its networks, training data, training and shipped weights."""

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"  # the shipped weights (scripts/train_model.py --install)
SIZE = 64  # the model's only frame size, in pixels
# The one camera rig the model is trained for: its transformer's config, its training orbits and
# the cameras the adapter reports all come from here.
RIG = {"radius": 3.0, "elevation_deg": 30.0, "fov_deg": 50.0, "look_at": (0.0, 0.0, 0.4)}
