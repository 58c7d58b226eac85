"""Server log output: ``--log-format text`` (one human line) or ``json`` (one object a
line, for log shippers), on stderr.

Log calls stay %-style with their fields as ``extra`` (see :mod:`.accounting`); the
JSON formatter writes those fields as keys beside the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "configure", "LOG_FORMATS"]

LOG_FORMATS = ("text", "json")
# attributes every LogRecord has: anything else came in through extra=
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                    else str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc)


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send every log record at ``level`` and above to stderr in format ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in ("torch", "aiohttp.access"):  # their INFO chatter is not the server's
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
