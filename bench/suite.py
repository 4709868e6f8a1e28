"""How fast cloudjobs is, as ratios to a floor measured in the same run.

    python -m bench [--quick | --smoke] [--runs N] [--no-peers] [--docs PATH | --no-docs]
    python -m bench --drivers [--quick] [--runs N]    (bench/drivers.py: the drivers side by side)

One run brings up, on loopback: a fresh database for cloudjobs and one for the floor (both
migrated by the same migrations), the Cloud Tasks emulator, gunicorn serving cloudjobs and
gunicorn serving the floor app (`bench/floor_app.py`), both with `gunicorn.conf.py` and
`api.store.engine.create_engine`. It then measures, in rounds, every figure once per round, floor and
cloudjobs interleaved so that drift on a shared machine hits both alike:

- the floor: bare Flask; + one INSERT … RETURNING; + one SELECT by primary key; + one UPDATE;
- the push ceiling: the HTTP loader as a dispatcher, POSTing each job to a bare Flask handler
  doing claim + finish + attempt row (three statements);
- cloudjobs: POST /v1/jobs (with the enqueue; the queue paused so nothing dispatches),
  GET /v1/jobs/{id}, POST /handlers/run (no-op jobs, OIDC tokens minted by the emulator
  up front), POST /v1/jobs:batchCreate of 500, and end to end through the emulator, one by
  one and in batches;
- the peers (`bench/peers/`): Procrastinate, pgqueuer and Celery, workers as subprocesses.

Every HTTP figure comes from the same closed-loop aiohttp loader (`bench/loader.py`) at a
fixed concurrency. Afterwards a one-off instrumented run puts a counting proxy
(`bench/pgwire.py`) between the servers and PostgreSQL to count round trips and statements
per job. The RSS of each gunicorn worker is sampled throughout. The table is printed and
written into the "Throughput" section of docs/benchmarks.md (between markers; the rest of
the file is left alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import requests
import sqlalchemy as sa

from bench.stack import (
    DEFAULT_SERVER,
    ROOT,
    SERVICE_ACCOUNT,
    Stack,
    free_port,
    fresh_database,
    running_stack,
    start_gunicorn,
    stop,
    wait_healthy,
)

HERE = Path(__file__).resolve().parent
QUEUES_FILE = HERE / "bench.queues.yaml"
DOCS = ROOT / "docs" / "benchmarks.md"

# Every HTTP figure: this many requests in flight, from one loader process.
LOAD_CONCURRENCY = 32
# Jobs submitted one by one: this many clients at once (peers: see bench/peers).
SUBMIT_CONCURRENCY = 16
BATCH = 500
WORKERS = 2  # gunicorn workers, one per core, as gunicorn.conf.py would choose here
PACED_RATE = 100.0  # jobs/s of the low-load latency figures
ECHO = json.dumps({"type": "echo", "payload": {}})


@dataclass(frozen=True)
class Sizes:
    """How much each mode measures."""

    runs: int
    http_s: float  # seconds per HTTP figure and round
    e2e_jobs: int  # jobs per end-to-end run (cloudjobs, ceiling and peers alike)
    batch_calls: int  # batchCreate calls per round
    peers: bool
    rt_jobs: int  # requests (or jobs) per figure in the instrumented run
    warmup: int  # requests per figure before the first round
    workers: int = WORKERS  # gunicorn workers of each server
    fan_out: int = 0  # steps of the fan-out/fan-in workflow (0: as many as e2e_jobs)
    paced_jobs: int = 1000  # jobs of each low-load latency run (at PACED_RATE a second)


MODES = {
    # Proves the suite runs, in about half a minute: no warm-up, peers or round-trip count.
    "smoke": Sizes(
        runs=1,
        http_s=0.3,
        e2e_jobs=60,
        batch_calls=1,
        peers=False,
        rt_jobs=10,
        warmup=0,
        workers=1,
        paced_jobs=50,
    ),
    "quick": Sizes(
        runs=3, http_s=2.0, e2e_jobs=1500, batch_calls=6, peers=True, rt_jobs=50, warmup=200,
        paced_jobs=500,
    ),
    "full": Sizes(
        runs=3, http_s=5.0, e2e_jobs=5000, batch_calls=20, peers=True, rt_jobs=200, warmup=500,
        fan_out=9_999,  # and the join: MAX_STEPS (api/orchestration/workflows.py)
    ),
}


@dataclass
class Figure:
    """One row of the table."""

    key: str
    label: str
    unit: str
    ref: str | None = None  # the figure this one's ratio is against
    samples: list[float] = field(default_factory=list)
    rss_mb: float | None = None  # peak RSS of one gunicorn worker while measuring
    trips: float | None = None  # PostgreSQL round trips per request (or job)
    statements: float | None = None  # statements doing work per request (or job)
    kinds: dict[str, float] = field(default_factory=dict)  # round trips per job, by kind
    cpu: list[tuple[float, float, float]] = field(default_factory=list)  # ms/job: app, PG, bench
    latency: list[tuple[float, float]] = field(default_factory=list)  # ms from created to done: p50, p99
    ops: list[float] = field(default_factory=list)  # Cloud Tasks operations per job
    per_task: list[float] = field(default_factory=list)  # jobs per Cloud Task
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def figures() -> dict[str, Figure]:
    """The table's rows, in order."""
    rows = [
        Figure("floor.hello", "floor: bare Flask, GET /hello", "req/s"),
        Figure("floor.insert", "floor: Flask + one INSERT … RETURNING", "req/s"),
        Figure("floor.select", "floor: Flask + one SELECT by primary key", "req/s"),
        Figure("floor.update", "floor: Flask + one UPDATE", "req/s"),
        Figure("ceiling", "push ceiling: dispatcher → Flask claim + finish + attempt", "jobs/s"),
        Figure("cj.create", "cloudjobs POST /v1/jobs (enqueue included)", "req/s", "floor.insert"),
        Figure("cj.get", "cloudjobs GET /v1/jobs/{id}", "req/s", "floor.select"),
        Figure("cj.run", "cloudjobs POST /handlers/run, no-op job, OIDC", "req/s", "floor.update"),
        Figure("cj.batch", "cloudjobs POST /v1/jobs:batchCreate ×500", "jobs/s"),
        Figure("cj.e2e.one", "cloudjobs end to end, one by one", "jobs/s", "ceiling"),
        Figure("cj.e2e.batch", "cloudjobs end to end, batches of 500", "jobs/s", "ceiling"),
        Figure("cj.e2e.one-shared", "cloudjobs end to end, one by one, creates sharing tasks", "jobs/s",
               "cj.e2e.one"),
        Figure("cj.e2e.shared", "cloudjobs end to end, batches of 500, 100 jobs a task", "jobs/s", "cj.e2e.batch"),
        Figure("cj.e2e.workflow", "cloudjobs workflow: fan-out and its fan-in", "jobs/s", "cj.e2e.batch"),
        Figure("cj.latency.one", f"cloudjobs one by one at {PACED_RATE:.0f} jobs/s (low load)", "jobs/s"),
        Figure("cj.latency.one-shared", f"cloudjobs one by one at {PACED_RATE:.0f} jobs/s, creates sharing tasks",
               "jobs/s"),
        Figure("peer.procrastinate.one", "Procrastinate, one by one", "jobs/s", "cj.e2e.one"),
        Figure("peer.procrastinate.batch", "Procrastinate, batched", "jobs/s", "cj.e2e.batch"),
        Figure("peer.pgqueuer.one", "pgqueuer, one by one", "jobs/s", "cj.e2e.one"),
        Figure("peer.pgqueuer.batch", "pgqueuer, batched", "jobs/s", "cj.e2e.batch"),
        Figure("peer.celery.one", "Celery + Redis, one by one", "jobs/s", "cj.e2e.one"),
    ]
    return {f.key: f for f in rows}


# (what, figure, against, goal): ratio figure/against ≥ goal; against None: absolute figure.
TARGETS: list[tuple[str, str, str | None, float | None]] = [
    ("POST /v1/jobs ≥ 0.6× floor INSERT", "cj.create", "floor.insert", 0.6),
    ("GET /v1/jobs/{id} ≥ 0.85× floor SELECT", "cj.get", "floor.select", 0.85),
    ("/handlers/run ≥ 0.5× floor UPDATE", "cj.run", "floor.update", 0.5),
    ("batchCreate ≥ 10,000 jobs/s", "cj.batch", None, 10_000),
    ("end to end one by one ≥ 0.7× push ceiling", "cj.e2e.one", "ceiling", 0.7),
    ("end to end batched ≥ 0.7× push ceiling", "cj.e2e.batch", "ceiling", 0.7),
    ("workflow fan-out + fan-in ≥ 0.8× end to end batched", "cj.e2e.workflow", "cj.e2e.batch", 0.8),
    ("ahead of Procrastinate, one by one", "cj.e2e.one", "peer.procrastinate.one", 1.0),
    ("ahead of Procrastinate, batched", "cj.e2e.batch", "peer.procrastinate.batch", 1.0),
    ("ahead of Celery", "cj.e2e.one", "peer.celery.one", 1.0),
    ("ahead of Celery (batched cloudjobs)", "cj.e2e.batch", "peer.celery.one", 1.0),
    ("shared tasks, one by one ≥ 1.0× Procrastinate one by one", "cj.e2e.one-shared", "peer.procrastinate.one", 1.0),
    ("shared tasks, one by one ≥ 1.0× Celery", "cj.e2e.one-shared", "peer.celery.one", 1.0),
    ("shared tasks, batched ≥ 1.0× pgqueuer batched", "cj.e2e.shared", "peer.pgqueuer.batch", 1.0),
    ("shared tasks, batched ahead of Procrastinate batched", "cj.e2e.shared", "peer.procrastinate.batch", 1.0),
    ("gap to pgqueuer, one by one (reported)", "cj.e2e.one", "peer.pgqueuer.one", None),
    ("gap to pgqueuer, batched (reported)", "cj.e2e.batch", "peer.pgqueuer.batch", None),
]
RSS_LIMIT_MB = 150.0
OPS_LIMIT = 0.05
# (what, figure, peer figure): CPU per job, app + PostgreSQL (the emulator left out: Cloud Tasks
# runs elsewhere in production), at most the peer's (its processes + its database or broker).
CPU_TARGETS: list[tuple[str, str, str]] = [
    (f"CPU per job, shared batched ≤ {peer} batched", "cj.e2e.shared", f"peer.{key}.batch")
    for peer, key in (("Procrastinate", "procrastinate"), ("pgqueuer", "pgqueuer"))
] + [
    (f"CPU per job, shared one by one ≤ {peer} one by one", "cj.e2e.one-shared", f"peer.{key}.one")
    for peer, key in (("Procrastinate", "procrastinate"), ("pgqueuer", "pgqueuer"), ("Celery", "celery"))
]


# ----------------------------------------------------------------------------- plumbing


class LoaderProcess:
    """`python -m bench.loader --serve`: one loader process for the whole run."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.loader", "--serve"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        return self.proc

    def run(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one spec, wait (bounded) for its tally."""
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            try:
                ready = sel.select(timeout)
            finally:
                sel.close()
            if not ready:
                proc.kill()
                proc.wait(5)
                raise RuntimeError(f"the loader did not answer within {timeout:.0f}s")
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the loader exited")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"loader: {result['error']}")
        return result

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


LOADER = LoaderProcess()


def run_loader(
    base_url: str,
    requests_: list[dict[str, Any]],
    *,
    concurrency: int = LOAD_CONCURRENCY,
    duration_s: float = 5.0,
    max_requests: int | None = None,
    cycle: bool = True,
    ok: tuple[int, ...] = (200, 201, 202),
    rate: float = 0.0,
) -> dict[str, Any]:
    """Drive one load through the loader process; its tally."""
    spec = {
        "rate": rate,
        "base_url": base_url,
        "requests": requests_,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "cycle": cycle,
        "ok": list(ok),
        "max_requests": max_requests if max_requests is not None else 1_000_000,
    }
    return LOADER.run(spec, timeout=duration_s + 120)


def _checked(tally: dict[str, Any], what: str) -> dict[str, Any]:
    if tally["errors"]:
        raise RuntimeError(
            f"{what}: {tally['errors']} failed requests, e.g. {tally['failures'][:2]}"
        )
    if not tally["completed"]:
        raise RuntimeError(f"{what}: no request completed")
    return tally


BENCH_APP = "cloudjobs-bench"  # application_name of the bench's own connections
DB_PREFIX = "cloudjobs_perf_"  # this suite's databases (bench.chaos uses cloudjobs_bench_)


@dataclass
class Reading:
    """What one measured stretch cost: set `jobs` inside the block, read the rest after."""

    jobs: int = 0
    app_s: float = 0.0  # CPU of the gunicorn workers
    pg_s: float = 0.0  # CPU of the PostgreSQL backends serving them
    bench_s: float = 0.0  # CPU of this process: the emulator's threads (and the bench's polling)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used; 0 once it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


class Meter:
    """Peak RSS per gunicorn worker, and CPU seconds per job, while a figure is measured.

    CPU time is what the noisy neighbours of a shared machine disturb least: a request costs
    about the same CPU whether or not it waited for a core, while its throughput does not.
    """

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.cpu: dict[str, list[tuple[float, float, float]]] = {}  # ms per job: app, pg, bench
        self._watch: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self, key: str, master_pid: int, db: sa.Engine | None = None) -> Iterator[Reading]:
        """Sample RSS of master_pid's workers; account CPU of them and of db's backends."""
        reading = Reading()
        workers = self._workers(master_pid)
        backends = self._backends(db)
        app0 = {p: process_cpu(p) for p in workers}
        pg0 = {p: process_cpu(p) for p in backends}
        me0 = process_cpu(os.getpid())
        self._watch = (key, master_pid)
        self._sample()
        try:
            yield reading
        finally:
            self._sample()
            self._watch = None
            reading.app_s = sum(process_cpu(p) - app0.get(p, 0.0) for p in self._workers(master_pid))
            reading.pg_s = sum(process_cpu(p) - pg0.get(p, 0.0) for p in self._backends(db))
            reading.bench_s = process_cpu(os.getpid()) - me0
            if reading.jobs:
                per = 1000.0 / reading.jobs
                self.cpu.setdefault(key, []).append(
                    (reading.app_s * per, reading.pg_s * per, reading.bench_s * per)
                )

    @staticmethod
    def _workers(master_pid: int) -> list[int]:
        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(master_pid).children()]
        return []

    @staticmethod
    def _backends(db: sa.Engine | None) -> list[int]:
        if db is None:
            return []
        with db.connect() as conn:
            return [
                int(r[0])
                for r in conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name <> :me AND backend_type = 'client backend'"
                    ),
                    {"me": BENCH_APP},
                )
            ]

    def _sample(self) -> None:
        watch = self._watch
        if watch is None:
            return
        key, pid = watch
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children():
                with contextlib.suppress(psutil.Error):
                    mb = child.memory_info().rss / 2**20
                    self.peaks[key] = max(self.peaks.get(key, 0.0), mb)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def bench_engine(url: str) -> sa.Engine:
    """An engine for the bench's own queries, named so the CPU accounting leaves them out."""
    return sa.create_engine(url, pool_size=2, connect_args={"application_name": BENCH_APP})


def worker_rss(master_pid: int) -> list[float]:
    """Each worker's RSS now, in MB."""
    with contextlib.suppress(psutil.Error):
        return [c.memory_info().rss / 2**20 for c in psutil.Process(master_pid).children()]
    return []


@contextlib.contextmanager
def floor_server(
    database_url: str, *, workers: int = WORKERS
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """gunicorn serving bench.floor_app with the production gunicorn.conf.py."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "ERROR"}
    proc = start_gunicorn(env, port, workers=workers, app="bench.floor_app:create_app()")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, path="/hello")
        yield url, proc
    finally:
        stop(proc)


class PeerProcess:
    """A `python -m bench.peers NAME` driver: workers started once, runs on command."""

    def __init__(self, name: str, database_url: str, log: Path) -> None:
        self.name = name
        self.version = ""
        self.settings = ""
        self.error: str | None = None
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.peers",
                name,
                "--database-url",
                database_url,
                "--workers",
                str(WORKERS),
                "--submitters",
                str(SUBMIT_CONCURRENCY),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        # its database's backends (Celery's: the Redis server), for the CPU it costs per job
        self.db = bench_engine(database_url) if name != "celery" else None
        ready = self._read(90)
        if "error" in ready:
            self.error = ready["error"]
        else:
            self.version, self.settings = ready.get("version", ""), ready.get("settings", "")

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return {"error": f"no answer within {timeout:.0f}s"}
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"the driver exited (status {self.proc.poll()}); see its log"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, mode: str, n: int) -> dict[str, Any]:
        """One run: submit n jobs (one by one or batched) and wait until all are done.

        The answer's "cpu" is CPU ms per job: the peer's processes (its client, which does
        what cloudjobs' API does, and its workers), and its database's backends or, for
        Celery, the Redis server's."""
        if self.error:
            return {"error": self.error}
        assert self.proc.stdin is not None
        before = self.cpu_times()
        self.proc.stdin.write(f"{mode} {n}\n")
        self.proc.stdin.flush()
        answer = self._read(300)
        after = self.cpu_times()
        answer["cpu"] = [
            1000 * sum(t - start.get(pid, 0.0) for pid, t in now.items()) / n
            for start, now in zip(before, after, strict=True)
        ]
        return answer

    def cpu_times(self) -> tuple[dict[int, float], dict[int, float]]:
        """CPU seconds so far of the peer's processes, and of its database's backends (or Redis)."""
        procs = [self.proc.pid]
        with contextlib.suppress(psutil.Error):
            procs += [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        if self.db is not None:
            store = Meter._backends(self.db)
        else:
            store = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]
        return {p: process_cpu(p) for p in procs}, {p: process_cpu(p) for p in store}

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.db is not None:
            self.db.dispose()
        self._log.close()


# ----------------------------------------------------------------------------- measuring


class Bench:
    """The figures of one run."""

    def __init__(
        self,
        sizes: Sizes,
        *,
        stack: Stack,
        floor_url: str,
        floor_pid: int,
        floor_db: str,
        sampler: Meter,
        log: Callable[[str], None],
    ) -> None:
        self.sizes = sizes
        self.stack = stack
        self.floor_url = floor_url
        self.floor_pid = floor_pid
        self.sampler = sampler
        self.log = log
        self.figs = figures()
        self.cj_db = bench_engine(stack.database_url)
        self.floor_db = bench_engine(floor_db)
        from api.cloud.tasks import make_client, queue_path

        self.tasks = make_client(stack.config)
        self.queue = queue_path(stack.config, "default")
        self.tokens = self._mint_tokens(16)

    def _mint_tokens(self, n: int) -> list[str]:
        """A pool of OIDC tokens as Cloud Tasks would send them, minted before anything is timed."""
        from emulator.oidc import TokenIssuer

        now = time.time()
        audience = self.stack.config.audience
        return [
            TokenIssuer(self.stack.emulator.key).id_token(SERVICE_ACCOUNT, audience, now=now - i)
            for i in range(n)
        ]

    def close(self) -> None:
        self.cj_db.dispose()
        self.floor_db.dispose()

    def record(self, key: str, value: float) -> None:
        self.figs[key].samples.append(value)
        self.log(f"  {key:<26} {value:>10,.0f} {self.figs[key].unit}")

    def guarded(self, key: str, fn: Callable[[], float]) -> None:
        """Measure one figure; a failure marks the figure, never ends the run."""
        try:
            self.record(key, fn())
        except Exception as e:
            self.figs[key].error = f"{type(e).__name__}: {e}"[:300]
            self.log(f"  {key:<26} FAILED: {self.figs[key].error}")

    # -- floor

    def floor(
        self,
        key: str,
        reqs: list[dict[str, Any]],
        *,
        duration: float | None = None,
        max_requests: int | None = None,
    ) -> float:
        with self.sampler.watching(key, self.floor_pid, self.floor_db) as reading:
            tally = run_loader(
                self.floor_url,
                reqs,
                duration_s=duration or self.sizes.http_s,
                max_requests=max_requests,
            )
            reading.jobs = int(tally["completed"])
        return float(_checked(tally, key)["rate"])

    def floor_ids(self, n: int = 1000) -> list[str]:
        with self.floor_db.connect() as conn:
            return [
                str(r[0]) for r in conn.execute(sa.text("SELECT id FROM jobs LIMIT :n"), {"n": n})
            ]

    def floor_round(self) -> None:
        self.guarded("floor.hello", lambda: self.floor("floor.hello", [{"path": "/hello"}]))
        self.guarded(
            "floor.insert",
            lambda: self.floor(
                "floor.insert",
                [
                    {
                        "method": "POST",
                        "path": "/insert",
                        "body": ECHO,
                        "headers": {"Content-Type": "application/json"},
                    }
                ],
            ),
        )

    def floor_select(self) -> float:
        ids = self.floor_ids()
        return self.floor("floor.select", [{"path": f"/select/{i}"} for i in ids])

    def floor_update(self) -> float:
        ids = self.floor_ids()
        return self.floor(
            "floor.update",
            [
                {
                    "method": "POST",
                    "path": "/update",
                    "body": json.dumps({"job_id": i}),
                    "headers": {"Content-Type": "application/json"},
                }
                for i in ids
            ],
        )

    def queued_floor_jobs(self, n: int) -> list[str]:
        """n QUEUED rows in the floor's table, inserted directly, for the ceiling to run."""
        with self.floor_db.begin() as conn:
            rows = conn.execute(
                sa.text(
                    "INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, "
                    "task_name) "
                    "SELECT gen_random_uuid(), 'echo', 'default', 'QUEUED', '{}', 5, 300, "
                    "'projects/p/locations/l/queues/default/tasks/job-' || g "
                    "FROM generate_series(1, :n) g RETURNING id"
                ),
                {"n": n},
            )
            return [str(r[0]) for r in rows]

    def ceiling(self, n: int | None = None) -> float:
        """The push ceiling: the loader dispatches n queued jobs to the floor's claim/finish."""
        n = n or self.sizes.e2e_jobs
        ids = self.queued_floor_jobs(n)
        reqs = [
            {
                "method": "POST",
                "path": "/ceiling/run",
                "body": json.dumps({"job_id": i}),
                "headers": {"Content-Type": "application/json"},
            }
            for i in ids
        ]
        with self.sampler.watching("ceiling", self.floor_pid, self.floor_db) as reading:
            tally = run_loader(
                self.floor_url,
                reqs,
                concurrency=LOAD_CONCURRENCY,
                duration_s=max(60.0, n / 20),
                cycle=False,
            )
            reading.jobs = int(tally["completed"])
        _checked(tally, "ceiling")
        if tally["completed"] != n:
            raise RuntimeError(f"ceiling: {tally['completed']} of {n} jobs ran")
        return n / float(tally["elapsed_s"])

    # -- cloudjobs

    def cj(
        self,
        key: str,
        reqs: list[dict[str, Any]],
        *,
        duration: float | None = None,
        max_requests: int | None = None,
        concurrency: int = LOAD_CONCURRENCY,
        cycle: bool = True,
        per_request: int = 1,
    ) -> dict[str, Any]:
        with self.sampler.watching(key, self.stack.gunicorn.pid, self.cj_db) as reading:
            tally = run_loader(
                self.stack.url,
                reqs,
                duration_s=duration or self.sizes.http_s,
                max_requests=max_requests,
                concurrency=concurrency,
                cycle=cycle,
            )
            reading.jobs = per_request * int(tally["completed"])
        return _checked(tally, key)

    def pause(self) -> None:
        self.tasks.pause_queue(name=self.queue)

    def purge_and_resume(self) -> None:
        self.tasks.purge_queue(name=self.queue)
        self.tasks.resume_queue(name=self.queue)

    def create(self) -> float:
        """POST /v1/jobs with the queue paused: the enqueue is measured, the dispatch is not."""
        return float(self.cj("cj.create", [_post("/v1/jobs", ECHO)])["rate"])

    def batch(self, calls: int | None = None) -> float:
        body = json.dumps({"jobs": [{"type": "echo", "payload": {}}] * BATCH})
        tally = self.cj(
            "cj.batch",
            [_post("/v1/jobs:batchCreate", body)],
            concurrency=2,
            max_requests=calls or self.sizes.batch_calls,
            duration=60.0,
            per_request=BATCH,
        )
        return BATCH * float(tally["completed"]) / float(tally["elapsed_s"])

    def cj_ids(self, n: int = 1000) -> list[str]:
        with self.cj_db.connect() as conn:
            return [
                str(r[0])
                for r in conn.execute(
                    sa.text("SELECT id FROM jobs ORDER BY created_time DESC LIMIT :n"), {"n": n}
                )
            ]

    def get(self) -> float:
        return float(self.cj("cj.get", [{"path": f"/v1/jobs/{i}"} for i in self.cj_ids()])["rate"])

    def run_requests(self, n: int) -> list[dict[str, Any]]:
        """Deliveries of n QUEUED jobs (tasks held in the paused queue), like Cloud Tasks."""
        with self.cj_db.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, task_name FROM jobs WHERE state = 'QUEUED' "
                    "ORDER BY created_time LIMIT :n"
                ),
                {"n": n},
            ).all()
        eta = f"{time.time():.6f}"
        return [
            {
                "method": "POST",
                "path": "/handlers/run",
                "body": json.dumps({"job_id": str(r.id)}),
                "headers": {
                    "Content-Type": "application/json",
                    "User-Agent": "Google-Cloud-Tasks",
                    "Authorization": "Bearer " + self.tokens[k % len(self.tokens)],
                    "X-CloudTasks-QueueName": "default",
                    "X-CloudTasks-TaskName": r.task_name.rsplit("/", 1)[-1],
                    "X-CloudTasks-TaskRetryCount": "0",
                    "X-CloudTasks-TaskExecutionCount": "0",
                    "X-CloudTasks-TaskETA": eta,
                },
            }
            for k, r in enumerate(rows)
        ]

    def run(self) -> float:
        reqs = self.run_requests(50_000)
        if len(reqs) < 100:
            raise RuntimeError(f"only {len(reqs)} queued jobs to run")
        return float(self.cj("cj.run", reqs, cycle=False)["rate"])

    def clock(self) -> datetime:
        with self.cj_db.connect() as conn:
            return conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()  # type: ignore[no-any-return]

    def e2e(self, mode: str, n: int | None = None, key: str | None = None, rate: float = 0.0) -> float:
        """n echo jobs submitted one by one or in batches of 500, run to COMPLETED via the emulator.

        From the first job's creation to the last one's completion, both by PostgreSQL's clock.
        With `rate`, one-by-one creates arrive at that many a second (the low-load latency).
        Also noted on the figure: each job's latency from its creation to its completion (p50,
        p99), the emulator's billable operations per job and the jobs per Cloud Task.
        """
        n = n or self.sizes.e2e_jobs
        key = key or f"cj.e2e.{mode}"
        t0 = self.clock()
        bound = max(60.0, n / 20, 1.5 * n / rate if rate else 0.0)
        if mode in ("one", "one-shared"):
            # "one-shared": the same creates on the shared queue, where those arriving together
            # in a worker share a task (CREATE_COALESCE_MS)
            body = json.dumps({"type": "echo", "payload": {}, "queue": "shared", "timeout_s": 5}) \
                if mode == "one-shared" else ECHO
            reqs, concurrency, cycle = [_post("/v1/jobs", body)], SUBMIT_CONCURRENCY, True
        else:
            # "shared": the same batches on a queue that puts up to 100 jobs in a Cloud Task; a
            # no-op's timeout of 5 s lets 100 of them, run one after another, fit its deadline
            job = {"type": "echo", "payload": {}, **({"queue": "shared", "timeout_s": 5} if mode == "shared" else {})}
            sizes = [min(BATCH, n - i) for i in range(0, n, BATCH)]
            reqs = [_post("/v1/jobs:batchCreate", json.dumps({"jobs": [job] * k})) for k in sizes]
            concurrency, cycle = 1, False
        operations = self.operations()
        with self.sampler.watching(key, self.stack.gunicorn.pid, self.cj_db) as reading:
            tally = run_loader(
                self.stack.url,
                reqs,
                concurrency=concurrency,
                cycle=cycle,
                max_requests=n if cycle else None,
                duration_s=bound,
                rate=rate,
            )
            _checked(tally, key)
            first, last = self.wait_done(t0, n, timeout=bound)
            reading.jobs = n
        fig = self.figs.get(key)
        if fig is not None:
            fig.ops.append((self.operations() - operations) / n)
            with self.cj_db.connect() as conn:
                row = conn.execute(_LATENCY, {"t0": t0}).one()
            fig.latency.append((row.p50, row.p99))
            fig.per_task.append(row.jobs / row.tasks)
        return n / (last - first).total_seconds()

    def operations(self) -> int:
        """The emulator's billable operations so far: task RPCs and delivery attempts."""
        return sum(self.stack.emulator.state.operation_counts.values())  # type: ignore[no-any-return]

    def workflow(self) -> float:
        """One workflow: a fan-out of no-op echo steps and a step that needs them all, from its
        creation to its COMPLETED (PostgreSQL's clock), in jobs per second."""
        n = self.sizes.fan_out or self.sizes.e2e_jobs
        steps = [{"name": f"w{i}", "type": "echo"} for i in range(n)]
        steps.append({"name": "join", "type": "echo", "needs": [f"w{i}" for i in range(n)]})
        bound = max(60.0, n / 20)
        with self.sampler.watching("cj.e2e.workflow", self.stack.gunicorn.pid, self.cj_db) as reading:
            resp = requests.post(self.stack.url + "/v1/workflows", json={"name": "fan", "steps": steps},
                                 timeout=bound)
            if resp.status_code != 202:
                raise RuntimeError(f"POST /v1/workflows answered {resp.status_code}: {resp.text[:200]}")
            wid = resp.json()["id"]
            deadline = time.monotonic() + bound
            query = sa.text("SELECT state, created_time, done_time FROM workflows WHERE id = :id")
            while True:
                with self.cj_db.connect() as conn:
                    row = conn.execute(query, {"id": wid}).one()
                if row.state != "RUNNING":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the workflow of {n + 1} steps did not end within {bound:.0f}s")
                time.sleep(0.1)
            if row.state != "COMPLETED":
                raise RuntimeError(f"the workflow ended {row.state}")
            reading.jobs = n + 1
        return (n + 1) / (row.done_time - row.created_time).total_seconds()

    def wait_done(self, t0: datetime, n: int, *, timeout: float) -> tuple[datetime, datetime]:
        """Wait until the n jobs created after t0 are all COMPLETED; (first created, last done)."""
        deadline = time.monotonic() + timeout
        query = sa.text(
            "SELECT count(*) AS jobs, count(*) FILTER (WHERE state = 'COMPLETED') AS completed, "
            "count(*) FILTER (WHERE state IN ('FAILED', 'CANCELLED')) AS failed, "
            "min(created_time) AS first, max(done_time) AS last FROM jobs WHERE created_time >= :t0"
        )
        while True:
            with self.cj_db.connect() as conn:
                row = conn.execute(query, {"t0": t0}).one()
            if row.failed:
                raise RuntimeError(f"{row.failed} jobs failed")
            if row.completed >= n:
                return row.first, row.last
            if time.monotonic() > deadline:
                raise RuntimeError(f"{row.completed} of {n} jobs completed within {timeout:.0f}s")
            time.sleep(0.1)

    # -- rounds

    def warm_up(self) -> None:
        """Connections, pools, the gRPC channel, the certs cache and the emulator's pump, warmed."""
        w = self.sizes.warmup
        if not w:
            return
        run_loader(self.floor_url, [{"path": "/hello"}], max_requests=w, duration_s=10)
        run_loader(self.floor_url, [_post("/insert", ECHO)], max_requests=w, duration_s=10)
        run_loader(
            self.floor_url,
            [{"path": f"/select/{i}"} for i in self.floor_ids()],
            max_requests=w,
            duration_s=10,
        )
        self.ceiling(min(w, 200))
        self.pause()
        run_loader(self.stack.url, [_post("/v1/jobs", ECHO)], max_requests=w, duration_s=10)
        self.batch(self.sizes.batch_calls)  # as many calls as a round: the workers prepare its INSERT
        run_loader(
            self.stack.url,
            [{"path": f"/v1/jobs/{i}"} for i in self.cj_ids()],
            max_requests=w,
            duration_s=10,
        )
        run_loader(self.stack.url, self.run_requests(min(w, 200)), cycle=False, duration_s=10)
        self.purge_and_resume()
        self.e2e("one", min(w, 200), key="warmup")
        self.figs["cj.batch"].samples.clear()
        self.sampler.peaks.clear()
        self.sampler.cpu.clear()

    def round(self, peers: list[PeerProcess]) -> None:
        """Every figure once, floor and cloudjobs interleaved."""
        self.floor_round()
        self.pause()
        try:
            self.guarded("cj.create", self.create)
            self.guarded("cj.batch", self.batch)
            self.guarded("floor.select", self.floor_select)
            self.guarded("cj.get", self.get)
            self.guarded("floor.update", self.floor_update)
            self.guarded("cj.run", self.run)
        finally:
            self.purge_and_resume()
        self.guarded("ceiling", self.ceiling)
        self.guarded("cj.e2e.one", lambda: self.e2e("one"))
        self.guarded("cj.e2e.batch", lambda: self.e2e("batch"))
        self.guarded("cj.e2e.one-shared", lambda: self.e2e("one-shared"))
        self.guarded("cj.e2e.shared", lambda: self.e2e("shared"))
        self.guarded("cj.e2e.workflow", self.workflow)
        self.guarded("cj.latency.one", lambda: self.e2e("one", self.sizes.paced_jobs, "cj.latency.one", PACED_RATE))
        self.guarded("cj.latency.one-shared",
                     lambda: self.e2e("one-shared", self.sizes.paced_jobs, "cj.latency.one-shared", PACED_RATE))
        for peer in peers:
            for mode in ("one", "batch"):
                key = f"peer.{peer.name}.{mode}"
                if key not in self.figs:
                    continue
                result = peer.run(mode, self.sizes.e2e_jobs)
                if "error" in result:
                    self.figs[key].error = result["error"]
                    self.log(f"  {key:<26} FAILED: {result['error']}")
                else:
                    self.record(key, float(result["rate"]))
                    self.figs[key].cpu.append((*result["cpu"], 0.0))


# Latency from a job's creation (its INSERT, just before the 202) to its completion, and its
# jobs per distinct Cloud Task name.
_LATENCY = sa.text(
    "SELECT 1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - created_time)) AS p50, "
    "1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM done_time - created_time)) AS p99, "
    "count(*) AS jobs, count(DISTINCT task_name) AS tasks FROM jobs WHERE created_time >= :t0"
)


def _post(path: str, body: str) -> dict[str, Any]:
    return {
        "method": "POST",
        "path": path,
        "body": body,
        "headers": {"Content-Type": "application/json"},
    }


# ----------------------------------------------------------------------------- round trips


def count_round_trips(
    figs: dict[str, Figure],
    sizes: Sizes,
    *,
    cj_url: str,
    floor_url: str,
    log: Callable[[str], None],
) -> None:
    """One-off instrumented run: every server talks to PostgreSQL through a counting proxy."""
    from bench.pgwire import CountingProxy, Counts, counting

    n = sizes.rt_jobs
    with CountingProxy.in_front_of(cj_url) as proxy:
        via_proxy = proxy.url_through

        def note(key: str, c: Counts, per: int) -> None:
            f = figs[key]
            f.trips = c.round_trips / per
            f.statements = c.statements / per
            f.kinds = {k: v / per for k, v in sorted(c.trips.items())}
            kinds = ", ".join(f"{k} {v:g}" for k, v in f.kinds.items())
            log(f"  {key:<26} {f.trips:5.1f} round trips, {f.statements:4.1f} statements  {kinds}")

        with (
            floor_server(via_proxy(floor_url), workers=1) as (furl, fproc),
            running_stack(via_proxy(cj_url), queues_file=QUEUES_FILE, workers=1) as stack,
        ):
            sampler = Meter()
            b = Bench(
                sizes,
                stack=stack,
                floor_url=furl,
                floor_pid=fproc.pid,
                floor_db=floor_url,
                sampler=sampler,
                log=lambda _: None,
            )
            # The bench's own queries go around the proxy, so they are not counted.
            b.cj_db.dispose()
            b.cj_db = sa.create_engine(cj_url, pool_size=2)
            batch = json.dumps({"jobs": [{"type": "echo", "payload": {}}] * BATCH})
            try:
                # The first requests of a worker connect and fill caches: not counted.
                run_loader(furl, [_post("/insert", ECHO)], max_requests=5, concurrency=1)
                b.pause()
                run_loader(stack.url, [_post("/v1/jobs", ECHO)], max_requests=5, concurrency=1)
                # (figure, server, requests, how many requests, jobs per request)
                plan: list[tuple[str, str, Callable[[], list[dict[str, Any]]], int, int]] = [
                    ("floor.hello", furl, lambda: [{"path": "/hello"}], n, 1),
                    ("floor.insert", furl, lambda: [_post("/insert", ECHO)], n, 1),
                    (
                        "floor.select",
                        furl,
                        lambda: [{"path": f"/select/{i}"} for i in b.floor_ids(n)],
                        n,
                        1,
                    ),
                    (
                        "floor.update",
                        furl,
                        lambda: [
                            _post("/update", json.dumps({"job_id": i})) for i in b.floor_ids(n)
                        ],
                        n,
                        1,
                    ),
                    ("cj.create", stack.url, lambda: [_post("/v1/jobs", ECHO)], n, 1),
                    (
                        "cj.batch",
                        stack.url,
                        lambda: [_post("/v1/jobs:batchCreate", batch)],
                        1,
                        BATCH,
                    ),
                    (
                        "cj.get",
                        stack.url,
                        lambda: [{"path": f"/v1/jobs/{i}"} for i in b.cj_ids(n)],
                        n,
                        1,
                    ),
                    ("cj.run", stack.url, lambda: b.run_requests(n), n, 1),
                ]
                for key, url, reqs, count, per in plan:
                    todo = reqs()
                    with counting(proxy) as c:
                        tally = run_loader(url, todo, max_requests=count, concurrency=2)
                    note(key, c, per * _count(tally))
                b.purge_and_resume()
                ids = b.queued_floor_jobs(n)
                dispatches = [_post("/ceiling/run", json.dumps({"job_id": i})) for i in ids]
                with counting(proxy) as c:
                    _count(run_loader(furl, dispatches, cycle=False, concurrency=2))
                note("ceiling", c, n)
                for mode, jobs in (("one", n), ("batch", BATCH)):
                    with counting(proxy) as c:
                        b.e2e(mode, jobs, key=f"rt.{mode}")
                        time.sleep(0.5)  # late statements of the last jobs' requests
                    note(f"cj.e2e.{mode}", c, jobs)
            finally:
                b.close()
                sampler.stop()


def _count(tally: dict[str, Any]) -> int:
    return int(_checked(tally, "instrumented run")["completed"])


# ----------------------------------------------------------------------------- reporting


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def ratio_range(figs: dict[str, Figure], key: str, ref: str) -> tuple[float, float] | None:
    """Min and max of the per-round ratios (the rounds were measured side by side)."""
    a, b = figs[key].samples, figs[ref].samples
    pairs = [x / y for x, y in zip(a, b, strict=False) if y]
    return (min(pairs), max(pairs)) if pairs else None


def ratio(figs: dict[str, Figure], key: str, ref: str) -> float | None:
    """Median over median."""
    a, b = figs[key].median, figs[ref].median
    return a / b if a is not None and b else None


def cpu_cell(f: Figure) -> str:
    """Median CPU ms per job: gunicorn workers + PostgreSQL backends (+ the emulator)."""
    if not f.cpu:
        return "—"
    app = statistics.median(c[0] for c in f.cpu)
    pg = statistics.median(c[1] for c in f.cpu)
    cell = f"{app:.2f} + {pg:.2f}"
    if f.key.startswith(("cj.e2e", "cj.latency")):
        cell += f" + {statistics.median(c[2] for c in f.cpu):.2f}"
    return cell


def cpu_total(f: Figure) -> float | None:
    """Median over rounds of CPU ms per job, app (or the peer's processes) + database (or broker)."""
    return statistics.median(c[0] + c[1] for c in f.cpu) if f.cpu else None


def latency_table(figs: dict[str, Figure]) -> list[str]:
    """End-to-end latency, Cloud Tasks operations and jobs per task, medians over rounds."""
    lines = [
        "| figure | latency p50 | latency p99 | Cloud Tasks operations / job | jobs / task |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for f in figs.values():
        if not f.latency:
            continue
        p50 = statistics.median(x[0] for x in f.latency)
        p99 = statistics.median(x[1] for x in f.latency)
        lines.append(f"| {f.label} | {p50:,.1f} ms | {p99:,.1f} ms | {statistics.median(f.ops):.3f} "
                     f"| {statistics.median(f.per_task):.1f} |")
    return lines


def figures_table(figs: dict[str, Figure]) -> list[str]:
    """The figures as a Markdown table."""
    lines = [
        "| figure | unit | median | min–max | runs | ratio (median ÷ median) "
        "| CPU ms / job: app + PG (+ emulator) | PG round trips / job | statements / job "
        "| peak RSS / worker |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for f in figs.values():
        if f.error and not f.samples:
            lines.append(f"| {f.label} | {f.unit} | failed: {f.error} | | 0 | | | | | |")
            continue
        if not f.samples:
            continue
        rng = f"{min(f.samples):,.0f}–{max(f.samples):,.0f}"
        r = ""
        if f.ref:
            value = ratio(figs, f.key, f.ref)
            if value is not None:
                r = f"{value:.2f}× {_short(figs[f.ref])}"
        rss = f"{f.rss_mb:.0f} MB" if f.rss_mb else "—"
        trips = _fmt(f.trips, 1) if f.trips is not None else "—"
        stmts = _fmt(f.statements, 1) if f.statements is not None else "—"
        cells = [
            f.label,
            f.unit,
            f"{f.median:,.0f}",
            rng,
            str(len(f.samples)),
            r,
            cpu_cell(f),
            trips,
            stmts,
            rss,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _short(f: Figure) -> str:
    return {
        "floor.insert": "floor INSERT",
        "floor.select": "floor SELECT",
        "floor.update": "floor UPDATE",
        "ceiling": "push ceiling",
        "cj.e2e.one": "cloudjobs one by one",
        "cj.e2e.batch": "cloudjobs batched",
        "cj.e2e.workflow": "cloudjobs workflow",
    }.get(f.key, f.label)


def targets_table(figs: dict[str, Figure], steady_rss: float | None) -> list[str]:
    """Each target: the measured ratio, its per-round range, met or not."""
    lines = ["| target | measured | per-round range | met |", "| --- | ---: | ---: | --- |"]
    for what, key, ref, goal in TARGETS:
        if ref is None:
            value = figs[key].median
            shown = f"{value:,.0f} {figs[key].unit}" if value is not None else "—"
            rng_s = (
                f"{min(figs[key].samples):,.0f}–{max(figs[key].samples):,.0f}"
                if figs[key].samples
                else ""
            )
        else:
            value = ratio(figs, key, ref)
            shown = f"{value:.2f}×" if value is not None else "—"
            rr = ratio_range(figs, key, ref)
            rng_s = f"{rr[0]:.2f}–{rr[1]:.2f}×" if rr else ""
        if value is None:
            met = "not measured"
        elif goal is None:
            met = "(reported)"
        else:
            met = "yes" if value >= goal else "**no**"
        lines.append(f"| {what} | {shown} | {rng_s} | {met} |")
    for what, key, peer in CPU_TARGETS:
        mine, theirs = cpu_total(figs[key]), cpu_total(figs[peer])
        if mine is None or theirs is None:
            lines.append(f"| {what} | — | | not measured |")
            continue
        met = "yes" if mine <= theirs else "**no**"
        lines.append(f"| {what} | {mine:.2f} ms against {theirs:.2f} ms ({mine / theirs:.2f}×) | | {met} |")
    ops = figs["cj.e2e.shared"].ops
    if ops:
        value = statistics.median(ops)
        met = "yes" if value <= OPS_LIMIT else "**no**"
        lines.append(f"| Cloud Tasks operations per job ≤ {OPS_LIMIT} with batching on | {value:.3f} "
                     f"| {min(ops):.3f}–{max(ops):.3f} | {met} |")
    if steady_rss is not None:
        met = "yes" if steady_rss <= RSS_LIMIT_MB else "**no**"
        lines.append(
            f"| steady RSS per worker ≤ {RSS_LIMIT_MB:.0f} MB | {steady_rss:.0f} MB | | {met} |"
        )
    return lines


def trips_table(figs: dict[str, Figure]) -> list[str]:
    """Round trips per job by what they were for."""
    kinds = ["ping", "begin", "commit", "rollback", "insert", "select", "update", "with"]
    rows = [f for f in figs.values() if f.kinds]
    extra = sorted({k for f in rows for k in f.kinds} - set(kinds))
    cols = [k for k in kinds + extra if any(k in f.kinds for f in rows)]
    lines = [
        "| figure | round trips | " + " | ".join(cols) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for f in rows:
        cells = " | ".join(f"{f.kinds[k]:.3g}" if k in f.kinds else "" for k in cols)
        lines.append(f"| {f.label} | {f.trips:.3g} | {cells} |")
    return lines


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except Exception:
            return "—"

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "versions": {
            p: ver(p)
            for p in (
                "flask",
                "gunicorn",
                "sqlalchemy",
                "pg8000",
                "psycopg",
                "aiohttp",
                "grpcio",
                "procrastinate",
                "pgqueuer",
                "celery",
            )
        },
    }


START = (
    "<!-- bench:throughput:start (generated by python -m bench; edits inside are overwritten) -->"
)
END = "<!-- bench:throughput:end -->"


def report(
    figs: dict[str, Figure],
    env: dict[str, Any],
    *,
    command: str,
    mode: str,
    sizes: Sizes,
    peer_settings: dict[str, str],
    steady_rss: dict[str, list[float]],
) -> str:
    """The generated block of docs/benchmarks.md."""
    cj_steady = max(steady_rss.get("cloudjobs", []) or [0.0]) or None
    lb, la = env["load_before"], env.get("load_after", (0, 0, 0))
    lines = [
        START,
        "",
        f"Measured {env['date']} at commit `{env['commit']}` with `{command}` ({mode}: "
        f"{sizes.runs} rounds, {sizes.http_s:g} s per HTTP figure, {sizes.e2e_jobs:,} jobs per "
        f"end-to-end run). Python {env['python']}, {env['cpus']} CPUs, loopback, load average "
        f"{lb[0]:.1f} before and {la[0]:.1f} after (the machine is shared: other work ran too). "
        f"HTTP figures: {LOAD_CONCURRENCY} requests in flight from one aiohttp loader process; "
        f"one-by-one submissions: {SUBMIT_CONCURRENCY} at once. gunicorn: `gunicorn.conf.py`, "
        f"{sizes.workers} workers.",
        "",
        *figures_table(figs),
        "",
        *targets_table(figs, cj_steady),
        "",
        "Latency of each job from its creation (the INSERT just before the 202) to its "
        "COMPLETED, by PostgreSQL's clock; the emulator's billable operations (task RPCs and "
        "delivery attempts) per job; jobs per distinct Cloud Task (medians over the rounds):",
        "",
        *latency_table(figs),
        "",
        "CPU of a peer (its row's CPU column): its processes (the client library, which does "
        "what cloudjobs' API does, and its workers) + its database's backends (Celery: the Redis "
        "server).",
        "",
        "Round trips to PostgreSQL per request (batchCreate and end to end: per job), "
        "by what they were for, "
        "from the instrumented run (`bench/pgwire.py`):",
        "",
        *trips_table(figs),
        "",
        "Steady RSS per gunicorn worker after the last round: "
        + "; ".join(f"{k} " + ", ".join(f"{v:.0f} MB" for v in vs) for k, vs in steady_rss.items())
        + ".",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
    ]
    if peer_settings:
        lines += ["", "Peer settings:", ""] + [f"- {k}: {v}" for k, v in peer_settings.items()]
    lines += ["", END]
    return "\n".join(lines)


def write_docs(path: Path, block: str) -> None:
    """Replace the generated block under '## Throughput', creating the file or section if needed."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START.split(" (")[0] in text and END in text:
        head, rest = text.split(START.split(" (")[0], 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    elif "## Throughput" in text:
        head, tail = text.split("## Throughput", 1)
        first_line, _, body = tail.partition("\n")
        text = f"{head}## Throughput{first_line}\n\n{block}\n{body}"
    else:
        text = text.rstrip("\n") + "\n\n## Throughput\n\n" + block + "\n"
    path.write_text(text)


# ----------------------------------------------------------------------------- main


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so databases are dropped and servers stopped on the way out."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write docs/benchmarks.md."""
    exit_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    modes = p.add_mutually_exclusive_group()
    modes.add_argument(
        "--quick", action="store_true", help="3 short rounds, peers included (< 3 min)"
    )
    modes.add_argument(
        "--smoke", action="store_true", help="one tiny round, no peers, no docs (a test)"
    )
    p.add_argument("--runs", type=int, help="rounds (each figure is measured once per round)")
    p.add_argument("--jobs", type=int, help="jobs per end-to-end run")
    p.add_argument(
        "--no-peers", action="store_true", help="skip Procrastinate, pgqueuer and Celery"
    )
    p.add_argument(
        "--peers", default="procrastinate,pgqueuer,celery", help="which peers (comma-separated)"
    )
    p.add_argument(
        "--no-round-trips", action="store_true", help="skip the instrumented run (--smoke does)"
    )
    p.add_argument("--round-trips", action="store_true", help="count round trips in --smoke too")
    p.add_argument(
        "--database-url",
        default=DEFAULT_SERVER,
        help="a PostgreSQL server; fresh databases are made on it",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Celery's broker")
    p.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file to update")
    p.add_argument("--no-docs", action="store_true", help="print only")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument(
        "--drivers",
        action="store_true",
        help="only compare the drivers: pg8000 with pgfast, pg8000 unpatched, psycopg 3 (bench/drivers.py)",
    )
    args = p.parse_args(argv)

    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = MODES[mode_name]
    changes: dict[str, Any] = {}
    if args.runs:
        changes["runs"] = max(1, args.runs)
    if args.jobs:
        changes["e2e_jobs"] = max(BATCH, args.jobs)
    if args.no_peers:
        changes["peers"] = False
    if changes:
        sizes = Sizes(**{**asdict(sizes), **changes})
    write = not (args.no_docs or args.smoke)
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if args.drivers:
        from bench import drivers

        sizes = drivers.sizes_for(sizes)
        samples = drivers.compare(sizes, database_url=args.database_url or None, log=log)
        block = drivers.table(samples, command=command, sizes=sizes)
        print(block)
        if write:
            drivers.write_docs(args.docs, block)
            log(f"wrote {args.docs}")
        log(f"done in {time.monotonic() - started:.0f}s")
        return 0 if all(s for figures_ in samples.values() for s in figures_.values()) else 1

    env = environment()
    figs: dict[str, Figure]
    peers: list[PeerProcess] = []
    steady: dict[str, list[float]] = {}
    log_path = (
        Path(os.environ.get("TMPDIR", "/tmp")) / f"cloudjobs-bench-{uuid.uuid4().hex[:8]}.log"
    )
    with contextlib.ExitStack() as stack_:
        cj_url = stack_.enter_context(fresh_database(args.database_url or None, prefix=DB_PREFIX))
        floor_db = stack_.enter_context(fresh_database(args.database_url or None, prefix=DB_PREFIX))
        log(f"databases ready; {mode_name}: {sizes}")
        with (
            running_stack(
                cj_url,
                queues_file=QUEUES_FILE,
                workers=sizes.workers,
                extra_env={"LOG_LEVEL": "ERROR"},
            ) as stack,
            floor_server(floor_db, workers=sizes.workers) as (floor_url, floor_proc),
        ):
            sampler = Meter()
            bench = Bench(
                sizes,
                stack=stack,
                floor_url=floor_url,
                floor_pid=floor_proc.pid,
                floor_db=floor_db,
                sampler=sampler,
                log=log,
            )
            try:
                if sizes.peers:
                    for name in [n.strip() for n in args.peers.split(",") if n.strip()]:
                        peer_db = stack_.enter_context(
                            fresh_database(args.database_url or None, prefix=DB_PREFIX)
                        )
                        log(f"starting {name} (log: {log_path})")
                        peer = PeerProcess(
                            name,
                            peer_db if name != "celery" else "postgresql://unused@127.0.0.1/unused",
                            log_path,
                        )
                        if peer.error:
                            log(f"  {name} cannot run: {peer.error}")
                            for mode in ("one", "batch"):
                                if f"peer.{name}.{mode}" in bench.figs:
                                    bench.figs[f"peer.{name}.{mode}"].error = peer.error
                            peer.close()
                            continue
                        peers.append(peer)
                log("warming up")
                bench.warm_up()
                for r in range(sizes.runs):
                    log(f"round {r + 1} of {sizes.runs}")
                    bench.round(peers)
                for key, mb in sampler.peaks.items():
                    if key in bench.figs:
                        bench.figs[key].rss_mb = mb
                for key, costs in sampler.cpu.items():
                    if key in bench.figs:
                        bench.figs[key].cpu = costs
                steady = {
                    "cloudjobs": worker_rss(stack.gunicorn.pid),
                    "floor": worker_rss(floor_proc.pid),
                }
            finally:
                for peer in peers:
                    peer.close()
                sampler.stop()
                bench.close()
            figs = bench.figs
        if not args.no_round_trips and (args.round_trips or not args.smoke):
            log("instrumented run: counting round trips")
            try:
                count_round_trips(figs, sizes, cj_url=cj_url, floor_url=floor_db, log=log)
            except Exception as e:
                log(f"  round-trip count failed: {type(e).__name__}: {e}")
    env["load_after"] = os.getloadavg()
    peer_settings = {f"{p.name} {p.version}": p.settings for p in peers}
    block = report(
        figs,
        env,
        command=command,
        mode=mode_name,
        sizes=sizes,
        peer_settings=peer_settings,
        steady_rss=steady,
    )
    print(block.replace(START, "").replace(END, "").strip())
    if write:
        write_docs(args.docs, block)
        log(f"wrote {args.docs}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "env": env,
                    "mode": mode_name,
                    "figures": {k: asdict(f) for k, f in figs.items()},
                    "steady_rss": steady,
                },
                indent=2,
                default=str,
            )
        )
    log(f"done in {time.monotonic() - started:.0f}s")
    failed = [
        k for k, f in figs.items() if f.error and not (k.startswith("peer.") and not sizes.peers)
    ]
    return 1 if any(not figs[k].samples for k in failed if not k.startswith("peer.")) else 0
