"""Headless Chromium (Debian's package) driven over the DevTools protocol: load a page, collect its
console errors and exceptions, evaluate JavaScript, take a screenshot. Nothing but `websockets`
(a dependency of viser); no browser download."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import imageio.v3 as iio
import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_or_skip() -> str:
    """The browser's path; skipped when missing, except in CI (.ci/run installs it), where it fails."""
    path = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH in CI: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return path


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, width: int = 1280, height: int = 800):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="vid3d-chromium-")
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--no-first-run",
                "--disable-gpu-sandbox",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",  # WebGL on the CPU
                f"--window-size={width},{height}",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        port = self._devtools_port()
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(p for p in pages if p["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _devtools_port(self, timeout: float = 30) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.process.stderr.readline()
            if match := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                return int(match.group(1))
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError("chromium did not start its DevTools server")

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        """Send one command and return its result, collecting the events that arrive meanwhile."""
        request_id = next(self.ids)
        self.socket.send(json.dumps({"id": request_id, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.time())))
            if message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._note(message)

    def _note(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")

    def open(self, url: str, settle: float = 1.0) -> None:
        """Load `url`, wait for its load event, then `settle` seconds more for scripts to draw."""
        self.call("Page.navigate", url=url)
        self.wait(lambda: self.evaluate("document.readyState") == "complete", timeout=60)
        self.pause(settle)

    def pause(self, seconds: float) -> None:
        """Wait, still collecting the page's events."""
        deadline = time.time() + seconds
        while (left := deadline - time.time()) > 0:
            try:
                self._note(json.loads(self.socket.recv(timeout=left)))
            except TimeoutError:
                break

    def wait(self, condition, timeout: float, every: float = 0.5) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return True
            self.pause(every)
        return False

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def screenshot(self, full_page: bool = False) -> np.ndarray:
        """uint8 [H, W, 3] of the viewport (or the whole page)."""
        result = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        return iio.imread(base64.b64decode(result["data"]))[..., :3]

    def __enter__(self) -> Browser:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
