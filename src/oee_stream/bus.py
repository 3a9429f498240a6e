"""The MQTT bus contract (docs/bus.md) and a small asyncio-friendly paho-mqtt client.

Topics (version 1):
    oee/v1/{site}/{machine}/{signal}            samples from connectors (QoS 1)
    oee/v1/{site}/{machine}/_batch              samples of several signals of one machine (QoS 1, opt-in)
    oee/v1/{site}/_status/{connector}           connector online/offline, retained, set as MQTT last will
    oee/v1/{site}/{machine}/_oee/{window}       KPI results from the engine (retained)
    oee/v1/{site}/_deadletter                   rejected telemetry with its reason
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

BUS_VERSION = 1
PREFIX = f"oee/v{BUS_VERSION}"

Quality = Literal["good", "uncertain", "bad"]
QUALITIES: tuple[Quality, ...] = ("good", "uncertain", "bad")

log = logging.getLogger(__name__)
# The broker connection's events, for the journal of an edge box or the plant server.
broker_log = structlog.get_logger("oee.bus")

# Signals the engine understands; any other signal name is informational (stored, not used for KPIs).
KPI_SIGNALS = ("state", "run", "total", "reject", "input", "product", "startup_reject")


class PayloadError(ValueError):
    """A message that does not follow the bus contract; the reason goes to the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class Sample:
    machine: str
    signal: str
    ts: float  # source timestamp, UTC epoch seconds
    value: float | str | bool | None
    quality: Quality = "good"


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    connector: str
    state: Literal["online", "offline"]
    ts: float
    machines: tuple[str, ...] = ()
    session: str = ""  # one id per connector process: a new one after a restart tells the engine data was lost


# One session id per process, so the engine can tell a broker outage (same session, spool replays) from
# a connector restart (new session, the gap is unknown).
PROCESS_SESSION = uuid.uuid4().hex[:12]


def sample_topic(site: str, machine: str, signal: str) -> str:
    return f"{PREFIX}/{site}/{machine}/{signal}"


BATCH = "_batch"  # the last level of a machine's multi-signal sample topic


def batch_topic(site: str, machine: str) -> str:
    return f"{PREFIX}/{site}/{machine}/{BATCH}"


def status_topic(site: str, connector: str) -> str:
    return f"{PREFIX}/{site}/_status/{connector}"


def result_topic(site: str, entity: str, window: str, kind: str = "machine") -> str:
    """Machines publish under their own topic; lines, areas and the site under `_line`, `_area`, `_site`,
    so an id shared by a machine and a line can never collide."""
    if kind == "machine":
        return f"{PREFIX}/{site}/{entity}/_oee/{window}"
    return f"{PREFIX}/{site}/_{kind}/{entity}/_oee/{window}"


def deadletter_topic(site: str) -> str:
    return f"{PREFIX}/{site}/_deadletter"


def encode_samples(connector: str, samples: Sequence[Sample]) -> bytes:
    """One message carries samples of one machine and signal (the topic says which)."""
    return orjson.dumps(
        {
            "v": BUS_VERSION,
            "connector": connector,
            "samples": [{"ts": s.ts, "value": s.value, "q": s.quality} for s in samples],
        }
    )


def encode_batch(connector: str, samples: Sequence[Sample]) -> bytes:
    """One message carries samples of several signals of one machine (topic `batch_topic`)."""
    signals: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        signals.setdefault(s.signal, []).append({"ts": s.ts, "value": s.value, "q": s.quality})
    return orjson.dumps({"v": BUS_VERSION, "connector": connector, "signals": signals})


def encode_status(status: ConnectorStatus) -> bytes:
    return orjson.dumps(
        {"v": BUS_VERSION, "connector": status.connector, "state": status.state, "ts": status.ts,
         "machines": list(status.machines), "session": status.session}
    )


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """Return (site, machine, signal) for a sample topic, None for any other topic of ours."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "oee" or parts[1] != f"v{BUS_VERSION}":
        return None
    if parts[3].startswith("_") or parts[4].startswith("_"):
        return None
    return parts[2], parts[3], parts[4]


def decode_samples(topic: str, payload: bytes) -> tuple[str, list[Sample]]:
    """Decode a sample message (per-signal or `_batch` topic); raise PayloadError naming what is wrong."""
    parts = topic.split("/")
    batch = (len(parts) == 5 and parts[0] == "oee" and parts[1] == f"v{BUS_VERSION}" and parts[4] == BATCH
             and not parts[3].startswith("_"))
    parsed = parse_topic(topic)
    if parsed is None and not batch:
        raise PayloadError(f"topic {topic!r} is not oee/v{BUS_VERSION}/<site>/<machine>/<signal>")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise PayloadError("payload must be a JSON object")
    if body.get("v") != BUS_VERSION:
        raise PayloadError(f"payload field 'v' must be {BUS_VERSION}, got {body.get('v')!r}")
    out: list[Sample] = []
    if batch:
        machine = parts[3]
        signals = body.get("signals")
        if not isinstance(signals, dict) or not signals:
            raise PayloadError("payload field 'signals' must be a non-empty object")
        for signal, raw in signals.items():
            if not signal or signal.startswith("_") or any(c in signal for c in "/+#"):
                raise PayloadError(f"signals key {signal!r} is not a signal name")
            out += _decode_list(raw, machine, signal, f"signals.{signal}")
    else:
        assert parsed is not None
        _site, machine, signal = parsed
        out = _decode_list(body.get("samples"), machine, signal, "samples")
    connector = body.get("connector")
    return (connector if isinstance(connector, str) else ""), out


def _decode_list(raw: Any, machine: str, signal: str, where: str) -> list[Sample]:
    if not isinstance(raw, list) or not raw:
        raise PayloadError(f"payload field '{where}' must be a non-empty list")
    out: list[Sample] = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict):
            raise PayloadError(f"{where}[{i}] must be an object")
        ts = s.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise PayloadError(f"{where}[{i}].ts must be epoch seconds (a finite number), got {ts!r}")
        q = s.get("q", "good")
        if q not in QUALITIES:
            raise PayloadError(f"{where}[{i}].q must be one of {list(QUALITIES)}, got {q!r}")
        value = s.get("value")
        if isinstance(value, float) and not math.isfinite(value):
            raise PayloadError(f"{where}[{i}].value must be finite, got {value!r}")
        if value is not None and not isinstance(value, int | float | str | bool):
            raise PayloadError(f"{where}[{i}].value must be a number, string or bool, got {type(value).__name__}")
        if value is None and q == "good":
            raise PayloadError(f"{where}[{i}].value is null with quality 'good'")
        out.append(Sample(machine, signal, float(ts), value, q))
    return out


def decode_status(payload: bytes) -> ConnectorStatus:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"status payload is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("state") not in ("online", "offline"):
        raise PayloadError("status payload needs 'state': 'online' | 'offline'")
    ts = body.get("ts")
    return ConnectorStatus(
        connector=str(body.get("connector", "")),
        state=body["state"],
        ts=float(ts) if isinstance(ts, int | float) else time.time(),
        machines=tuple(str(m) for m in body.get("machines", []) or []),
        session=str(body.get("session", "")),
    )


# --------------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class MqttSettings:
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_id: str | None = None
    keepalive_s: int = 30

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlparse(self.url)
        return u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme in ("mqtts", "ssl") or self.ca_file is not None


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class _Will:
    topic: str
    payload: bytes


LOOP_STOP_TIMEOUT_S = 6.0  # paho's connect timeout (5 s) and one slice of its reconnect wait (1 s)
# paho retries every 1-10 s; while the broker stays away that is logged once, then this often.
RECONNECT_LOG_EVERY_S = 60.0

# MQTT 3.1.1 CONNACK refusals, as paho names them, in an operator's words.
_REFUSALS = {
    "Not authorized": "not authorised (user name or password wrong, or the user may not connect)",
    "Bad user name or password": "bad user name or password",
    "Server unavailable": "the broker is unavailable",
    "Client identifier not valid": "client id refused by the broker",
    "Unsupported protocol version": "the broker does not speak MQTT 3.1.1",
}


class _Client(mqtt.Client):
    """paho's client, keeping why the last connection attempt failed: its `on_connect_fail` is not told."""

    connect_error: OSError | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.connect_error = exc
            raise


def _os_error_words(exc: OSError | None) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if exc is None:
        return "cannot connect"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _disconnect_words(flags: Any, rc: Any) -> str:
    name = str(rc)
    if getattr(flags, "is_disconnect_packet_from_server", False):
        return f"closed by the broker: {name.lower()}"
    if name == "Keep alive timeout":
        return "connection lost (no answer within the keep-alive)"
    if name in ("Unspecified error", "Success", "Normal disconnection"):
        return "connection lost"
    return name.lower()


@dataclass
class BusClient:
    """paho-mqtt v2 in its own network thread, bridged to asyncio.

    Publishing is QoS 1 and `publish_and_wait` returns only when the broker acknowledged (PUBACK), which
    is what store-and-forward needs before deleting anything from its spool. Incoming messages land in a
    bounded asyncio queue; when it is full, paho's thread blocks, which back-pressures the broker.
    """

    settings: MqttSettings
    subscriptions: Sequence[str] = ()
    will: _Will | None = None
    queue_size: int = 10_000
    on_connect_messages: list[Message] = field(default_factory=list)
    # A named session (the client id) that the broker keeps while the client is away: its subscriptions
    # stay, and QoS 1 messages for them are queued and delivered on the next connect (clean_session off).
    session: str | None = None
    dropped: int = 0  # messages given up after waiting 60 s for room in the queue (logged)
    _client: mqtt.Client = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _queue: asyncio.Queue[Message] = field(init=False)
    _connected: asyncio.Event = field(init=False)
    _thread_connected: threading.Event = field(init=False)
    _closing: threading.Event = field(init=False)

    def __post_init__(self) -> None:
        cid = self.session or self.settings.client_id or f"oee-stream-{uuid.uuid4().hex[:10]}"
        self._client_id = cid
        self._client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cid,
            clean_session=self.session is None,
            protocol=mqtt.MQTTv311,
        )
        if self.settings.username:
            self._client.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.tls:
            ctx = ssl.create_default_context(cafile=self.settings.ca_file)
            if self.settings.cert_file:
                ctx.load_cert_chain(self.settings.cert_file, self.settings.key_file)
            self._client.tls_set_context(ctx)
        if self.will is not None:
            self._client.will_set(self.will.topic, self.will.payload, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.max_queued_messages_set(0)
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._thread_connected = threading.Event()
        self._closing = threading.Event()
        self._reset_outage()

    # what the connection-state log lines need; only paho's thread touches these
    def _reset_outage(self) -> None:
        self._down_since: float | None = None  # monotonic time of the first failure or of the loss
        self._failures = 0  # connection attempts failed since then
        self._last_reason: str | None = None
        self._next_report = 0.0
        self._refused = False  # the broker answered the last CONNECT with a refusal

    def _where(self) -> dict[str, Any]:
        return {"broker": f"{self.settings.host}:{self.settings.port}", "client": self._client_id}

    def _failed(self, reason: str) -> None:
        """One failed connection attempt: logged at once when the reason is new, then every
        RECONNECT_LOG_EVERY_S while the broker stays away (paho retries every 1-10 s)."""
        if self._closing.is_set():
            return
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._failures += 1
        if reason != self._last_reason:
            broker_log.warning("mqtt_connect_failed", **self._where(), reason=reason, retrying="every 1-10 s")
        elif now >= self._next_report:
            broker_log.warning("mqtt_reconnecting", **self._where(), reason=reason, attempts=self._failures,
                               down_s=round(now - self._down_since))
        else:
            return
        self._last_reason = reason
        self._next_report = now + RECONNECT_LOG_EVERY_S

    def set_will(self, topic: str, payload: bytes) -> None:
        self.will = _Will(topic, payload)
        self._client.will_set(topic, payload, qos=1, retain=True)

    # paho callbacks run in paho's thread
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            self._refused = True
            self._failed(f"refused: {_REFUSALS.get(str(rc), str(rc).lower())}")
            return
        if self._down_since is not None:
            broker_log.info("mqtt_connected", **self._where(),
                            down_s=round(time.monotonic() - self._down_since, 1), attempts=self._failures)
        else:
            broker_log.info("mqtt_connected", **self._where())
        self._reset_outage()
        for t in self.subscriptions:
            client.subscribe(t, qos=1)
        for m in self.on_connect_messages:
            client.publish(m.topic, m.payload, qos=1, retain=m.retain)
        self._thread_connected.set()
        with contextlib.suppress(RuntimeError):  # the event loop is closed already
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._failed(_os_error_words(getattr(client, "connect_error", None)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        was_connected = self._thread_connected.is_set()
        self._thread_connected.clear()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._connected.clear)
        if self._closing.is_set():
            return
        if was_connected:
            broker_log.warning("mqtt_disconnected", **self._where(), reason=_disconnect_words(flags, rc),
                               reconnecting=True)
            self._down_since = time.monotonic()
        elif self._refused:  # the refusal was logged by _on_connect
            self._refused = False
        else:  # the connection dropped between CONNECT and the broker's answer
            self._failed(_disconnect_words(flags, rc))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        m = Message(msg.topic, bytes(msg.payload), bool(msg.retain))
        try:
            fut = asyncio.run_coroutine_threadsafe(self._queue.put(m), self._loop)
        except RuntimeError:  # the event loop is closed already
            return
        # Wait for room in the queue (back-pressure), at most 60 s, and not beyond the client's close:
        # loop_stop() waits for this thread.
        deadline = time.monotonic() + 60
        while not self._closing.is_set() and time.monotonic() < deadline:
            try:
                fut.result(timeout=0.25)
                return
            except TimeoutError:
                continue
            except Exception:
                return
        fut.cancel()
        if not self._closing.is_set():
            self.dropped += 1
            log.error("bus message dropped: the consumer took no message for 60 s (topic %s, %d dropped)",
                      msg.topic, self.dropped)

    @property
    def connected(self) -> bool:
        return self._thread_connected.is_set()

    async def __aenter__(self) -> BusClient:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.queue_size)
        self._connected = asyncio.Event()
        self._closing.clear()
        self._reset_outage()
        # connect_async + loop_start: paho keeps retrying in its thread, so a broker that is down at
        # start-up is not fatal; callers wait on `wait_connected` with their own timeout.
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        with contextlib.suppress(Exception):
            self._client.disconnect()
        # loop_stop() joins paho's network thread: at once normally, up to paho's connect timeout (5 s) when
        # a connection attempt is under way. Bounded, so a stuck thread (it is a daemon) cannot hold a stop.
        stopping = asyncio.ensure_future(asyncio.to_thread(self._client.loop_stop))
        await asyncio.wait({stopping}, timeout=LOOP_STOP_TIMEOUT_S)
        if stopping.done():
            stopping.result()
        else:
            log.warning("MQTT client of %s:%d: paho's network thread did not stop within %gs",
                        self.settings.host, self.settings.port, LOOP_STOP_TIMEOUT_S)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected to the broker; TimeoutError after `timeout` seconds (None: no limit)."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives just as the
        # connection comes up (CPython gh-86296), and the caller's loop would never end.
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    async def publish_and_wait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish and wait for the broker's acknowledgement; raise TimeoutError or ConnectionError."""
        if not self.connected:
            raise ConnectionError("not connected to the MQTT broker")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
        deadline = time.monotonic() + timeout
        while not info.is_published():
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker did not acknowledge {topic} within {timeout}s")
            if not self.connected:
                raise ConnectionError("connection lost before the broker acknowledged")
            await asyncio.sleep(0.005)

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._queue.get()

    def drain(self, limit: int) -> list[Message]:
        out: list[Message] = []
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out

    async def get(self) -> Message:
        return await self._queue.get()


def status_messages(site: str, connector: str, machines: Iterable[str]) -> tuple[bytes, bytes]:
    """(online payload, offline payload) for a connector's retained status and its last will."""
    ms = tuple(machines)
    now = time.time()
    return (
        encode_status(ConnectorStatus(connector, "online", now, ms, PROCESS_SESSION)),
        encode_status(ConnectorStatus(connector, "offline", now, ms, PROCESS_SESSION)),
    )
