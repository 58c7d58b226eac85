"""Progress of long steps (profiling, planning): a tqdm bar when tqdm is installed,
else a log line per step under ``lopinfer.progress``; never a print."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .log import logger

__all__ = ["progress", "Steps", "on_terminal", "announce"]

log = logger("progress")


def progress(enabled: bool, total: int, label: str) -> Callable[[], None]:
    """A callback to call once per step of ``total`` (a no-op unless ``enabled``)."""
    if not enabled:
        return lambda: None
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label, leave=False)
        return lambda: bar.update(1)
    except ImportError:
        done = [0]

        def step() -> None:
            done[0] += 1
            log.info("%s: %d/%d", label, done[0], total)

        return step


def on_terminal() -> bool:
    """Whether progress is shown by default: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Steps:
    """The named steps of one long operation (a deploy): a tqdm bar on a terminal that
    appears only once the operation has taken ``delay`` seconds (a quick one shows
    nothing), else a log line per step under ``lopinfer.progress``."""

    def __init__(self, label: str, total: int, *, enabled: bool | None = None,
                 delay: float = 2.0) -> None:
        self.label = label
        self.bar: Any = None
        if enabled is None:
            enabled = on_terminal()
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, delay=delay, leave=False,
                                file=sys.stderr, bar_format="{desc}: {postfix} [{elapsed}]")
            except ImportError:
                self.bar = None

    def step(self, name: str) -> None:
        """Now doing ``name``."""
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)
            self.bar.update(1)
        else:
            log.info("%s: %s", self.label, name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def announce(message: str) -> None:
    """Say what a long step is doing: on a terminal through tqdm (which keeps bars
    intact), and always as an INFO log record under ``lopinfer.progress``."""
    log.info("%s", message)
    if on_terminal():
        try:
            from tqdm import tqdm
        except ImportError:
            return
        tqdm.write(f"lopinfer: {message}", file=sys.stderr)
