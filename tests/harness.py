"""Test-harness helpers: private Mosquitto and PostgreSQL servers, database helpers, polling.

conftest.py builds its fixtures from these; tests may import them too: `from harness import wait_for, MqttProbe`
(conftest puts tests/ on sys.path).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from psycopg import sql

from oee_stream import bus
from oee_stream.embedded import EmbeddedPostgres, free_port, process_alive, with_database

T = TypeVar("T")

MOSQUITTO_MISSING = (
    "the `mosquitto` binary is required for the MQTT tests but was not found on PATH or in /usr/sbin. "
    "Install it with `apt-get install mosquitto` (the tests start a private broker; the system service is "
    "not needed), or point OEE_TEST_MQTT_URL at a broker you run yourself."
)

# Data directories of private test servers carry the pytest pid, so a later session can stop the servers of
# a session that was killed (SIGKILL runs no cleanup).
PG_DIR_PREFIX = "oee-test-pg-"
MQTT_DIR_PREFIX = "oee-test-mqtt-"
_OWNER_RE = re.compile(rf"(?:{re.escape(PG_DIR_PREFIX)}|{re.escape(MQTT_DIR_PREFIX)})(\d+)-")


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll `predicate` until it returns a truthy value (returned); back off up to 0.25 s; TimeoutError."""
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Restartable(Protocol):
    url: str

    def stop(self) -> None: ...
    def start(self) -> None: ...
    def restart(self) -> None: ...


# ------------------------------------------------------------------------------------------- Mosquitto


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class MosquittoBroker:
    """A private mosquitto on 127.0.0.1:`port` (anonymous, no persistence), restartable on the same port."""

    def __init__(self, binary: str, port: int | None = None, workdir: Path | None = None) -> None:
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port or free_port()
        reap_stale_brokers()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{MQTT_DIR_PREFIX}{os.getpid()}-"))
        self._own_workdir = workdir is None
        self.workdir.chmod(0o755)  # mosquitto drops privileges to user `mosquitto` when started as root
        self.config = self.workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                # Die with pytest even on SIGKILL; only from the main thread (the signal follows the thread).
                preexec_fn=_set_pdeathsig if threading.current_thread() is threading.main_thread() else None,
            )
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {proc.returncode}:\n{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            return port_open(self.host, self.port)

        try:
            wait_for(ready, timeout, what=f"mosquitto on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        # The port is free again once the listener is gone (mosquitto sets SO_REUSEADDR, so start() can rebind).

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.close)


class ExternalServer:
    """A server given by URL in the environment: it cannot be stopped, tests needing that are skipped."""

    def __init__(self, url: str, env_var: str) -> None:
        self.url = url
        self.env_var = env_var

    def _skip(self) -> None:
        pytest.skip(f"needs the private test server to stop/start it; {self.env_var} points at an external one")

    def stop(self) -> None:
        self._skip()

    def start(self) -> None:
        self._skip()

    def restart(self) -> None:
        self._skip()


# ------------------------------------------------------------------------------------------ PostgreSQL


class PgServer:
    """The private embedded PostgreSQL of the test session.

    `url` points at the `postgres` database; stop() is a fast shutdown (clients are disconnected) and start()
    brings the server back on the same socket, so URLs stay valid across an outage.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        reap_stale_test_servers()
        base = data_dir or Path(tempfile.mkdtemp(prefix=f"{PG_DIR_PREFIX}{os.getpid()}-"))
        self.base = base
        self.server = EmbeddedPostgres(base / "data", keep_data=True, durable=False)
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def running(self) -> bool:
        return self.server.running

    def start(self) -> None:
        if not self.server.running:
            self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.base, ignore_errors=True)
        atexit.unregister(self.close)


def postmasters_under(path: Path | str) -> list[psutil.Process]:
    """Postgres server processes whose data directory lies under `path` (for leak checks)."""
    prefix = str(path)
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "-D" in cmd and cmd.index("-D") + 1 < len(cmd) and cmd[cmd.index("-D") + 1].startswith(prefix):
            out.append(p)
    return out


def owner_dead(path: str | Path) -> bool:
    """True for a private server directory (under the temp dir) whose pytest process no longer exists."""
    tmp = Path(tempfile.gettempdir())
    try:
        first = Path(path).relative_to(tmp).parts[0]
    except (ValueError, IndexError):
        return False
    m = _OWNER_RE.match(first)
    return m is not None and not psutil.pid_exists(int(m.group(1)))


def reap_stale_brokers() -> None:
    """Terminate private mosquittos of test sessions that died without cleanup (normally PR_SET_PDEATHSIG
    takes care of that, except for brokers started from a worker thread)."""
    tmp = Path(tempfile.gettempdir())
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 3 and cmd[-2] == "-c" and "mosquitto" in cmd[0] and owner_dead(cmd[-1]):
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                if not wait_gone([proc], 5):
                    proc.kill()
    for d in tmp.glob(f"{MQTT_DIR_PREFIX}*"):
        if owner_dead(d):
            shutil.rmtree(d, ignore_errors=True)


def reap_stale_test_servers() -> None:
    """Stop private PostgreSQL servers left by test sessions that died without cleanup (SIGKILL), delete
    their directories. A session is identified by the pytest pid in the directory name."""
    tmp = Path(tempfile.gettempdir())
    for proc in postmasters_under(tmp / PG_DIR_PREFIX):
        with contextlib.suppress(Exception):
            cmd = proc.cmdline()
            data_dir = Path(cmd[cmd.index("-D") + 1])
            if not owner_dead(data_dir):
                continue
            EmbeddedPostgres(data_dir).stop()
            if process_alive(proc):  # data directory already gone: no pg_ctl, signal it directly
                proc.send_signal(signal.SIGQUIT)
                if not wait_gone([proc], 5):
                    proc.kill()
    for d in tmp.glob(f"{PG_DIR_PREFIX}*"):
        if owner_dead(d):
            shutil.rmtree(d, ignore_errors=True)


def wait_gone(procs: list[psutil.Process], timeout: float) -> bool:
    try:
        wait_for(lambda: not any(process_alive(p) for p in procs), timeout, what="processes to exit")
        return True
    except TimeoutError:
        return False


@contextlib.contextmanager
def temporary_database(maintenance_url: str, prefix: str = "oee_test_") -> Iterator[str]:
    """Create a database with a random name, yield its URL, drop it afterwards (disconnecting clients)."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield with_database(maintenance_url, name)
    finally:
        drop_database(maintenance_url, name)


def drop_database(maintenance_url: str, name: str, timeout: float = 30.0) -> None:
    # The server may be coming back from an outage test: retry the connection briefly.
    def attempt() -> bool:
        try:
            with psycopg.connect(maintenance_url, autocommit=True, connect_timeout=3) as conn:
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            return True
        except psycopg.OperationalError:
            return False

    wait_for(attempt, timeout, interval=0.1, what=f"dropping test database {name}")


# ------------------------------------------------------------------------------------------ MQTT probe


class MqttProbe:
    """A small synchronous paho-mqtt (v2 callbacks, MQTT 3.1.1) client for tests.

    Messages land in `.messages` (a queue of `mqtt.MQTTMessage`); publish/subscribe wait for the broker's
    acknowledgement. With `start_loop=True` (default) paho's thread reconnects after a broker outage.
    """

    def __init__(
        self,
        url: str,
        client_id: str | None = None,
        *,
        will: tuple[str, bytes] | None = None,
        clean_session: bool = True,
    ) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 1883
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._subscriptions: list[tuple[str, int]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if rc.is_failure:
            return
        for topic, qos in self._subscriptions:  # clean session: re-subscribe after a reconnect
            client.subscribe(topic, qos)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        self._connected.clear()
        self._disconnected.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, timeout: float = 10.0, *, start_loop: bool = True) -> MqttProbe:
        self.client.connect(self.host, self.port, keepalive=10)
        if start_loop:
            self.client.loop_start()
            self.wait_connected(timeout)
        else:
            wait_for(lambda: self.client.loop(0.05) == mqtt.MQTT_ERR_SUCCESS and self.connected, timeout,
                     what="MQTT CONNACK")
        return self

    def wait_connected(self, timeout: float = 10.0) -> None:
        if not self._connected.wait(timeout):
            raise TimeoutError(f"not connected to {self.host}:{self.port} within {timeout}s")

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> None:
        acked = threading.Event()
        self.client.on_subscribe = lambda *_a: acked.set()
        self._subscriptions.append((topic, qos))
        rc, _mid = self.client.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or not acked.wait(timeout):
            raise TimeoutError(f"SUBACK for {topic!r} not received (rc={rc})")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)  # raises RuntimeError/ValueError when it cannot be sent
        if not info.is_published():
            raise TimeoutError(f"PUBACK for {topic!r} not received within {timeout}s")

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no MQTT message within {timeout}s") from None

    def expect_nothing(self, within: float = 0.3) -> None:
        try:
            msg = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload!r}")

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (a crash, as far as the broker knows: the will fires)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if sock is not None:
            sock.close()

    def close(self, timeout: float = 2.0) -> None:
        """Clean DISCONNECT (the will does not fire), waiting until paho has actually sent it."""
        was_connected = self.connected
        self._disconnected.clear()
        with contextlib.suppress(Exception):
            self.client.disconnect()
        if was_connected:
            self._disconnected.wait(timeout)
        self.client.loop_stop()

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_counter_values(record: Path) -> dict[tuple[str, str], float]:
    """(machine, signal) → the first good counter value in a bus recording (by source time): the baseline the
    engine counts from, to compare its totals with a simulator ledger."""
    first: dict[tuple[str, str], tuple[float, float]] = {}
    for line in record.read_bytes().splitlines():
        msg = orjson.loads(line)
        if "/_status/" in msg["topic"] or "/_oee/" in msg["topic"] or msg["topic"].endswith("/_deadletter"):
            continue
        _conn, samples = bus.decode_samples(msg["topic"], msg["payload"].encode())
        for s in samples:
            key = (s.machine, s.signal)
            if s.signal in ("total", "reject") and s.quality == "good" and (key not in first or s.ts < first[key][0]):
                first[key] = (s.ts, float(s.value))  # type: ignore[arg-type]
    return {k: v for k, (_, v) in first.items()}
