"""A local Cloud Tasks v2 emulator: a real gRPC server the google-cloud-tasks client talks to.

    from emulator import Emulator
    with Emulator() as emu:
        channel = grpc.insecure_channel(emu.address)

It dispatches HTTP and App Engine tasks with Cloud Tasks' headers, honours rate limits,
retry config, dispatch deadlines, schedule times and task-name de-duplication, and signs
OIDC tokens that ``google.oauth2.id_token.verify_token(..., certs_url=emu.certs_url)``
accepts. On the same port it serves Cloud Scheduler v1 (emulator/scheduler.py): jobs fired on
their cron in their time zone. For development and tests only: the app never imports it.
"""

from __future__ import annotations

from emulator.cli import main
from emulator.clock import ManualClock, RealClock
from emulator.runtime import Emulator

__all__ = ["Emulator", "ManualClock", "RealClock", "main"]
