"""The project folder: manifest, resolved settings, fingerprints, atomic stage outputs and the lock.

A stage is complete when the manifest records it complete with fingerprint F and its folder holds
`.stage.json` with the same F and every file listed there at its recorded size (and, for the main
outputs other stages read, with its recorded content hash). Outputs are written
to `.tmp-<stage>-<pid>/` and renamed into place before the manifest is updated, so a process killed
at any moment leaves either the old complete stage, or a stage that is not complete and reruns.

A stage's settings are saved to project.toml when it starts, not only when it completes: a run
stopped by a signal or killed is remembered like a finished one, so a bare rerun (`vid3d
reconstruct P`) continues it from its checkpoint in `.resume/<stage>-<fingerprint>/`, which also
holds run.json (what started it) and progress.json (the checkpoint's step), for `vid3d status`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from vid3d import __version__
from vid3d.config import tomllib
from vid3d.errors import UserError

STAGES = ("generate", "frames", "poses", "splats", "export")  # upstream to downstream
MANIFEST = "manifest.json"
SETTINGS_FILE = "project.toml"
LOCK_FILE = ".lock"
STAGE_FILE = ".stage.json"
RESUME_DIR = ".resume"
RUN_FILE = "run.json"  # in a resume folder: the settings, inputs and command of the run that made it
PROGRESS_FILE = "progress.json"  # in a resume folder: the step its checkpoint holds, of how many


@dataclass
class StageOutput:
    """What a stage's work function returns besides the files it wrote."""

    outputs: list[str] = field(default_factory=list)  # main files, relative to the stage folder
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # What made each group of outputs, when a stage keeps outputs of earlier runs (export):
    # {name: {"files": [...], "fingerprint": ..., "settings": {...}, ...}}
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class StageResult:
    stage: str
    status: str  # "complete" or "cached"
    fingerprint: str
    outputs: list[str]
    metrics: dict[str, Any]
    seconds: float


def fingerprint(stage: str, settings: dict[str, Any], inputs: dict[str, Any]) -> str:
    """Hash of a stage's resolved settings, its inputs' fingerprints and the vid3d version."""
    blob = json.dumps(
        {"stage": stage, "settings": settings, "inputs": inputs, "version": __version__}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Content fingerprint of a file: its size and the first, middle and last MiB.

    Reading all of a multi-GB video on every command would make cached reruns slow; a sampled
    hash still changes whenever a file is re-encoded, trimmed or replaced.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            f.seek(offset)
            digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def content_hash(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a whole file (about 1.5 GB/s here): catches a damaged file of the right size."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Project:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def exists(self) -> bool:
        """A vid3d project: a folder with a manifest."""
        return (self.root / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.exists():
            return {"vid3d_version": __version__, "stages": {}}
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
            raise UserError(
                f'{path}: not a vid3d manifest (valid JSON with a "stages" object); restore it or '
                "delete it to rebuild every stage"
            )
        return manifest

    def record(self, stage: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(stage)

    def saved_settings(self) -> tuple[dict[str, Any], str]:
        """project.toml as a settings layer (empty for a new project)."""
        path = self.root / SETTINGS_FILE
        if not path.exists():
            return {}, str(path)
        try:
            return tomllib.loads(path.read_text()), str(path)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid TOML ({exc}); fix it or delete it to use defaults") from None

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def resume_dir(self, stage: str, fp: str) -> Path:
        """Where a long stage keeps checkpoints while it runs; it survives a killed process."""
        return self.root / RESUME_DIR / f"{stage}-{fp}"

    def checkpoints(self, stage: str) -> list[dict[str, Any]]:
        """The checkpoints waiting for a rerun of `stage`, newest first: each resume folder's run.json
        with its fingerprint and progress.json's step (when it has saved one)."""
        waiting = []
        for folder in (self.root / RESUME_DIR).glob(f"{stage}-*"):
            run = _read_json(folder / RUN_FILE)
            if run is not None:
                waiting.append(
                    {
                        "fingerprint": folder.name.removeprefix(f"{stage}-"),
                        **run,
                        **(_read_json(folder / PROGRESS_FILE) or {}),
                    }
                )
        return sorted(waiting, key=lambda run: run.get("started", ""), reverse=True)

    def is_complete(self, stage: str, fp: str | None = None) -> bool:
        """Recorded complete (with fingerprint `fp` if given) and its files intact on disk."""
        record = self.record(stage)
        if not record or record.get("status") != "complete":
            return False
        if fp is not None and record.get("fingerprint") != fp:
            return False
        marker = self.folder_record(stage)
        if marker.get("fingerprint") != record["fingerprint"]:
            return False
        return len(self.intact_files(stage)) == len(marker["files"])

    def folder_record(self, stage: str) -> dict[str, Any]:
        """The stage folder's own `.stage.json` (fingerprint, files, hashes, assets); {} when unreadable."""
        try:
            marker = json.loads((self.stage_dir(stage) / STAGE_FILE).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else {}

    def intact_files(self, stage: str, fp: str | None = None) -> set[str]:
        """Files of the stage folder as its last run wrote them (size, and content where hashed);
        none when that run's fingerprint is not `fp`."""
        marker = self.folder_record(stage)
        if not marker or (fp is not None and marker.get("fingerprint") != fp):
            return set()
        folder, hashes = self.stage_dir(stage), marker.get("hashes", {})
        return {
            rel
            for rel, size in marker["files"].items()
            if (folder / rel).is_file()
            and (folder / rel).stat().st_size == size
            and (rel not in hashes or content_hash(folder / rel) == hashes[rel])
        }

    def status(self) -> dict[str, dict[str, Any]]:
        """Every stage's record with its effective status: complete, stale, failed, incomplete or missing."""
        stages, saved = self.manifest()["stages"], self.saved_settings()[0]
        out = {}
        for stage in STAGES:
            record = dict(stages.get(stage) or {"status": "missing"})
            if record["status"] == "complete" and not self.is_complete(stage):
                record["status"] = "incomplete"
            waiting = self.checkpoints(stage)
            if waiting:
                record["checkpoint"] = {k: v for k, v in waiting[0].items() if k not in ("settings", "inputs")}
                record["checkpoint"]["remembered"] = waiting[0].get("settings") == saved.get(stage)
            out[stage] = record
        return out

    # -- writing (hold the lock) --------------------------------------------------------------
    def start_resumable(self, stage: str, fp: str, settings: dict[str, Any], inputs: dict[str, Any]) -> Path:
        """The resume folder of this run of `stage`, with run.json saying what started it (kept from
        the first run when a rerun continues it)."""
        folder = self.resume_dir(stage, fp)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / RUN_FILE).exists():
            run = {
                "command": shlex.join(["vid3d", *sys.argv[1:]]),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "settings": settings,
                "inputs": inputs,
            }
            atomic_write_text(folder / RUN_FILE, json.dumps(run, indent=1, default=str))
        return folder

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """One writer at a time: a second process fails at once with a clear message, or waits."""
        with self._locked_handle(wait) as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(f"vid3d pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}")
            handle.flush()
            self._remove_leftovers()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _locked_handle(self, wait: bool) -> Iterator[Any]:
        """The lock file, flocked. A waiter can win the lock of a project that its holder removed
        (a new project whose first run failed): it then holds a lock on a deleted file, so it
        starts again with the folder and lock file as they are now."""
        while True:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / LOCK_FILE
            handle = open(path, "a+")  # noqa: SIM115  # kept open past the loop: `with handle` below closes it
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"{self.root}: in use by {holder}; wait for it to finish or pass --wait") from None
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()
        with handle:
            yield handle

    def run_stage(
        self,
        stage: str,
        fp: str,
        settings: dict[str, Any],
        inputs: dict[str, Any],
        work: Callable[[Path], StageOutput],
        force: bool = False,
    ) -> StageResult:
        """Return at once when `fp` is complete on disk; else run `work` into a temporary folder,
        rename it into place, record it, and mark downstream stages stale."""
        if not force and self.is_complete(stage, fp):
            record = self.record(stage)
            return StageResult(stage, "cached", fp, record["outputs"], record["metrics"], 0.0)

        tmp = self.root / f".tmp-{stage}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        started = time.time()
        saved = self._settings_text()
        self._save_settings(stage, settings)  # remembered now: a rerun after a stop or a kill continues this run
        try:
            result = work(tmp)
        except UserError:  # bad input: leave the project as it was
            shutil.rmtree(tmp, ignore_errors=True)
            self._restore_settings(saved)
            raise
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            self.mark_failed(stage, fp, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        except BaseException:  # Ctrl-C, SIGTERM: nothing recorded, the rerun starts this stage again
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.time() - started
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        # the main outputs, which other stages and tools read, are checked by content too
        hashes = {name: content_hash(tmp / name) for name in result.outputs if (tmp / name).is_file()}
        marker = {"stage": stage, "fingerprint": fp, "files": files, "hashes": hashes}
        (tmp / STAGE_FILE).write_text(
            json.dumps({**marker, "assets": result.assets} if result.assets else marker, indent=1)
        )
        self._replace_dir(tmp, self.stage_dir(stage))
        for finished in (self.root / RESUME_DIR).glob(f"{stage}-*"):
            shutil.rmtree(finished, ignore_errors=True)

        previous = self.record(stage) or {}
        record = {
            "status": "complete",
            "fingerprint": fp,
            "inputs": inputs,
            "outputs": [f"{stage}/{name}" for name in result.outputs],
            "timings": {"total": round(seconds, 3), **{k: round(v, 3) for k, v in result.timings.items()}},
            "metrics": result.metrics,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if result.assets:
            record["assets"] = result.assets
        self._update_manifest(stage, record, stale_downstream=previous.get("fingerprint") != fp)
        return StageResult(stage, "complete", fp, [f"{stage}/{n}" for n in result.outputs], result.metrics, seconds)

    def mark_failed(self, stage: str, fp: str, error: str) -> None:
        # The folder still holds the last complete run's files: keep saying what they are.
        previous = {k: v for k, v in (self.record(stage) or {}).items() if k in ("outputs", "assets")}
        self._update_manifest(
            stage,
            {
                "status": "failed",
                "fingerprint": fp,
                "error": error,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **previous,
            },
        )

    def _update_manifest(self, stage: str, record: dict[str, Any], stale_downstream: bool = False) -> None:
        manifest = self.manifest()
        manifest["vid3d_version"] = __version__
        manifest["stages"][stage] = record
        if stale_downstream:
            for later in STAGES[STAGES.index(stage) + 1 :]:
                if manifest["stages"].get(later, {}).get("status") == "complete":
                    manifest["stages"][later]["status"] = "stale"
        manifest["stages"] = {s: manifest["stages"][s] for s in STAGES if s in manifest["stages"]}
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2))

    def _save_settings(self, stage: str, settings: dict[str, Any]) -> None:
        saved, _ = self.saved_settings()
        saved[stage] = settings
        ordered = {s: saved[s] for s in STAGES if s in saved}
        atomic_write_text(self.root / SETTINGS_FILE, tomli_w.dumps(ordered))

    def _settings_text(self) -> str | None:
        path = self.root / SETTINGS_FILE
        return path.read_text() if path.exists() else None

    def _restore_settings(self, text: str | None) -> None:
        if text is None:
            (self.root / SETTINGS_FILE).unlink(missing_ok=True)
        else:
            atomic_write_text(self.root / SETTINGS_FILE, text)

    def _replace_dir(self, new: Path, target: Path) -> None:
        old = self.root / f".old-{target.name}-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Temporary folders of a process that died mid-stage (safe: we hold the lock)."""
        for path in self.root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob(".old-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def record_progress(resume_dir: Path, step: int, steps: int) -> None:
    """progress.json beside a checkpoint just saved: its step of `steps`, for `vid3d status`."""
    saved = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_text(resume_dir / PROGRESS_FILE, json.dumps({"step": step, "steps": steps, "saved": saved}))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
