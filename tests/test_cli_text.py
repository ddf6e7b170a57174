"""What the command line prints of user text is the text itself, and bad usage changes nothing."""

import pytest
import torch
from conftest import error_line, run_cli


def test_paths_and_settings_are_printed_literally(tmp_path):
    folder = tmp_path / "renders [final]"
    folder.mkdir()
    missing = folder / "clip[/x] :smile:.mp4"
    result = run_cli("frames", tmp_path / "project", "--input", missing)
    assert result.returncode == 2 and error_line(result.stderr) == (
        f"error: {missing}: no such file or folder; pass a video file or a folder of images to --input"
    )
    result = run_cli("frames", tmp_path / "project", "--set", "bogus.x=1")
    assert result.returncode == 2 and "unknown stage [bogus]" in error_line(result.stderr)
    result = run_cli("frames", tmp_path / "project", "--device", "cuda:x")
    assert result.returncode == 2 and "--device cuda:x:" in error_line(result.stderr)
    assert not (tmp_path / "project").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_refused_before_any_work(tmp_path):
    video = tmp_path / "missing.mp4"  # never read: the device is checked first
    result = run_cli("reconstruct", tmp_path / "project", "--input", video, "--device", "cuda")
    assert result.returncode == 2 and "no CUDA GPU" in error_line(result.stderr)
    assert not (tmp_path / "project").exists()


@pytest.mark.parametrize(
    "typed, named",
    [
        (["--frames", "1"], "error: --frames 1: must be at least 2"),
        (["--set", "generate.frames=1"], "error: --set: generate.frames = 1: must be at least 2"),
    ],
)
def test_a_bad_value_names_what_the_user_typed(tmp_path, typed, named):
    result = run_cli("generate", tmp_path / "project", "--image", tmp_path / "never-read.png", *typed)
    assert result.returncode == 2 and error_line(result.stderr) == named
    assert not (tmp_path / "project").exists()
