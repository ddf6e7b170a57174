"""Terminal output: rich progress bars on a terminal, plain lines in logs and pipes.

Everything meant for people goes to stderr, so that stdout carries only the `--json` object.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# User text (paths, settings, error messages) is printed literally: no markup, no emoji codes.
console = Console(stderr=True, highlight=False, markup=False, emoji=False)
log = logging.getLogger("vid3d")
verbose = False  # set by the CLI's -v: libraries' own logs are shown too


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`: a rich bar on a terminal, else a line every ~10%.

    `fields` (e.g. loss=0.1) are shown after the bar and in the plain lines.
    """
    if console.is_terminal:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: object) -> None:
                bar.update(task, advance=n, info=_format(fields))

            yield advance
        return

    done, last_print, start = 0, -1.0, time.time()
    log.info("%s ...", description)

    def advance(n: int = 1, **fields: object) -> None:
        nonlocal done, last_print
        done += n
        step = max(1, (total or 10) // 10)
        if done == total or done // step != (done - n) // step:
            count = f"{done}/{total}" if total else str(done)
            log.info("%s %s %s(%.1fs)", description, count, _format(fields) + " " if fields else "", time.time() - start)

    yield advance


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
