"""Terminal output: rich progress bars on a terminal, plain lines in logs and pipes.

Everything meant for people goes to stderr, so that stdout carries only the `--json` object.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# User text (paths, settings, error messages) is printed literally: no markup, no emoji codes.
console = Console(stderr=True, highlight=False, markup=False, emoji=False)
log = logging.getLogger("vid3d")
verbose = False  # set by the CLI's -v: libraries' own logs are shown too


LINE_EVERY = 5.0  # seconds: at most one progress line this often in logs while work advances
HEARTBEAT = 30.0  # seconds: at least one line this often, with the rate and the time left


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`: a rich bar on a terminal; in logs and pipes, a line at each
    tenth of the work at most every LINE_EVERY seconds, and a heartbeat at least every HEARTBEAT
    seconds even when nothing advances (farm logs neither burst nor go silent).

    `fields` (e.g. loss=0.1) are shown after the bar and in the plain lines.
    """
    if console.is_terminal:
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: object) -> None:
                bar.update(task, advance=n, info=_format(fields))

            yield advance
        return

    state = {"done": 0, "fields": {}, "start": time.time(), "printed": time.time()}
    lock, stop = threading.Lock(), threading.Event()
    log.info("%s ...", description)

    def line() -> None:
        now = time.time()
        elapsed, done = now - state["start"], state["done"]
        count = f"{done}/{total}" if total else str(done)
        rate = f", {done / elapsed:.3g}/s" if done and elapsed > 0 else ""
        left = f", {(total - done) * elapsed / done:.0f}s left" if total and done and done < total else ""
        fields = _format(state["fields"])
        log.info("%s %s %s(%.1fs%s%s)", description, count, fields + " " if fields else "", elapsed, rate, left)
        state["printed"] = now

    def advance(n: int = 1, **fields: object) -> None:
        with lock:
            state["done"] += n
            state["fields"] = fields or state["fields"]
            step = max(1, (total or 10) // 10)
            crossed = state["done"] // step != (state["done"] - n) // step
            since = time.time() - state["printed"]
            if state["done"] == total or (crossed and since >= LINE_EVERY) or since >= HEARTBEAT:
                line()

    def heartbeat() -> None:
        while not stop.wait(min(HEARTBEAT, LINE_EVERY)):
            with lock:
                if time.time() - state["printed"] >= HEARTBEAT:
                    line()

    beater = threading.Thread(target=heartbeat, name="vid3d-progress", daemon=True)
    beater.start()
    try:
        yield advance
    finally:
        stop.set()
        beater.join()


def _format(fields: dict[str, object]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def keep_signal_handlers() -> None:
    """Put back Python's handlers for SIGTERM and SIGINT at the C level.

    Importing pycolmap installs glog's failure-signal handler, which answers SIGTERM (how render
    farms stop jobs) with a stack trace and death, before vid3d's handler can checkpoint and exit
    with one line. Python still lists its own handler, so setting it again restores it.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler is not None:
            signal.signal(signum, handler)
