"""CPU per request of each hot path, through Flask's test client: load-independent-ish figures.

    python -m bench.request_cpu [--requests 2000] [--rounds 3] [--only create,get,run,batch]
                                [--profile DIR]

Wall-clock throughput on a shared machine moves with whatever else runs; the CPU time this
process spends per request moves much less. Each path is driven through Flask's test client
(no HTTP server, no loader) against a fresh migrated database on the real PostgreSQL and the
Cloud Tasks emulator in a process of its own (its CPU is not counted; the client's gRPC
threads are). The floor app (bench/floor_app.py) is measured the same way, so each figure
has its floor beside it. `--profile DIR` also writes a cProfile of one round of each path.

Figures: `time.process_time()` over N requests, per request, median of the rounds
(batchCreate: per job, 500 jobs a request). Instructions, which no other load moves:

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=cg.out \
        python -m bench.request_cpu --callgrind --rounds 1 --requests 200 --only create,get

writes one dump per path (cg.out.1, cg.out.2, …; `totals:` is the count) for the
requests alone.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from api import create_app
from api.cloud.queues import Queues
from api.cloud.tasks import make_client, queue_path, sync_queues
from api.config import Config
from bench.stack import DEFAULT_SERVER, SERVICE_ACCOUNT, fresh_database
from bench.suite import BATCH, ECHO, QUEUES_FILE

PATHS = ("floor.insert", "create", "floor.select", "get", "floor.update", "run", "batch")


@contextmanager
def emulator_process(key_file: Path) -> Iterator[tuple[str, str]]:
    """`python -m emulator` on free ports; yields its gRPC address and certs URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", "--http-port", "0",
         "--key-file", str(key_file), "--log-level", "ERROR"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        address = certs = ""
        for line in proc.stdout:
            if m := re.search(r"listening on (\S+)", line):
                address = m.group(1)
            if m := re.search(r"OIDC certs: (\S+)", line):
                certs = m.group(1)
            if address and certs:
                break
        yield address, certs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def per_request(fn: Callable[[int], None], n: int, *, callgrind: bool = False) -> float:
    """CPU seconds of this process per call of fn(i), over n calls.

    With `callgrind` (the process runs under `valgrind --tool=callgrind --instr-atstart=no`),
    instructions are counted for the calls alone and dumped when they end."""
    if callgrind:
        _callgrind_control("--instr=on")
    started = time.process_time()
    for i in range(n):
        fn(i)
    cpu = time.process_time() - started
    if callgrind:
        _callgrind_control("--dump")
        _callgrind_control("--instr=off")
    return cpu / n


def _callgrind_control(arg: str) -> None:
    subprocess.run(["callgrind_control", arg, str(os.getpid())], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    """Measure each path; print one line per path."""
    p = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default=",".join(PATHS))
    p.add_argument("--profile", type=Path, help="write a cProfile of one round of each path here")
    p.add_argument("--callgrind", action="store_true",
                   help="under valgrind --tool=callgrind --instr-atstart=no: count instructions of the "
                        "first round of each path (a dump each, in order)")
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    only = [x for x in args.only.split(",") if x]
    n = args.requests

    from emulator.oidc import SigningKey, TokenIssuer

    key_dir = Path(tempfile.mkdtemp(prefix="cloudjobs-cpu-"))
    key = SigningKey.generate()
    key_file = key_dir / "key.pem"
    key_file.write_text(key.private_pem)
    with (
        fresh_database(args.database_url, prefix="cloudjobs_cpu_") as url,
        emulator_process(key_file) as (address, certs_url),
    ):
        env = {
            "DATABASE_URL": url,
            "GOOGLE_CLOUD_PROJECT": "bench-project",
            "CLOUD_TASKS_EMULATOR_HOST": address,
            "HANDLER_BASE_URL": "http://127.0.0.1:9",
            "HANDLER_AUTH": "oidc",
            "AUTH": "none",
            "DEMO_JOB_TYPES": "true",  # echo, the no-op job of every figure
            "TASKS_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
            "OIDC_CERTS_URL": certs_url,
            "QUEUES_FILE": str(QUEUES_FILE),
        }
        config = Config.from_env(env)
        tasks = make_client(config)
        sync_queues(tasks, config, list(Queues.load(QUEUES_FILE).specs.values()))
        tasks.pause_queue(name=queue_path(config, "default"))  # tasks are kept, never dispatched
        app = create_app(config)
        client = app.test_client()
        from bench.floor_app import create_app as floor_app

        floor = floor_app(config).test_client()
        token = TokenIssuer(SigningKey.from_file(key_file)).id_token(SERVICE_ACCOUNT, config.audience)
        engine = app.extensions["cloudjobs"].engine

        def queued_ids(count: int) -> list[str]:
            ids: list[str] = []
            body = json.dumps({"jobs": [{"type": "echo", "payload": {}}] * BATCH})
            while len(ids) < count:
                r = client.post("/v1/jobs:batchCreate", data=body, content_type="application/json")
                assert r.status_code == 202, r.get_data()
                ids += [j["id"] for j in r.get_json()["jobs"]]
            return ids[:count]

        def floor_ids(count: int) -> list[str]:
            with engine.connect() as conn:
                return [str(r[0]) for r in conn.execute(sa.text("SELECT id FROM jobs LIMIT :n"), {"n": count})]

        def check(resp: Any, *ok: int) -> None:
            if resp.status_code not in ok:
                raise RuntimeError(f"{resp.status_code}: {resp.get_data(as_text=True)[:300]}")

        run_headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": "Google-Cloud-Tasks",
            "X-CloudTasks-QueueName": "default",
            "X-CloudTasks-TaskRetryCount": "0",
            "X-CloudTasks-TaskExecutionCount": "0",
        }
        batch_body = json.dumps({"jobs": [{"type": "echo", "payload": {}}] * BATCH})
        batches = max(4, n // 100)

        def setup(path: str) -> tuple[Callable[[int], None], int, int]:
            """The request of path `path`, how many to make, and jobs per request."""
            if path == "floor.insert":
                return (lambda i: check(floor.post("/insert", data=ECHO, content_type="application/json"), 202)), n, 1
            if path == "create":
                return (lambda i: check(client.post("/v1/jobs", data=ECHO, content_type="application/json"), 202)), n, 1
            if path == "floor.select":
                ids = floor_ids(200)
                return (lambda i: check(floor.get(f"/select/{ids[i % len(ids)]}"), 200)), n, 1
            if path == "get":
                ids = floor_ids(200)
                return (lambda i: check(client.get(f"/v1/jobs/{ids[i % len(ids)]}"), 200)), n, 1
            if path == "floor.update":
                ids = floor_ids(200)
                bodies = [json.dumps({"job_id": j}) for j in ids]
                return (lambda i: check(floor.post(
                    "/update", data=bodies[i % len(bodies)], content_type="application/json"), 200)), n, 1
            if path == "run":
                ids = queued_ids(n)
                bodies = [json.dumps({"job_id": j}) for j in ids]
                return (
                    lambda i: check(client.post(
                        "/handlers/run", data=bodies[i], content_type="application/json",
                        headers={**run_headers, "X-CloudTasks-TaskName": f"job-{uuid.UUID(ids[i]).hex}-0"},
                    ), 200)
                ), n, 1
            if path == "batch":
                return (lambda i: check(client.post(
                    "/v1/jobs:batchCreate", data=batch_body, content_type="application/json"), 202)), batches, BATCH
            raise ValueError(path)

        # Warm up: every path once, so first-use costs (connections, clients, certs) are out.
        queued_ids(BATCH)
        for path in only:
            fn, _, _ = setup(path)
            for i in range(20 if path != "batch" else 2):
                fn(i)
        print(f"{n} requests a round (batch: {batches} of {BATCH}), median of {args.rounds} rounds; "
              f"CPU of this process (time.process_time)")
        for path in only:
            figures = []
            for r in range(args.rounds):
                fn, count, jobs = setup(path)
                figures.append(per_request(fn, count, callgrind=args.callgrind and r == 0) / jobs)
            if args.profile:  # a round of its own: the profiler's overhead stays out of the figures
                args.profile.mkdir(parents=True, exist_ok=True)
                fn, count, _ = setup(path)
                prof = cProfile.Profile(time.process_time)  # CPU, not waiting
                prof.runcall(per_request, fn, count)
                prof.dump_stats(str(args.profile / f"{path}.prof"))
            unit = "job" if path == "batch" else "request"
            print(f"  {path:13} {1e6 * statistics.median(figures):8.1f} µs/{unit}   "
                  f"(rounds: {', '.join(f'{1e6 * f:.0f}' for f in figures)})", flush=True)
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
