"""Every logger of the library, from one place: ``logger("client")`` is
``lopinfer.client``, so an application tunes or silences the library under one name
(``logging.getLogger("lopinfer").setLevel(...)``). The library never prints; the command
line owns stdout."""

from __future__ import annotations

import logging

__all__ = ["ROOT", "logger"]

ROOT = "lopinfer"
logging.getLogger(ROOT).addHandler(logging.NullHandler())  # silent unless the app configures


def logger(name: str) -> logging.Logger:
    """The logger ``lopinfer.<name>`` (``name`` dotted, e.g. ``"graph.capture"``)."""
    return logging.getLogger(f"{ROOT}.{name}" if name else ROOT)
