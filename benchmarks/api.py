"""API and storage benchmark: latency percentiles at a fixed request rate, and sample rows/s written.

    .venv/bin/python benchmarks/api.py                  # 500 req/s for 10 s, ~40 s in all
    .venv/bin/python benchmarks/api.py --rate 1000 --seconds 30 --machines 1000

1. A fresh database with a random name on OEE_BENCH_DATABASE_URL's server (dropped at the end), schema
   from `oee_stream.storage.migrations.migrate`, seeded with the engine's results for a synthetic plant.
2. `StorageWriter.write_samples` throughput: rows/s until `flush()` returns (target >= 50 000 rows/s).
3. The app (`create_app`) served by uvicorn in a subprocess; a writer subprocess keeps ingesting samples
   (`--ingest-rate` samples/s) while this process sends `GET /api/v1/machines/{id}/oee?window=15m` on an
   open-loop schedule (request i is due at t0 + i/rate, whatever happened to earlier ones) over
   64 keep-alive connections;
   latency is measured from the due time, so queueing behind a slow request counts (target p99 < 10 ms).
   The API runs standalone, as a split-out API would: its live cache refreshes from the database every
   second (`oee-stream run` feeds the cache from the writer instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from benchmarks.connectors import cpu_seconds, free_port, spawn_child, stop, wait_port  # noqa: E402

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"


def create_database(admin: str) -> tuple[str, str] | None:
    """A database with a random name on `admin`'s server: (name, URL); None, said why, when the server does not
    answer. Drop it with `drop_database`."""
    import psycopg

    from oee_stream.embedded import with_database

    name = f"oee_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as c:
            c.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL at {admin} is unreachable, nothing to measure: {exc}")
        return None
    return name, with_database(admin, name)


def drop_database(admin: str, name: str) -> None:
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plant_and_engine(n_machines: int) -> tuple[Any, Any, float]:
    from benchmarks import engine as be

    from oee_stream.engine.core import Engine

    plant = be.make_plant(n_machines)
    now = time.time()
    b = be.make_samples(n_machines, max(200 * n_machines, 20_000), now=now, cycle_times=be.cycle_times_of(plant))
    e = Engine(plant)
    e.ingest_arrays(b.m, b.s, b.t, b.v, b.q, now=now)
    return plant, e, now


def make_samples(n: int, machines: list[str], t0: float) -> list[Any]:
    from oee_stream.bus import Sample

    sig = ("state", "total", "reject")
    return [Sample(machines[i % len(machines)], sig[i % 3], t0 + i * 1e-3, float(i)) for i in range(n)]


async def seed(url: str, n_machines: int) -> None:
    from oee_stream.storage.writer import StorageWriter

    _plant, e, now = plant_and_engine(n_machines)
    async with StorageWriter(url) as w:
        await w.write_results(e.results(now))
        await w.flush(60)


async def writer_throughput(url: str, n_rows: int, batch: int, machines: list[str]) -> dict[str, float]:
    from oee_stream.storage.writer import StorageWriter

    samples = make_samples(n_rows, machines, time.time() - 3600)
    async with StorageWriter(url, batch_size=batch, max_buffered_rows=max(n_rows, 200_000)) as w:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, n_rows, batch):
            await w.write_samples(samples[i:i + batch])
        await w.flush(300)
        dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {"rows": w.written_rows, "seconds": dt, "rate": w.written_rows / dt, "cpu": cpu}


# ------------------------------------------------------------------------------------------ child roles


def serve(url: str, port: int, n_machines: int) -> None:
    import uvicorn
    from benchmarks import engine as be

    from oee_stream.api.app import ApiSettings, create_app

    # Standalone API (no engine in this process): the live cache is refreshed from the database every second.
    app = create_app(ApiSettings(database_url=url, plant=be.make_plant(n_machines)))
    # The standard asyncio loop, as `oee-stream run` serves the API.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="asyncio")


async def ingest_forever(url: str, rate: float, machines: list[str]) -> None:
    from oee_stream.storage.writer import StorageWriter

    async with StorageWriter(url) as w:
        tick, k = 0.1, 0
        per_tick = max(1, int(rate * tick))
        nxt = time.monotonic()
        while True:
            await w.write_samples(make_samples(per_tick, machines, time.time() + k * 1e-6))
            k += 1
            nxt += tick
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))


# ------------------------------------------------------------------------------------------ load


async def open_loop(port: int, paths: list[str], rate: float, seconds: float, key: str,
                    connections: int = 64) -> dict[str, Any]:
    """Open-loop load: request i is due at t0 + i/rate and goes to the next free keep-alive connection
    (a minimal HTTP/1.1 client on asyncio streams, so the load generator is not the bottleneck)."""
    n = int(rate * seconds)
    lat: list[float] = []
    status: dict[int, int] = {}
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    auth = f"Authorization: Bearer {key}\r\n"

    async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode())
        line = await reader.readline()
        code = int(line.split()[1])
        length = 0
        while (h := await reader.readline()) not in (b"\r\n", b""):
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        await reader.readexactly(length)
        return code

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await request(reader, writer, paths[0])  # warm
            while (item := await queue.get()) is not None:
                i, due = item
                try:
                    code = await request(reader, writer, paths[i % len(paths)])
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    code = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                lat.append(time.perf_counter() - due)
                status[code] = status.get(code, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(0.5)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3

    return {"n": n, "wall": wall, "achieved": len(lat) / wall, "p50": pct(0.50), "p95": pct(0.95),
            "p99": pct(0.99), "max": lat[-1] * 1e3, "status": status, "client_cpu": cpu}


def run_client(coro: Any) -> Any:
    """The load generator is the measuring instrument: on uvloop when installed (less of its own jitter in
    the latencies), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return spawn_child(__file__, *args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        role, rest = argv[1], argv[2:]
        if role == "serve":
            serve(rest[0], int(rest[1]), int(rest[2]))
        elif role == "ingest":
            from benchmarks import engine as be
            plant = be.make_plant(int(rest[2]))
            asyncio.run(ingest_forever(rest[0], float(rest[1]), [m.id for m in plant.machines]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second (open loop)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--ingest-rate", type=float, default=5000.0, help="samples/s written during the load")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections of the load generator")
    ap.add_argument("--writer-rows", type=int, default=200_000)
    ap.add_argument("--writer-batch", type=int, default=5_000)
    args = ap.parse_args(argv)

    import psycopg

    from oee_stream.storage.migrations import migrate

    admin = os.environ.get("OEE_BENCH_DATABASE_URL", DEFAULT_DB)
    created = create_database(admin)
    if created is None:
        return 1
    name, url = created
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t0 = time.perf_counter()
        migrate(url)
        t_mig = time.perf_counter() - t0
        from benchmarks import engine as be
        machines = [m.id for m in be.make_plant(args.machines).machines]
        asyncio.run(seed(url, args.machines))
        print(f"oee-stream API benchmark: database {name} (migrated in {t_mig:.2f}s), {args.machines} machines, "
              f"{os.cpu_count()} cpus")
        wt = asyncio.run(writer_throughput(url, args.writer_rows, args.writer_batch, machines))

        from oee_stream.api.auth import create_api_key
        key = create_api_key(url, "bench", "viewer")
        port = free_port()
        server = spawn("serve", url, str(port), str(args.machines))
        procs.append(server)
        wait_port(port, 60)
        ingest = spawn("ingest", url, str(args.ingest_rate), str(args.machines))
        procs.append(ingest)
        time.sleep(1.0)
        paths = [f"/api/v1/machines/{m}/oee?window=15m" for m in machines]
        s_cpu0, i_cpu0 = cpu_seconds(server.pid), cpu_seconds(ingest.pid)
        res = run_client(open_loop(port, paths, args.rate, args.seconds, key, args.connections))
        s_cpu, i_cpu = cpu_seconds(server.pid) - s_cpu0, cpu_seconds(ingest.pid) - i_cpu0
        with psycopg.connect(url) as c:
            ingested = c.execute("SELECT count(*) FROM samples").fetchone()[0] - wt["rows"]  # type: ignore[index]
    finally:
        errs = [stop(p) for p in procs]
        for e in errs:
            if "Traceback" in e:
                print(f"   child stderr tail: {e.strip()[-400:]}")
        drop_database(admin, name)

    ok_codes = res["status"].get(200, 0)
    print(f"\n{'measure':<58} {'value':>12}  target")
    print(f"{'StorageWriter.write_samples rows/s (' + str(wt['rows']) + ' rows, batch ' + str(args.writer_batch) + ')':<58}"
          f" {wt['rate']:>12.0f}  >= 50 000: {'MET' if wt['rate'] >= 50_000 else 'NOT MET'}")
    print(f"{'  writer client CPU per 1000 rows (ms)':<58} {wt['cpu'] / wt['rows'] * 1e6:>12.2f}")
    print(f"{'GET /machines/{id}/oee?window=15m offered req/s':<58} {args.rate:>12.0f}")
    print(f"{'  achieved req/s (open loop, ' + str(res['n']) + ' requests)':<58} {res['achieved']:>12.0f}")
    for q in ("p50", "p95", "p99", "max"):
        tgt = f"< 10 ms: {'MET' if res['p99'] < 10 else 'NOT MET'}" if q == "p99" else ""
        print(f"{'  latency ' + q + ' (ms, from the due time)':<58} {res[q]:>12.2f}  {tgt}")
    print(f"{'  responses 200 / all':<58} {ok_codes:>6}/{res['n']:<5}  {res['status']}")
    print(f"{'  server CPU % (uvicorn, 1 process)':<58} {s_cpu / res['wall'] * 100:>11.0f}%")
    print(f"{'  load generator CPU % (asyncio client, this process)':<58} {res['client_cpu'] / res['wall'] * 100:>11.0f}%")
    print(f"{'  samples ingested meanwhile (rows/s, writer subprocess)':<58} {ingested / res['wall']:>12.0f}"
          f"  (asked {args.ingest_rate:.0f}/s, writer CPU {i_cpu / res['wall'] * 100:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
