"""Link rates as people write them: ``10MB/s``, ``150kB/s``, ``80Mbit/s``, ``1KiB/s``, ``2e6``.

One parser for the CLI (``lopinfer plan --bandwidth``), the bench's scenarios and
``scripts/edgelab``. Bytes unless the unit says bits (``bit``, ``bps``, or a lower-case
``b``); decimal prefixes (k, M, G, T: 1000) unless binary (KiB: 1024). Stdlib only.
"""

from __future__ import annotations

import re

from .errors import InputError

__all__ = ["parse_rate"]

_RATE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:([kKMGT])(i?))?"
                   r"(B|b|bit|bps|Bps)?(?:/s)?\s*")


def parse_rate(text: str | float) -> float:
    """Bytes per second from a rate (a number is taken as bytes/s).

    Raises:
        InputError: not a positive rate (one line naming it and the accepted forms).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RATE.fullmatch(str(text))
        if not m:
            raise InputError(f"bad rate {text!r}: expected e.g. 10MB/s, 150kB/s, 80Mbit/s, 2e6")
        value = float(m.group(1))
        prefix, binary, unit = (m.group(2) or "").upper(), m.group(3), m.group(4)
        value *= (1024 if binary else 1000) ** " KMGT".index(prefix or " ")
        if unit in ("b", "bit", "bps"):
            value /= 8
    if not value > 0 or value == float("inf"):
        raise InputError(f"bad rate {text!r}: must be a positive, finite number of bytes/s")
    return value

