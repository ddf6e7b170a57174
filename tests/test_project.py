import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line, run_cli

from vid3d.errors import StageError, UserError
from vid3d.pipeline import _say_why_not_resumed
from vid3d.project import STAGE_FILE, Project, StageOutput, fingerprint, record_progress


def writer(text, calls):
    def work(out):
        calls.append(text)
        (out / "data.txt").write_text(text)
        return StageOutput(outputs=["data.txt"], metrics={"length": len(text)})

    return work


def test_second_run_with_same_fingerprint_is_cached(tmp_path):
    project, calls = Project(tmp_path / "p"), []
    with project.lock():
        first = project.run_stage("frames", "fp1", {"count": 1}, {}, writer("a", calls))
        second = project.run_stage("frames", "fp1", {"count": 1}, {}, writer("a", calls))
    assert (first.status, second.status) == ("complete", "cached")
    assert calls == ["a"]
    assert second.metrics == {"length": 1} and second.outputs == ["frames/data.txt"]
    record = project.record("frames")
    assert record["status"] == "complete" and record["fingerprint"] == "fp1"
    assert "total" in record["timings"]
    assert "count = 1" in (tmp_path / "p" / "project.toml").read_text()


def test_new_fingerprint_reruns_and_marks_downstream_stale(tmp_path):
    project, calls = Project(tmp_path / "p"), []
    with project.lock():
        project.run_stage("frames", "f1", {}, {}, writer("a", calls))
        project.run_stage("poses", "p1", {}, {"frames": "f1"}, writer("b", calls))
        project.run_stage("frames", "f1", {}, {}, writer("a", calls))
        assert project.status()["poses"]["status"] == "complete"
        project.run_stage("frames", "f2", {}, {}, writer("c", calls))
    status = project.status()
    assert status["frames"]["status"] == "complete" and status["poses"]["status"] == "stale"
    assert status["splats"]["status"] == "missing"
    assert (tmp_path / "p" / "frames" / "data.txt").read_text() == "c"
    assert calls == ["a", "b", "c"]


def test_fingerprint_depends_on_settings_inputs_and_stage():
    base = fingerprint("poses", {"a": 1}, {"frames": "x"})
    assert base == fingerprint("poses", {"a": 1}, {"frames": "x"})
    assert base != fingerprint("poses", {"a": 2}, {"frames": "x"})
    assert base != fingerprint("poses", {"a": 1}, {"frames": "y"})
    assert base != fingerprint("splats", {"a": 1}, {"frames": "x"})


def test_damaged_outputs_are_not_complete(tmp_path):
    project = Project(tmp_path / "p")
    with project.lock():
        project.run_stage("frames", "f1", {}, {}, writer("abc", []))
    assert project.is_complete("frames", "f1")
    (tmp_path / "p" / "frames" / "data.txt").write_text("truncated-or-changed")
    assert not project.is_complete("frames", "f1")
    assert project.status()["frames"]["status"] == "incomplete"
    with project.lock():
        assert project.run_stage("frames", "f1", {}, {}, writer("abc", [])).status == "complete"


def test_failure_leaves_previous_outputs_and_no_temporary_folder(tmp_path):
    project = Project(tmp_path / "p")

    def broken(out):
        (out / "data.txt").write_text("half")
        raise StageError("too few frames registered")

    with project.lock():
        project.run_stage("frames", "f1", {}, {}, writer("good", []))
        with pytest.raises(StageError):
            project.run_stage("frames", "f2", {}, {}, broken)
    assert (tmp_path / "p" / "frames" / "data.txt").read_text() == "good"
    assert project.record("frames")["status"] == "failed"
    assert "too few frames" in project.record("frames")["error"]
    assert not list((tmp_path / "p").glob(".tmp-*"))


def test_user_error_changes_nothing_in_the_manifest(tmp_path):
    project = Project(tmp_path / "p")

    def bad_input(out):
        raise UserError("video.mp4: has no frames")

    with project.lock():
        project.run_stage("frames", "f1", {}, {}, writer("good", []))
        before = (tmp_path / "p" / "manifest.json").read_text()
        with pytest.raises(UserError):
            project.run_stage("frames", "f2", {"count": 3}, {}, bad_input)
    assert (tmp_path / "p" / "manifest.json").read_text() == before
    assert "count" not in (tmp_path / "p" / "project.toml").read_text()  # nor the settings


def test_settings_are_remembered_when_a_stage_starts(tmp_path):
    """A run stopped or killed mid-stage is remembered like a finished one: a bare rerun loads its settings."""
    project = Project(tmp_path / "p")

    def interrupted(out):
        assert "steps = 7" in (tmp_path / "p" / "project.toml").read_text()
        raise KeyboardInterrupt

    with project.lock(), pytest.raises(KeyboardInterrupt):
        project.run_stage("splats", "s1", {"steps": 7}, {}, interrupted)
    assert project.saved_settings()[0] == {"splats": {"steps": 7}}
    assert project.status()["splats"]["status"] == "missing"


def test_a_waiting_checkpoint_says_what_made_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vid3d", "reconstruct", "p", "--preset", "fast"])
    project = Project(tmp_path / "p")
    with project.lock():
        folder = project.start_resumable("splats", "s1", {"steps": 100}, {"poses": "p1"})
        record_progress(folder, 40, 100)
        again = project.start_resumable("splats", "s1", {"steps": 100}, {"poses": "p1"})  # a rerun continues it
    assert again == folder
    (waiting,) = project.checkpoints("splats")
    assert waiting["fingerprint"] == "s1" and (waiting["step"], waiting["steps"]) == (40, 100)
    assert waiting["command"] == "vid3d reconstruct p --preset fast" and waiting["settings"] == {"steps": 100}
    checkpoint = project.status()["splats"]["checkpoint"]
    assert checkpoint["step"] == 40 and checkpoint["remembered"] is False  # project.toml has no [splats] yet
    with project.lock():
        project._save_settings("splats", {"steps": 100})
    assert project.status()["splats"]["checkpoint"]["remembered"] is True

    result = run_cli("status", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    assert "splats: a checkpoint waits at step 40 of 100" in result.stderr
    assert f"`vid3d reconstruct {tmp_path / 'p'}` continues it" in result.stderr


def test_a_rerun_that_cannot_continue_a_checkpoint_says_why(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vid3d", "reconstruct", "p", "--preset", "fast"])
    project = Project(tmp_path / "p")
    with project.lock():
        record_progress(project.start_resumable("splats", "s1", {"steps": 100, "seed": 0}, {"poses": "p1"}), 40, 100)
    with caplog.at_level(logging.WARNING, logger="vid3d"):
        _say_why_not_resumed(project, "splats", "s1", {"steps": 100, "seed": 0}, {"poses": "p1"})  # the same run
        assert not caplog.records
        _say_why_not_resumed(project, "splats", "s2", {"steps": 500, "seed": 0}, {"poses": "p1"})
        _say_why_not_resumed(project, "splats", "s3", {"steps": 100, "seed": 0}, {"poses": "p2"})
    settings, inputs = (record.getMessage() for record in caplog.records)
    assert "checkpoint at step 40" in settings and "splats.steps = 500 here, 100 there" in settings
    assert "seed" not in settings and "`vid3d reconstruct p --preset fast` continues it" in settings
    assert "changed since (poses)" in inputs and "cannot be continued" in inputs


def _killed_midway(root, started):
    project = Project(root)

    def slow(out):
        (out / "data.txt").write_text("partial")
        started.set()
        time.sleep(60)
        return StageOutput()

    with project.lock():
        project.run_stage("frames", "f1", {}, {}, slow)


def test_process_killed_midway_leaves_no_complete_stage_and_rerun_completes(tmp_path):
    root = tmp_path / "p"
    started = multiprocessing.Event()
    process = multiprocessing.get_context("fork").Process(target=_killed_midway, args=(root, started))
    process.start()
    assert started.wait(30)
    os.kill(process.pid, 9)
    process.join()
    project = Project(root)
    assert not project.is_complete("frames")
    assert list(root.glob(".tmp-frames-*"))  # the dead process's scratch is still there...
    with project.lock():  # ...until the next writer takes the lock
        assert not list(root.glob(".tmp-*"))
        assert project.run_stage("frames", "f1", {}, {}, writer("done", [])).status == "complete"
    marker = json.loads((root / "frames" / STAGE_FILE).read_text())
    assert marker["fingerprint"] == "f1" and marker["files"] == {"data.txt": 4}


def _hold_lock(root, locked, release):
    with Project(root).lock():
        locked.set()
        release.wait(30)


def test_second_writer_gets_a_one_line_error_or_waits(tmp_path):
    root = tmp_path / "p"
    ctx = multiprocessing.get_context("fork")
    locked, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(root, locked, release))
    holder.start()
    assert locked.wait(30)
    with pytest.raises(UserError) as info, Project(root).lock():
        pass
    assert f"pid {holder.pid}" in str(info.value) and "--wait" in str(info.value)
    release.set()
    with Project(root).lock(wait=True):
        pass
    holder.join()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"{}", b"[1, 2]", b'{"stages": 3}'])
def test_a_corrupt_manifest_is_a_usage_error_naming_it(tmp_path, content):
    project = tmp_path / "p"
    project.mkdir()
    (project / "manifest.json").write_bytes(content)
    result = run_cli("status", project)
    assert result.returncode == 2 and "manifest.json: not a vid3d manifest" in error_line(result.stderr)
    assert (project / "manifest.json").read_bytes() == content


def test_a_binary_project_toml_is_a_usage_error_naming_it(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "project.toml").write_bytes(b"\xff\xfe\x00")
    result = run_cli("frames", project, "--input", tmp_path / "missing.mp4")
    assert result.returncode == 2 and "project.toml: not valid TOML" in error_line(result.stderr)


@pytest.mark.slow
def test_a_waiter_survives_the_holder_removing_a_new_project(tmp_path):
    """The holder of a new project's lock fails and removes the folder, then releases the lock;
    the process waiting with --wait must start again on a fresh folder, not crash on the removed one."""
    import shutil
    import subprocess
    import sys

    project = tmp_path / "p"
    holder = Project(project)
    video = Path(__file__).parents[1] / "examples" / "orbit.mp4"
    with holder.lock():
        waiter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vid3d.cli",
                "frames",
                str(project),
                "--input",
                str(video),
                "--set",
                "frames.count=10",
                "--wait",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)  # the waiter is blocked on the lock
        shutil.rmtree(project)  # what a failed first run does, still holding the lock
    _out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert (project / "frames" / "index.json").is_file()


def test_a_refused_process_leaves_the_holders_new_project_alone(tmp_path):
    project = tmp_path / "p"
    with Project(project).lock():
        result = run_cli("frames", project, "--input", tmp_path / "missing.mp4")
        assert result.returncode == 2 and "in use by" in error_line(result.stderr)
        assert (project / ".lock").is_file()


def test_a_failed_first_run_removes_the_parent_folders_it_made(tmp_path):
    (tmp_path / "a").mkdir()
    result = run_cli("frames", tmp_path / "a" / "b" / "c" / "P", "--input", tmp_path / "missing.mp4")
    assert result.returncode == 2 and "missing.mp4" in error_line(result.stderr)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]  # a was there before


def test_status_of_an_interrupted_first_run_lists_missing_stages(tmp_path):
    """What a first run killed mid-stage leaves: the lock file, logs/ and a temporary folder."""
    project = tmp_path / "p"
    (project / "logs").mkdir(parents=True)
    (project / "logs" / "vid3d.log").write_text("started\n")
    (project / ".lock").write_text("")
    (project / ".tmp-frames-123").mkdir()
    code = run_cli("status", project, "--json")
    assert code.returncode == 0, code.stderr
    stages = json.loads(code.stdout)["stages"]
    assert {stage: record["status"] for stage, record in stages.items()} == {
        "generate": "missing",
        "frames": "missing",
        "poses": "missing",
        "splats": "missing",
        "export": "missing",
    }
    result = run_cli("status", tmp_path / "nothing-here")
    assert result.returncode == 2 and "not a vid3d project" in error_line(result.stderr)
