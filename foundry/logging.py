"""Logging: stdlib, one format for every process (the API process and every host process).

Every line carries a UTC timestamp, the level, the process (``api``, a host process's name, ``cli``)
and its pid, the logger, the message and the request id when there is one (`foundry.request_id`).
``text`` is for people; ``json`` (one object per line) is for log shippers. Host processes write to
their stderr, which Ray forwards to the ``foundry serve`` output (without Ray's own prefix: the line
names its process already), so the operator reads every process in one place.

Secrets never reach the output: every configured secret value is replaced in the formatted line,
exception text included (a driver error that quotes a key is still redacted). Secrets that only exist
at runtime (an organization's agent credentials) are added with `redact_value`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable

from foundry import request_id

REDACTED = "[redacted]"
#: Shorter values are not secrets worth scanning for (and would redact common words).
_MIN_SECRET_LEN = 8
#: A terminal control sequence, as raw text or as JSON writes it (``\\u001b[36m``).
_TERMINAL_CODES = re.compile(r"(?:\x1b|\\u001b)\[[0-9;]*[A-Za-z]")

# Secrets learned at runtime, shared by every Foundry formatter of this process (those made later
# too). Replaced as a whole under the lock, so a formatter reads one consistent tuple without it.
_runtime_lock = threading.Lock()
_runtime_secrets: tuple[str, ...] = ()


def redact_value(value: str) -> None:
    """Redact ``value`` from every line any Foundry log handler of this process formats from now on.

    For secrets that are not in the settings (an organization's agent credentials). Values shorter
    than 8 characters are ignored: redacting them would mangle ordinary words. Idempotent.
    """
    global _runtime_secrets
    # The JSON format escapes quotes, backslashes and control characters: redact that spelling too.
    forms = {value, json.dumps(value, ensure_ascii=False)[1:-1]}
    if len(value) < _MIN_SECRET_LEN or forms.issubset(_runtime_secrets):
        return
    with _runtime_lock:
        # Longest first, so a secret that contains another is replaced whole.
        _runtime_secrets = tuple(sorted({*_runtime_secrets, *forms}, key=len, reverse=True))


class _Context(logging.Filter):
    """Adds the process label and the current request id to every record."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.foundry_process = self.process
        record.request_id = request_id.current.get()
        return True


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)

    def redact(self, line: str) -> str:
        # Terminal colour codes (Ray puts them in the text of its errors) are noise in a log file.
        line = _TERMINAL_CODES.sub("", line)
        runtime = _runtime_secrets
        # Longest first across both lists, so a secret that contains another is replaced whole.
        secrets = sorted((*runtime, *self.secrets), key=len, reverse=True) if runtime else self.secrets
        for secret in secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line

    @staticmethod
    def timestamp(record: logging.LogRecord) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(_Redacting):
    """``2026-12-01T21:25:00.168Z INFO main[7319] foundry.runtime.host message rid=…``"""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.timestamp(record)} {record.levelname} {getattr(record, 'foundry_process', '?')}"
            f"[{record.process}] {record.name} {record.getMessage()}"
        )
        rid = getattr(record, "request_id", None)
        if rid:
            line += f" rid={rid}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return self.redact(line)


class JsonFormatter(_Redacting):
    """One JSON object per line: ``ts``, ``level``, ``process``, ``pid``, ``logger``, ``msg``,
    ``request_id`` (when set), ``exc`` (with a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.timestamp(record),
            "level": record.levelname,
            "process": getattr(record, "foundry_process", "?"),
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(entry, ensure_ascii=False))


def configure_logging(
    level: str = "INFO", fmt: str = "text", *, process: str = "cli", secrets: Iterable[str] = ()
) -> None:
    """Set up the root logger of this process (again with new settings when called twice)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_foundry", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler._foundry = True  # type: ignore[attr-defined]
    handler.addFilter(_Context(process))
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    root.addHandler(handler)
    root.setLevel(level.upper())
    adopt_library_loggers()
    # Deprecation and other warnings of libraries: records like any other, in the same format.
    logging.captureWarnings(True)
    forward_host_lines_verbatim()


#: Libraries that bring their own handlers and format (Ray sets its own up when it is imported).
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "ray")


def adopt_library_loggers() -> None:
    """Route the libraries' loggers through this process's handler: one format for every line
    (JSON when asked), with the process name and redaction. Called again after ``import ray``."""
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    server = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RefusalTraceback) for f in server.filters):
        server.addFilter(_RefusalTraceback())


class _RefusalTraceback(logging.Filter):
    """Drops the traceback uvicorn logs for a start-up that Foundry refused with a one-line reason
    (`foundry.http.app.StartupRefused`): the reason is already in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() if record.args else str(record.msg)
        return "StartupRefused" not in text


def forward_host_lines_verbatim() -> None:
    """Ray prefixes each forwarded host line with ``(HostProcess pid=…)``, which breaks JSON lines
    and repeats what the line says already, and folds lines that several processes print alike into
    one "[repeated Nx]" line, which hides events from the operator. Both settings are read when Ray
    is imported: set the environment for later imports and the module for an earlier one. Colour
    codes around forwarded lines are turned off too (they end up in log files and collectors)."""
    for name in ("RAY_DISABLE_WORKER_LOG_PREFIX", "RAY_DEDUP_LOGS"):
        os.environ.setdefault(name, "1" if name == "RAY_DISABLE_WORKER_LOG_PREFIX" else "0")
    # Read at every line: Ray's own forwarded lines (the raylet's) carry no terminal colour codes.
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    for module_name in ("ray._private.ray_constants", "ray._private.ray_logging"):
        module = sys.modules.get(module_name)
        if module is not None:
            module.RAY_DISABLE_WORKER_LOG_PREFIX = True  # type: ignore[attr-defined]
            module.RAY_DEDUP_LOGS = False  # type: ignore[attr-defined]
