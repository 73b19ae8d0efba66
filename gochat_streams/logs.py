"""Log level and format for every process: ``GOCHAT_LOG_LEVEL`` and ``GOCHAT_LOG_FORMAT``.

``text`` is one line per record (time, process, level, logger, message; a Faust worker
keeps Faust's own formatter, which draws partition sets as tables); ``json`` writes one
JSON object per line (time, level, logger, process, message, and the exception if any),
for a log pipeline.
A trace line (trace.py) is JSON already; in ``json`` format it is nested as ``trace``,
and an audit event (audit.py) as ``audit``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from . import trace
from .settings import Settings

TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
        }
        message = record.getMessage()
        if record.name == "gochat.trace":
            line["trace"] = json.loads(message)
        elif record.name == "gochat.audit":
            line["audit"] = json.loads(message)
        else:
            line["message"] = message
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(settings: Settings, *, own_handler: bool = False) -> None:
    """Apply the settings to the root logger and its handlers.

    ``own_handler``: replace the handlers with one to stderr first (the gateway and the
    monitor, which Faust's CLI starts as commands).
    """
    if own_handler:
        logging.basicConfig(format=TEXT_FORMAT, force=True)
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    trace.configure(settings.trace_sample_rate)
    if settings.log_format == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
