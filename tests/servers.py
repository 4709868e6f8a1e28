"""Local HTTP servers for the tests' handlers and receivers."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class BurstHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server whose listen backlog holds a burst of connections.

    The standard library's backlog is 5: the connections beyond it are dropped by the kernel,
    and each dropped SYN costs a 1 s, then 3 s, 7 s … retransmission, so a few dozen
    concurrent deliveries (the emulator dispatches up to a queue's concurrency at once) take
    seconds to arrive and time-bound tests fail now and then."""

    request_queue_size = 1024
    daemon_threads = True
