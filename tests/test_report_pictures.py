"""report.html's pictures, in-process (the fast tier's test of vid3d.report_plots; test_view_report
opens the whole page in Chromium)."""

import imageio.v3 as iio
import numpy as np

from vid3d.report_plots import camera_path_figure, mesh_figure, thumbnail_jpeg
from vid3d.scenes import make_scene, orbit_cameras


def test_a_thumbnail_keeps_the_aspect_and_a_small_image_its_size():
    image = np.zeros((128, 256, 3), np.uint8)
    image[:, 128:] = [255, 0, 0]  # the right half red: RGB order survives the JPEG
    small = iio.imread(thumbnail_jpeg(image, 64))
    assert small.shape == (32, 64, 3)
    assert small[16, 48, 0] > 200 and small[16, 48, 2] < 50 and small[16, 8].max() < 30
    assert iio.imread(thumbnail_jpeg(image, 512)).shape == (128, 256, 3)


def test_the_camera_path_figure_is_a_png():
    png = camera_path_figure(orbit_cameras(8, width=64, height=64).cam_to_world, None)
    assert png.startswith(b"\x89PNG") and iio.imread(png).ndim == 3


def test_the_mesh_picture_has_no_empty_band_around_a_flat_scene():
    """A ground disk with a few objects fills the picture's width; the 3D axes' cube would leave
    empty bands above and below it."""
    picture = iio.imread(mesh_figure(make_scene(0).mesh(), orbit_cameras(8, width=64, height=64).cam_to_world))
    drawn = (picture[..., :3] < 250).any(axis=-1)
    rows, columns = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
    assert rows[0] <= 10 and rows[-1] >= picture.shape[0] - 11
    assert columns[0] <= 10 and columns[-1] >= picture.shape[1] - 11
    assert picture.shape[1] > 1.3 * picture.shape[0]  # seen from above the first camera: wider than tall
