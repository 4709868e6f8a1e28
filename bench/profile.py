"""Where a figure's CPU time goes: py-spy on the gunicorn workers while the loader runs.

    python -m bench.profile create|get|run|batch|e2e|e2e-batch|e2e-shared|floor.insert|floor.update|ceiling
                            [--seconds 10] [--top 25] [--emulator] [--raw DIR]

Brings up the same stack as `python -m bench` (fresh database, emulator, gunicorn with
`gunicorn.conf.py`, and the floor app), warms it, then samples every worker of the server
under test with py-spy (on-CPU samples only) while the loader drives the figure. Prints
the CPU time by package (the sampled leaf frame's package), and the functions holding the
most CPU time, inclusive and self. `--emulator` samples this process too (the emulator's
threads), for end-to-end runs. py-spy comes from the `bench` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.stack import DEFAULT_SERVER, fresh_database, running_stack
from bench.suite import (
    BATCH,
    DB_PREFIX,
    ECHO,
    LOAD_CONCURRENCY,
    MODES,
    QUEUES_FILE,
    SUBMIT_CONCURRENCY,
    WORKERS,
    Bench,
    Meter,
    _post,
    exit_on_sigterm,
    floor_server,
    run_loader,
)

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def package_of(path: str) -> str:
    """A file's package: the top-level name under site-packages, ours, or the stdlib module."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for ours in ("api", "handlers", "bench", "emulator"):
        if f"/{ours}/" in path:
            return ours
    name = Path(path).name.removesuffix(".py")
    parent = Path(path).parent.name
    if parent and not parent.startswith("python3"):
        name = f"{parent}"
    return f"stdlib:{name}" if path.startswith("/") or "lib/python" in path else path


def summarise(raw_files: list[Path], top: int) -> str:
    """Samples by package (self), and the top functions inclusive and self."""
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for f in raw_files:
        for line in f.read_text().splitlines():
            stack, _, count_s = line.rpartition(" ")
            if not stack or not count_s.isdigit():
                continue
            count = int(count_s)
            total += count
            frames = stack.split(";")
            names = []
            for fr in frames:
                m = FRAME.match(fr.strip())
                if m:
                    short = Path(m["file"]).name
                    names.append((f"{m['func']} ({_where(m['file'])}/{short})", m["file"]))
                else:
                    names.append((fr.strip(), ""))
            leaf, leaf_file = names[-1]
            by_package[package_of(leaf_file)] += count
            self_time[leaf] += count
            for name in {n for n, _ in names}:
                inclusive[name] += count
    if not total:
        return "no samples"
    out = [f"{total} on-CPU samples", "", "CPU by package (self):"]
    out += [f"  {100 * n / total:5.1f}%  {pkg}" for pkg, n in by_package.most_common(top)]
    out += ["", "Functions, inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out += ["", "Functions, self:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self_time.most_common(top)]
    return "\n".join(out)


def _where(path: str) -> str:
    pkg = package_of(path)
    return pkg.removeprefix("stdlib:")


def record(
    pids: list[int], seconds: float, out_dir: Path, *, gil: bool = False
) -> list[subprocess.Popen[bytes]]:
    """Start py-spy on each pid for `seconds`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs = []
    for pid in pids:
        procs.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "-p",
                    str(pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "-o",
                    str(out_dir / f"{pid}.txt"),
                    "--nonblocking",
                    *(["--gil"] if gil else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def main(argv: list[str] | None = None) -> int:
    """Profile one figure."""
    exit_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument(
        "figure",
        choices=[
            "create",
            "get",
            "run",
            "batch",
            "e2e",
            "e2e-batch",
            "e2e-shared",
            "floor.insert",
            "floor.select",
            "floor.update",
            "ceiling",
        ],
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--emulator", action="store_true", help="also sample this process (the emulator)"
    )
    p.add_argument("--raw", type=Path, help="keep py-spy's raw stacks in this folder")
    p.add_argument("--gil", action="store_true", help="only samples of threads holding the GIL")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for both gunicorns (to try a setting)",
    )
    p.add_argument("--database-url", default=DEFAULT_SERVER)
    args = p.parse_args(argv)
    seconds = max(2.0, min(args.seconds, 60.0))
    sizes = MODES["quick"]
    out_dir = args.raw or Path(tempfile.mkdtemp(prefix="cloudjobs-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(e.split("=", 1) for e in args.env)
    os.environ.update(extra)  # the floor's gunicorn inherits this process's environment
    with (
        fresh_database(args.database_url or None, prefix=DB_PREFIX) as cj_url,
        fresh_database(args.database_url or None, prefix=DB_PREFIX) as floor_db,
        running_stack(
            cj_url,
            queues_file=QUEUES_FILE,
            workers=WORKERS,
            extra_env={"LOG_LEVEL": "ERROR", **extra},
        ) as stack,
        floor_server(floor_db) as (floor_url, floor_proc),
    ):
        sampler = Meter()
        b = Bench(
            sizes,
            stack=stack,
            floor_url=floor_url,
            floor_pid=floor_proc.pid,
            floor_db=floor_db,
            sampler=sampler,
            log=lambda m: print(m, file=sys.stderr),
        )
        try:
            b.warm_up()
            floor = args.figure.startswith("floor") or args.figure == "ceiling"
            master = floor_proc.pid if floor else stack.gunicorn.pid
            pids = [c.pid for c in psutil.Process(master).children()]
            if args.emulator:
                pids.append(os.getpid())
            if args.figure in ("create", "batch", "run", "get"):
                b.pause()
                if args.figure in ("run", "get"):
                    b.batch(max(4, int(seconds * 2)))  # jobs to run or read
            spies = record(pids, seconds, out_dir, gil=args.gil)
            time.sleep(0.3)
            started = time.monotonic()
            if args.figure == "create":
                result = run_loader(stack.url, [_post("/v1/jobs", ECHO)], duration_s=seconds)
            elif args.figure == "batch":
                body = json.dumps({"jobs": [{"type": "echo", "payload": {}}] * BATCH})
                result = run_loader(
                    stack.url,
                    [_post("/v1/jobs:batchCreate", body)],
                    concurrency=2,
                    duration_s=seconds,
                )
            elif args.figure == "get":
                result = run_loader(
                    stack.url, [{"path": f"/v1/jobs/{i}"} for i in b.cj_ids()], duration_s=seconds
                )
            elif args.figure == "run":
                result = run_loader(
                    stack.url, b.run_requests(50_000), cycle=False, duration_s=seconds
                )
            elif args.figure in ("e2e", "e2e-batch", "e2e-shared"):
                mode = {"e2e": "one", "e2e-batch": "batch", "e2e-shared": "shared"}[args.figure]
                n = int(seconds * (2000 if mode == "shared" else 150))
                rate = b.e2e(mode, n, key="profile")
                result = {"rate": rate, "jobs": n}
            elif args.figure == "ceiling":
                result = {"rate": b.ceiling(int(seconds * 200))}
            else:
                kind = args.figure.split(".")[1]
                ids = b.floor_ids()
                reqs = {
                    "insert": [_post("/insert", ECHO)],
                    "select": [{"path": f"/select/{i}"} for i in ids],
                    "update": [_post("/update", json.dumps({"job_id": i})) for i in ids],
                }[kind]
                result = run_loader(floor_url, reqs, duration_s=seconds)
            elapsed = time.monotonic() - started
            for s in spies:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    s.wait(seconds + 30)
            if args.figure in ("create", "batch", "run", "get"):
                b.purge_and_resume()
        finally:
            b.close()
            sampler.stop()
    print(
        f"{args.figure}: {result.get('rate', 0):,.0f}/s over {elapsed:.1f}s "
        f"(loader: {LOAD_CONCURRENCY} in flight; submissions {SUBMIT_CONCURRENCY}); "
        f"workers sampled: {len(pids)}"
    )
    print(summarise(sorted(out_dir.glob("*.txt")), args.top))
    if args.raw is None:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
