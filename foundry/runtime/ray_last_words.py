"""Why Ray ended the server: its last words, for the supervisor to tell the operator.

Ray's core worker ends its process without running any Python when it loses its local raylet ("the
local Raylet is dead") or hits a fatal check: the server cannot log a line of its own, and the reason
is only in Ray's driver log, a file the operator would not think of. The supervisor
(`foundry.supervise`) hands the server a file to write the directory of that log in; when the server
ends without having been asked to, the supervisor reads the log's last fatal lines and says them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

#: Where the server writes Ray's log directory (set by the supervisor in the server's environment).
LOG_DIR_FILE_ENV = "FOUNDRY_SERVE_RAY_LOG_DIR_FILE"
#: How much of the end of the driver log is read.
TAIL_BYTES = 64 * 1024
#: A Ray C++ log line: ``[time level pid tid] file:line: message``.
_LINE = re.compile(r"^\[[^\]]*? (?P<level>[A-Z]) \d+ \d+\] (?P<message>.*)$")
#: Levels of a fatal line (a failed check)…
_FATAL_LEVELS = frozenset("CF")
#: …and how Ray words a deliberate exit, which it logs as a mere warning.
_EXITING = "Exiting because"


def record_log_dir(logs_dir: str | None) -> None:
    """In the server, once connected to Ray: tell the supervisor where Ray's driver log is (the
    supervisor itself never loads Ray: it would cost it a second and a hundred MB)."""
    path = os.environ.get(LOG_DIR_FILE_ENV)
    if not path:
        return  # not supervised (tests, `python -m foundry serve` under another supervisor)
    if logs_dir is None:
        log.warning("connected to Ray, but it names no log directory to tell the supervisor")
        return
    try:
        Path(path).write_text(logs_dir)
    except OSError as exc:
        log.warning("could not record Ray's log directory for the supervisor in %s: %s", path, exc)


def last_words(log_dir_file: Path, pid: int) -> str | None:
    """In the supervisor: the fatal lines Ray wrote in process ``pid``'s driver log, if any."""
    try:
        log_dir = Path(log_dir_file.read_text().strip())
    except OSError:
        return None  # the server ended before it connected to Ray
    if not log_dir.parts:
        return None
    messages: list[str] = []
    for driver_log in sorted(log_dir.glob(f"python-core-driver-*_{pid}.log")):
        try:
            with driver_log.open("rb") as f:
                f.seek(max(0, driver_log.stat().st_size - TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace")
        except OSError as exc:
            log.warning("could not read Ray's driver log %s: %s", driver_log, exc)
            continue
        for line in tail.splitlines():
            match = _LINE.match(line.strip())
            if match is not None and (match["level"] in _FATAL_LEVELS or _EXITING in match["message"]):
                messages.append(match["message"].strip())
    return "; ".join(dict.fromkeys(messages[-3:])) or None
