"""Progress of long steps (profiling, planning): a tqdm bar when tqdm is installed,
else a log line per step under ``lopinfer.progress``; never a print."""

from __future__ import annotations

from collections.abc import Callable

from .log import logger

__all__ = ["progress"]

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
