"""Structured logs and counters.

Every request logs one line with the upload id, node id and client address. Per upload,
the state store counts how often consecutive appends came from another client address or
reached another node: the failure this project exists for, made visible.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from typing import Any

_STANDARD = frozenset(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()} {extras}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("tether")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class Metrics:
    """Process-local counters, exposed in Prometheus text format on ``/metrics``."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.counters: Counter[str] = Counter()

    def request(self, method: str, status: int) -> None:
        self.requests[(method, status)] += 1

    def add(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def render(self) -> bytes:
        lines = [
            "# HELP tether_requests_total Requests by method and status.",
            "# TYPE tether_requests_total counter",
        ]
        for (method, status), count in sorted(self.requests.items()):
            lines.append(f'tether_requests_total{{method="{method}",status="{status}"}} {count}')
        for name, value in sorted(self.counters.items()):
            lines.append(f"# TYPE tether_{name} counter")
            lines.append(f"tether_{name} {value}")
        return ("\n".join(lines) + "\n").encode()
