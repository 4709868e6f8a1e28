"""What `cloudjobs dev` shows: its own lines, warnings, one line per request; the rest to its log.

Every record goes to the log file in the data folder (pgserver's initdb transcript, alembic's
migrations, the emulator's dispatches, job logs). The terminal gets warnings and errors (one
line each; a traceback stays in the file) and the app's one line per request.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


class Console(logging.Handler):
    """The terminal's share of the logs; it can hold them (until dev's banner) or go quiet."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream or sys.stderr
        self._held: list[logging.LogRecord] | None = None
        self.quiet = False  # while stopping: the parts' farewells are the log file's

    def hold(self) -> None:
        """Keep records back until show_held(), so nothing comes before the banner."""
        self._held = []

    def show_held(self) -> None:
        """Print what was held and stop holding."""
        held, self._held = self._held or [], None
        for record in held:
            self.emit(record)

    def wanted(self, record: logging.LogRecord) -> bool:
        """Warnings, errors and the per-request lines; INFO chatter is the file's."""
        return record.levelno >= logging.WARNING or hasattr(record, "httpRequest")

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line (no traceback: the log file has it)."""
        if self.quiet or not self.wanted(record):
            return
        if self._held is not None:
            self._held.append(record)
            return
        when = logging.Formatter().formatTime(record, "%H:%M:%S")
        if record.levelno >= logging.WARNING and not hasattr(record, "httpRequest"):
            line = f"{record.levelname.lower()}: {record.getMessage()}"
        else:
            latency = getattr(record, "httpRequest", {}).get("latency", "")
            line = f"{when} {record.getMessage()}" + (f" {float(latency[:-1]) * 1000:.0f}ms" if latency else "")
        try:
            self.stream.write(line.splitlines()[0] + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away; the file still has it
            pass


def configure(log_file: Path, level: str = "INFO") -> Console:
    """Send every record to `log_file` and the wanted ones to the terminal; the console handler."""
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    console = Console()
    root = logging.getLogger()
    root.handlers[:] = [file_handler, console]
    root.setLevel(level)
    return console
