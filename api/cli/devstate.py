"""dev.json: where a running `cloudjobs dev` keeps its database, emulator and app.

`cloudjobs dev` writes it in its data folder at start and removes it at a clean stop. The
database commands (migrate, report, keys, sweep, …) read it when DATABASE_URL is unset, so
they work next to dev without a variable set; without it they exit with one line saying
what to set.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from api.config import Config

STATE_FILE = "dev.json"


class CommandFailed(Exception):
    """A command cannot do what was asked; the message is the one line the user sees."""


@dataclass(frozen=True)
class DevState:
    """What dev.json holds: where dev's parts are, and the settings its app runs with."""

    pid: int
    app_url: str
    database_url: str
    emulator: str
    certs_url: str
    log_file: str
    # As environment variables (DATABASE_URL, HANDLER_AUTH, …): the app's child process gets
    # exactly these, and a command next to dev builds its Config with them on top.
    settings: dict[str, str] = field(default_factory=dict)

    def write(self, data_dir: Path) -> Path:
        """Write the file (readable by its owner only: it holds the database URL)."""
        path = data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    @property
    def running(self) -> bool:
        """Whether the dev process that wrote it is still alive."""
        return pid_alive(self.pid)


def read(data_dir: Path) -> DevState | None:
    """The state dev wrote in `data_dir`, or None when there is none (or it is unreadable)."""
    try:
        raw: Any = json.loads((data_dir / STATE_FILE).read_text())
        return DevState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def remove(data_dir: Path, pid: int) -> None:
    """Remove the file if this process wrote it (another dev may have taken the folder since)."""
    state = read(data_dir)
    if state is not None and state.pid == pid:
        (data_dir / STATE_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


def data_dir(arg: str | None, config: Config) -> Path:
    """The folder dev uses: --data-dir, else CLOUDJOBS_DATA_DIR, else .cloudjobs here."""
    return Path(arg) if arg else config.data_dir


def command_config(data_dir_arg: str | None = None, *, require_database: bool = True) -> Config:
    """The configuration of a server command: the environment's, or dev's next to it.

    With DATABASE_URL (or INSTANCE_CONNECTION_NAME) set, the environment decides. Otherwise
    a running dev's dev.json supplies the database, the emulator and the handler settings, so
    what a command enqueues is what dev's app accepts. Neither: CommandFailed, saying what to
    set (or, when the command can do without a database, the environment's).
    """
    config = Config.from_env()
    if config.database_url or config.instance_connection_name:
        return config
    folder = data_dir(data_dir_arg, config)
    state = read(folder)
    if not require_database and (state is None or not state.running):
        return config
    if state is None:
        raise CommandFailed(
            f"no database: set DATABASE_URL (or INSTANCE_CONNECTION_NAME for Cloud SQL), or run "
            f"`cloudjobs dev` in this folder (no {folder / STATE_FILE}; --data-dir or "
            "CLOUDJOBS_DATA_DIR names another folder)"
        )
    if not state.running:
        raise CommandFailed(
            f"{folder / STATE_FILE} is from a `cloudjobs dev` that is no longer running "
            f"(pid {state.pid}): start `cloudjobs dev` again, or set DATABASE_URL"
        )
    return Config.from_env(over=state.settings)
