import json

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
from conftest import error_line, run_cli, run_json, tree

from vid3d.config import FramesSettings
from vid3d.ingest import Source, ingest, select_sharpest, sharpness


def textured_frames(n, size=(96, 128), seed=0):
    """A sliding random texture: every frame sharp and distinct."""
    rng = np.random.default_rng(seed)
    base = (rng.random((size[0], size[1] + 4 * n, 3)) * 255).astype(np.uint8)
    base = cv2.resize(
        cv2.resize(base, None, fx=0.5, fy=0.5), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_NEAREST
    )
    return [base[:, 4 * i : 4 * i + size[1]].copy() for i in range(n)]


def blur(image):
    return cv2.GaussianBlur(image, (0, 0), 3)


def write_video(path, frames, fps=10):
    iio.imwrite(path, np.stack(frames), plugin="FFMPEG", fps=fps, codec="libx264", quality=10, macro_block_size=16)


def test_keeps_the_sharpest_frame_of_each_interval():
    frames = textured_frames(40)
    rng = np.random.default_rng(1)
    sharp = [4 * k + int(rng.integers(4)) for k in range(10)]  # one sharp frame in each interval of 4
    frames = [f if i in sharp else blur(f) for i, f in enumerate(frames)]
    sources = [Source(index=i, load=lambda f=f: f) for i, f in enumerate(frames)]
    chosen = [source.index for source, _, _ in select_sharpest(sources, total=40, count=10)]
    assert chosen == sharp


def test_blank_frames_are_never_kept():
    assert sharpness(np.zeros((64, 64, 3), np.uint8)) is None
    assert sharpness(textured_frames(1)[0]) > 100


def test_video_is_sampled_resized_and_indexed(tmp_path):
    frames = textured_frames(30)
    frames = [blur(f) if i % 3 else f for i, f in enumerate(frames)]  # frames 0, 3, 6, ... sharp
    video = tmp_path / "clip.mp4"
    write_video(video, frames, fps=10)
    out = tmp_path / "frames"
    out.mkdir()
    result = ingest(video, FramesSettings(count=10, max_side=64, min_frames=5), out)
    index = json.loads((out / "index.json").read_text())
    assert result.metrics["frames"] == 10 and index["source_frames"] == 30
    assert [e["source_index"] for e in index["frames"]] == list(range(0, 30, 3))
    assert [e["timestamp"] for e in index["frames"]] == pytest.approx([i / 10 for i in range(0, 30, 3)])
    assert sorted(p.name for p in out.glob("0*")) == [f"{i:05d}.jpg" for i in range(10)]  # lossy source: JPEG
    assert iio.imread(out / "00000.jpg").shape == (48, 64, 3)
    assert (index["width"], index["height"]) == (64, 48)


def test_image_folder_keeps_names_in_natural_order(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, frame in enumerate(textured_frames(12)):
        iio.imwrite(folder / f"IMG_{i}.jpg", frame)
    out = tmp_path / "frames"
    out.mkdir()
    ingest(folder, FramesSettings(count=12, max_side=0, min_frames=2), out)
    index = json.loads((out / "index.json").read_text())
    assert [e["source"] for e in index["frames"]] == [f"IMG_{i}.jpg" for i in range(12)]
    assert index["kind"] == "images"
    assert index["frames"][0]["file"] == "00000.jpg"  # JPEG sources stay JPEG


def test_lossless_images_stay_lossless(tmp_path):
    folder = tmp_path / "renders"
    folder.mkdir()
    frames = textured_frames(3)
    for i, frame in enumerate(frames):
        iio.imwrite(folder / f"{i}.png", frame)
    out = tmp_path / "frames"
    out.mkdir()
    ingest(folder, FramesSettings(count=3, max_side=0, min_frames=2), out)
    assert [np.array_equal(iio.imread(out / f"{i:05d}.png"), frame) for i, frame in enumerate(frames)] == [True] * 3


@pytest.fixture
def bad_inputs(tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    mostly_black = tmp_path / "black.mp4"
    write_video(mostly_black, [np.zeros((96, 128, 3), np.uint8)] * 20 + textured_frames(3))
    audio_only = tmp_path / "audio.mp4"
    import subprocess

    import imageio_ffmpeg

    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anullsrc",
            "-t",
            "1",
            "-c:a",
            "aac",
            str(audio_only),
        ],
        check=True,
    )
    return {
        "missing": (tmp_path / "nope.mp4", "no such file or folder"),
        "not a video": (not_video, "not a readable video"),
        "audio only": (audio_only, "no video stream"),
        "empty folder": (empty, "no images"),
        "too few usable frames": (mostly_black, "only 3 usable frames"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        *(
            pytest.param(c, marks=pytest.mark.slow)
            for c in ("not a video", "audio only", "empty folder", "too few usable frames")
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, bad_inputs, case):
    path, words = bad_inputs[case]
    new_project = tmp_path / "new"
    result = run_cli("frames", new_project, "--input", path)
    assert result.returncode == 2, result.stderr
    line = error_line(result.stderr)
    assert words in line and path.name in line
    assert not new_project.exists()

    existing = tmp_path / "existing"
    good = tmp_path / "good.mp4"
    write_video(good, textured_frames(12))
    assert run_cli("frames", existing, "--input", good, "--set", "frames.min_frames=5").returncode == 0
    before = tree(existing)
    code, report = run_json("frames", existing, "--input", path)
    assert code == 2 and report["status"] == "error" and words in report["error"]
    assert tree(existing) == before


def test_bad_usage_exits_2(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    for args, words in [
        (["frames", a_file, "--input", a_file], "is a file"),
        (["frames", mine, "--input", a_file], "not a vid3d project"),
        (["frames", tmp_path / "p", "--set", "frames.count=zero"], "frames.count"),
        (["frames", tmp_path / "p", "--device", "tpu"], "--device tpu"),
        (["frames", tmp_path / "p"], "--input"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2 and words in error_line(result.stderr), (args, result.stderr)
    assert (mine / "thesis.tex").read_text() == "precious" and len(list(mine.iterdir())) == 1


def test_a_folder_of_two_image_sizes_is_refused_at_ingest(tmp_path):
    """Landscape and portrait photos mixed: one line naming both sizes, before poses and training."""
    folder = tmp_path / "photos"
    folder.mkdir()
    frames = textured_frames(6)
    for i, frame in enumerate(frames):
        iio.imwrite(folder / f"{i:02d}.png", frame if i != 3 else np.ascontiguousarray(frame.transpose(1, 0, 2)))
    result = run_cli("frames", tmp_path / "project", "--input", folder, "--set", "frames.min_frames=2")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "03.png is 96x128" in line and "128x96" in line
    assert not (tmp_path / "project").exists()
