"""Which process holds a job's lease, and whether that process is known to be dead.

A claim records the claiming process as `host/boot id/pid/start ticks`. Another delivery of
the job that lands on the same machine (the same host name and boot) can then tell a holder
that is still running its attempt from one that was killed (SIGKILL, out of memory): its pid is
gone, or belongs to a process that started later. A holder on another machine is never judged
dead here — its lease runs its course, as before. Linux only (/proc); elsewhere nobody is
judged dead.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path

_PROC = Path("/proc")


def _start_ticks(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()[19]


@cache
def _machine() -> str:
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return f"{socket.gethostname()}/{boot}"


_self: tuple[int, str] | None = None


def this_process() -> str:
    """This process's holder name (per pid: a gunicorn worker is a fork of its master)."""
    global _self
    pid = os.getpid()
    if _self is None or _self[0] != pid:
        _self = (pid, f"{_machine()}/{pid}/{_start_ticks(pid) or 'unknown'}")
    return _self[1]


def is_dead(holder: str | None) -> bool:
    """True only when `holder` ran on this machine and its process no longer exists."""
    if not holder or holder.count("/") != 3:
        return False
    host, boot, pid, ticks = holder.split("/")
    if f"{host}/{boot}" != _machine() or boot == "unknown" or ticks == "unknown" or not pid.isdigit():
        return False
    return _start_ticks(int(pid)) != ticks
