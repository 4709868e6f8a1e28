"""A closed-loop HTTP load generator: fixed concurrency, bounded in count and time.

    echo '{"base_url": "http://127.0.0.1:8080", "requests": [...], ...}' | python -m bench.loader
    python -m bench.loader --serve      (one spec per line on stdin, one result per line)

The same loader measures the floor, the push ceiling and cloudjobs, so their ratios compare
like with like. It runs in its own process (the benchmark process hosts the emulator, and
sharing its GIL would slow both). Each of `concurrency` workers keeps one keep-alive
connection busy: send a request, read the whole answer, take the next. Requests are taken
in order from the spec's list (cycled when `cycle` is set) until `max_requests` are sent or
`duration_s` has passed. With `rate` (requests per second) the load is paced instead: request
i is sent at i / rate seconds from the start (by whichever worker is free), so a slow answer
does not slow the arrivals (the low-load latency figures). Loopback only: any other host is refused.

Prints one JSON object: completed, errors, statuses, elapsed_s, rate, p50_ms, p99_ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Hard bounds whatever the spec says: the benchmark must never become a load test.
MAX_CONCURRENCY = 256
MAX_DURATION_S = 300.0
MAX_REQUESTS = 1_000_000


@dataclass
class Spec:
    """What to send, how many at once, and when to stop."""

    base_url: str
    requests: list[dict[str, Any]]
    concurrency: int = 32
    duration_s: float = 5.0
    max_requests: int = 100_000
    cycle: bool = False
    ok: tuple[int, ...] = (200, 201, 202)
    timeout_s: float = 30.0
    rate: float = 0.0  # requests per second, paced; 0: as fast as the workers go

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Spec:
        """A spec from its JSON form, clamped to the hard bounds."""
        spec = cls(
            base_url=raw["base_url"].rstrip("/"),
            requests=raw["requests"],
            concurrency=int(raw.get("concurrency", 32)),
            duration_s=float(raw.get("duration_s", 5.0)),
            max_requests=int(raw.get("max_requests", 100_000)),
            cycle=bool(raw.get("cycle", False)),
            ok=tuple(raw.get("ok", (200, 201, 202))),
            timeout_s=float(raw.get("timeout_s", 30.0)),
            rate=max(0.0, float(raw.get("rate", 0.0))),
        )
        host = urlsplit(spec.base_url).hostname or ""
        if host not in LOOPBACK:
            raise ValueError(f"the loader only targets loopback, not {host!r}")
        if not spec.requests:
            raise ValueError("no requests to send")
        spec.concurrency = max(1, min(spec.concurrency, MAX_CONCURRENCY))
        spec.duration_s = max(0.1, min(spec.duration_s, MAX_DURATION_S))
        limit = spec.max_requests if spec.cycle else min(spec.max_requests, len(spec.requests))
        spec.max_requests = max(1, min(limit, MAX_REQUESTS))
        return spec


@dataclass
class Tally:
    """What came back."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    failures: list[str] = field(default_factory=list)

    def note(self, status: str, ok: bool, latency: float, detail: str = "") -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if ok:
            self.latencies.append(latency)
        else:
            self.errors += 1
            if len(self.failures) < 5 and detail:
                self.failures.append(detail[:300])


async def run(spec: Spec) -> dict[str, Any]:
    """Send the requests; the tally as a JSON-ready dict."""
    prepared = [
        (
            r.get("method", "GET"),
            spec.base_url + r["path"],
            r.get("headers") or {},
            r["body"].encode() if isinstance(r.get("body"), str) else None,
        )
        for r in spec.requests
    ]
    tally = Tally()
    next_index = 0
    started = time.perf_counter()
    stop_at = started + spec.duration_s
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    connector = aiohttp.TCPConnector(limit=spec.concurrency, force_close=False)

    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < spec.max_requests and time.perf_counter() < stop_at:
                i = next_index
                next_index += 1
                if spec.rate:
                    await asyncio.sleep(max(0.0, started + i / spec.rate - time.perf_counter()))
                method, url, headers, body = prepared[i % len(prepared)]
                t0 = time.perf_counter()
                try:
                    async with session.request(method, url, headers=headers, data=body) as resp:
                        text = await resp.read()
                        ok = resp.status in spec.ok
                        tally.note(
                            str(resp.status),
                            ok,
                            time.perf_counter() - t0,
                            "" if ok else f"{resp.status} {text[:200]!r}",
                        )
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    tally.note(type(e).__name__, False, 0.0, f"{type(e).__name__}: {e}")

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    elapsed = time.perf_counter() - started
    lat = sorted(tally.latencies)
    completed = len(lat)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    return {
        "completed": completed,
        "errors": tally.errors,
        "statuses": tally.statuses,
        "failures": tally.failures,
        "elapsed_s": round(elapsed, 4),
        "rate": completed / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }


def main() -> int:
    """Read the spec from stdin, print the tally; with --serve, one spec per line until EOF."""
    if sys.argv[1:] == ["--serve"]:
        # One process for a whole benchmark run: no interpreter start-up per figure.
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                result = asyncio.run(run(Spec.from_json(json.loads(line))))
            except (ValueError, KeyError) as e:
                result = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(result), flush=True)
        return 0
    spec = Spec.from_json(json.load(sys.stdin))
    print(json.dumps(asyncio.run(run(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
