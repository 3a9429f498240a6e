"""OPC UA subscription connector (asyncua).

Subscribes to data changes (no polling) with the configured publishing and sampling intervals. Every
notification becomes a Sample stamped with the value's SourceTimestamp (falling back to the server
timestamp, then the receive time); its StatusCode gives the quality (Good → good, Uncertain → uncertain,
Bad → bad with value null). Node sets larger than `max_nodes_per_subscription` are split over several
subscriptions.

Connection loss is detected by a periodic read of the server state node (and by subscription status
changes); the connector then publishes every node as ``bad`` once (the engine counts the time as
``unknown``), and reconnects with exponential backoff using a fresh Client and fresh subscriptions —
asyncua cannot reuse a Client after its connection broke.

Timestamps after a (re)subscription: the first notification of every monitored item reports the value
the node has *now*, stamped with the SourceTimestamp of its last change, which may be older than the
``bad`` sample published when the connection was lost (the value did not change during the outage). The
engine orders samples by source time, so that value would sort before the ``bad`` sample and the time
would stay ``unknown`` until the next change. So the first notification of each item in a session is
stamped ``max(source timestamp, time the connection was established)``; every later change keeps its
true source timestamp. This applies once the connector has published its nodes as ``bad`` (after a lost
connection, or when the server was unreachable at start-up); until then a session keeps the true source
times: after a process restart the engine resumes the latest state at the new session's start itself
(see `Engine.connector_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from oee_stream.bus import MqttSettings, Quality, Sample
from oee_stream.connectors.aio import check_cancelled, stop_task, wait_ended
from oee_stream.connectors.base import Backoff, BaseConnector, register_connector
from oee_stream.connectors.config import OpcUaConfig, OpcUaNode, ResolvedOpcUaGroup

log = logging.getLogger(__name__)

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


class ConnectionLost(ConnectionError):
    """The server stopped answering or reported the subscription dead."""


class SecuritySetupError(ConnectionError):
    """The server cannot be trusted or does not accept us: wrong certificate, policy or user.

    The connector keeps retrying (an administrator may fix the server side meanwhile), but the message
    says what to fix instead of a bare status code.
    """


# Status codes of a refused user identity (ActivateSession).
_USER_REJECTED = {
    StatusCodes.BadUserAccessDenied, StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid, StatusCodes.BadUserSignatureInvalid,
}
# Status codes of a refused secure channel or certificate (OpenSecureChannel / CreateSession).
_CHANNEL_REJECTED = {
    StatusCodes.BadSecurityChecksFailed, StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUntrusted, StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadCertificateUseNotAllowed, StatusCodes.BadCertificateTimeInvalid,
    StatusCodes.BadCertificateRevoked, StatusCodes.BadSecurityPolicyRejected,
    StatusCodes.BadSecurityModeRejected, StatusCodes.BadApplicationSignatureInvalid,
}


def _thumbprint(der: bytes) -> str:
    return hashlib.sha1(der).hexdigest()  # the OPC UA certificate thumbprint is SHA-1


def _first_cert(chain: bytes) -> bytes:
    """The leaf of a DER certificate chain (a server may send its chain concatenated)."""
    if len(chain) > 4 and chain[0] == 0x30 and chain[1] == 0x82:
        return chain[: 4 + int.from_bytes(chain[2:4], "big")]
    return chain


def _load_cert_der(path: str) -> bytes:
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return _first_cert(data)


def to_epoch(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # asyncua returns aware UTC; be safe with naive ones
        dt = dt.replace(tzinfo=UTC)
    ts = dt.timestamp()
    # OPC UA "null" DateTime (1601-01-01) or anything before 1970 means "not given"
    return ts if ts > 0 else None


def quality_of(status: ua.StatusCode | None) -> Quality:
    if status is None:
        return "good"
    if status.is_good():
        return "good"
    if status.is_uncertain():
        return "uncertain"
    return "bad"


def convert_value(value: Any) -> float | int | str | bool | None:
    """An OPC UA variant value → a bus value (number, string, bool); None if it has no scalar form."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Enum):
        return int(value.value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return to_epoch(value)
    return str(value)


def sample_from_datavalue(machine: str, signal: str, dv: ua.DataValue, received: float) -> Sample:
    ts = to_epoch(dv.SourceTimestamp) or to_epoch(dv.ServerTimestamp) or received
    q = quality_of(dv.StatusCode)
    value = None if q == "bad" else convert_value(dv.Value.Value if dv.Value is not None else None)
    if value is None and q != "bad":
        q = "bad"
    return Sample(machine, signal, ts, value, q)


T = TypeVar("T")


def chunks(seq: Sequence[T], size: int) -> list[Sequence[T]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def resolve_node_id(node_id: str, namespaces: Sequence[str] | None) -> ua.NodeId:
    """The NodeId to monitor; an ``nsu=`` URI is looked up in the server's namespace array.

    Raises ValueError saying why this one node cannot be monitored (the other nodes still can).
    """
    try:
        nid = ua.NodeId.from_string(node_id)
    except Exception as exc:
        raise ValueError(f"not an OPC UA NodeId: {exc}") from exc
    if isinstance(nid, ua.ExpandedNodeId):
        if nid.NamespaceUri:
            assert namespaces is not None  # fetched whenever a node names a URI
            if nid.NamespaceUri not in namespaces:
                raise ValueError(f"namespace URI {nid.NamespaceUri!r} is not on the server; it has: "
                                 f"{list(namespaces)}")
            return ua.NodeId(nid.Identifier, ua.Int16(namespaces.index(nid.NamespaceUri)), nid.NodeIdType)
        return ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType)
    return nid


def _needs_namespaces(node_id: str) -> bool:
    with contextlib.suppress(Exception):
        nid = ua.NodeId.from_string(node_id)
        return isinstance(nid, ua.ExpandedNodeId) and bool(nid.NamespaceUri)
    return False


# A lost connection makes asyncua log its own teardown: a traceback per second from the publish loop, and
# "called but connection is closed" on every close, once per reconnect attempt. The connector reports the
# loss itself (OutageLog), so these are dropped unless someone debugs asyncua.
_ASYNCUA_TEARDOWN = frozenset({
    "close_secure_channel was called but connection is closed",
    "close_session was called but connection is closed",
    "close_session but connection wasn't established",
})


class _AsyncuaTeardownFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("asyncua").isEnabledFor(logging.DEBUG):
            return True
        if record.msg in _ASYNCUA_TEARDOWN:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        # only the "connection is gone" case: any other publish failure is a real error and stays
        return not (str(record.msg).startswith("Publish iteration crashed") and isinstance(exc, ConnectionError))


_TEARDOWN_FILTER = _AsyncuaTeardownFilter()


def quiet_asyncua_teardown() -> None:
    """Install the filter on the asyncua loggers that report a teardown (idempotent)."""
    for name in ("asyncua.client.ua_client.UaClient", "asyncua.client.ua_session.UaSession"):
        logger = logging.getLogger(name)
        if _TEARDOWN_FILTER not in logger.filters:
            logger.addFilter(_TEARDOWN_FILTER)


class OutageLog:
    """When to log a failed connection attempt: an outage repeats the same error at every attempt.

    WARNING when the outage starts and whenever an error not seen yet in this outage comes up (a server
    that alternates between refusing and timing out is not logged at every attempt), then once every
    `every_s` while it lasts, with how long and how many attempts; DEBUG in between.
    """

    def __init__(self, every_s: float = 300.0) -> None:
        self.every_s = every_s
        self.since: float | None = None
        self.attempts = 0
        self._seen: set[str] = set()
        self._last_logged = 0.0

    def failed(self, error: str, now: float) -> tuple[int, str]:
        """(log level, suffix for the message) of one more failed attempt."""
        if self.since is None:
            self.since = now
        self.attempts += 1
        if error in self._seen and now - self._last_logged < self.every_s:
            return logging.DEBUG, ""
        self._seen.add(error)
        self._last_logged = now
        if self.attempts == 1:
            return logging.WARNING, ""
        return logging.WARNING, f" (down for {now - self.since:.0f} s, {self.attempts} failed attempts)"

    def recovered(self, now: float) -> tuple[float, int] | None:
        """(seconds down, failed attempts) of the outage that just ended, or None if there was none."""
        if self.since is None:
            return None
        ended = (now - self.since, self.attempts)
        self.since, self.attempts, self._seen = None, 0, set()
        return ended


@dataclass(frozen=True)
class _Target:
    machine: str
    signal: str


class _Handler:
    """asyncua subscription callbacks → samples (called from asyncua's tasks, never awaits)."""

    def __init__(self, conn: OpcUaConnector, emit: Callable[[list[Sample]], None]) -> None:
        self.conn = conn
        self.emit = emit
        self.targets: dict[int, _Target] = {}  # client handle → (machine, signal)
        self.lost = asyncio.Event()
        self.lost_reason = ""
        # wall-clock time the session's connection was established; the floor of initial notifications
        self.connected_at: float | None = None
        self._seen: set[int] = set()  # client handles that delivered their initial notification

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        item = data.monitored_item
        target = self.targets.get(item.ClientHandle)
        if target is None:
            return
        try:
            sample = sample_from_datavalue(target.machine, target.signal, item.Value, time.time())
        except Exception:  # a malformed value must not stop the subscription
            log.exception("connector %s: cannot convert value of %s", self.conn.id, node)
            sample = Sample(target.machine, target.signal, time.time(), None, "bad")
        handle = item.ClientHandle
        if handle not in self._seen:
            # The initial notification: "the value now", possibly unchanged since before an outage.
            self._seen.add(handle)
            floor = self.connected_at
            if floor is not None and sample.ts < floor:
                sample = Sample(sample.machine, sample.signal, floor, sample.value, sample.quality)
                self.conn.stats.extra["initial_restamped"] += 1
        self.emit([sample])

    def status_change_notification(self, status: Any) -> None:
        code = getattr(status, "Status", status)
        if isinstance(code, ua.StatusCode) and not code.is_good():
            self.lost_reason = f"subscription status {code.name}"
            self.lost.set()

    def event_notification(self, event: Any) -> None:  # not used
        pass


@register_connector("opcua")
class OpcUaConnector(BaseConnector):
    kind = "opcua"
    cfg: OpcUaConfig

    def __init__(self, cfg: OpcUaConfig, bus_settings: MqttSettings) -> None:
        super().__init__(cfg, bus_settings)
        self.stats.extra.update(
            {"subscriptions": 0, "monitored_items": 0, "bad_nodes": 0, "initial_restamped": 0}
        )
        self._marked_bad = False  # this process published the nodes as bad (a lost or failed connection)
        self._warned_nodes: set[tuple[str, str]] = set()  # (node id, reason) already logged at WARNING
        self._outage = OutageLog()
        quiet_asyncua_teardown()

    def _all_nodes(self) -> list[OpcUaNode]:
        return [n for g in self.cfg.groups() for n in g.nodes]

    def _bad_all(self) -> list[Sample]:
        now = time.time()
        return [Sample(n.machine, n.signal, now, None, "bad") for n in self._all_nodes()]

    async def run_source(self, emit: Callable[[list[Sample]], None]) -> None:
        backoff = Backoff(self.cfg.reconnect_initial_s, self.cfg.reconnect_max_s)
        healthy = True  # "was fine until now": the first failure marks all nodes bad once
        connected_before = False
        while True:
            await check_cancelled()  # a cancellation swallowed below us must still end the loop
            handler = _Handler(self, emit)

            def on_up(handler: _Handler = handler) -> None:
                nonlocal healthy, connected_before
                if connected_before:
                    self.stats.reconnects += 1
                connected_before = True
                healthy = True
                backoff.reset()
                self.stats.source_connected = True
                ended = self._outage.recovered(time.monotonic())
                if ended is not None:
                    log.info("connector %s: OPC UA %s is back after %.0f s (%d failed attempts)",
                             self.id, self.cfg.endpoint, *ended)

            try:
                await self._session(handler, on_up)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await check_cancelled()  # a cancellation in disguise is no source error
                self.stats.source_errors += 1
                self.stats.last_error = str(exc) if isinstance(exc, SecuritySetupError) else repr(exc)
                level, more = self._outage.failed(self.stats.last_error, time.monotonic())
                if isinstance(exc, SecuritySetupError):
                    # A security set-up problem needs a person: say it at every attempt, not only the first.
                    level = logging.ERROR
                log.log(level, "connector %s: OPC UA %s: %s%s", self.id, self.cfg.endpoint, self.stats.last_error,
                        more)
            self.stats.source_connected = False
            if healthy:
                emit(self._bad_all())
                self._marked_bad = True
                healthy = False
            await asyncio.sleep(backoff.next_delay())

    async def _make_client(self) -> Client:
        cfg = self.cfg
        client = Client(cfg.endpoint, timeout=cfg.timeout_s)
        if cfg.application_uri is not None:
            client.application_uri = cfg.application_uri
        if cfg.username is not None and cfg.password is not None:
            client.set_user(cfg.username)
            client.set_password(cfg.password)
        if cfg.security_policy != "None":
            assert cfg.certificate is not None and cfg.private_key is not None  # validated
            await client.set_security(
                _POLICIES[cfg.security_policy],
                certificate=cfg.certificate,
                private_key=cfg.private_key,
                private_key_password=cfg.private_key_password,
                server_certificate=cfg.server_certificate,
                mode=_MODES[cfg.security_mode],
            )
        return client

    async def _check_server_certificate(self) -> None:
        """Refuse a server whose certificate is not the pinned one, before sending it anything secret.

        GetEndpoints runs on an unsecured channel (every server allows it); the endpoint for our policy
        and mode carries the server's certificate, which must be byte for byte the `server_certificate`
        file. Never trust on first use: config validation already requires the file.
        """
        cfg = self.cfg
        assert cfg.server_certificate is not None  # validated with security on
        pinned = _load_cert_der(cfg.server_certificate)
        probe = Client(cfg.endpoint, timeout=cfg.timeout_s)
        async with asyncio.timeout(cfg.timeout_s * 2):  # closes its socket itself, also when cancelled
            endpoints = await probe.connect_and_get_server_endpoints()
        await check_cancelled()
        uri = _POLICIES[cfg.security_policy].URI
        mode = _MODES[cfg.security_mode]
        match = [e for e in endpoints if e.SecurityPolicyUri == uri and e.SecurityMode == mode]
        if not match:
            # asyncua names the mode `None_`; say it as the config key would
            offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}"
                              for e in endpoints})
            raise SecuritySetupError(
                f"{cfg.endpoint} does not offer security_policy {cfg.security_policy} with security_mode "
                f"{cfg.security_mode}; it offers (security_policy/security_mode): {', '.join(offered) or 'nothing'}")
        got = _first_cert(match[0].ServerCertificate or b"")
        if got != pinned:
            raise SecuritySetupError(
                f"the server at {cfg.endpoint} presents certificate SHA-1 {_thumbprint(got)}, not the pinned "
                f"server_certificate {cfg.server_certificate} (SHA-1 {_thumbprint(pinned)}); refusing to "
                "connect. If the server's certificate was renewed, export the new one and set server_certificate")

    async def _connect(self, client: Client) -> None:
        cfg = self.cfg
        try:
            async with asyncio.timeout(cfg.timeout_s * 2):
                await client.connect()
        except UaStatusCodeError as exc:
            code = exc.code
            if code in _USER_REJECTED:
                who = f"user {cfg.username!r}" if cfg.username is not None else "an anonymous session"
                raise SecuritySetupError(
                    f"{cfg.endpoint} rejected {who} ({ua.StatusCode(code).name}): check username and password, "
                    "or whether the server allows this user (anonymous access may be switched off)") from exc
            if code in _CHANNEL_REJECTED:
                raise SecuritySetupError(
                    f"{cfg.endpoint} refused the secure channel ({ua.StatusCode(code).name}): the server must trust "
                    "our client certificate (move it from the server's rejected to its trusted list) and "
                    "application_uri must match the certificate's URI") from exc
            raise
        except UaError as exc:
            if "certificate mismatch" in str(exc).lower():
                raise SecuritySetupError(
                    f"the server at {cfg.endpoint} signed the session with a certificate that is not the "
                    f"pinned server_certificate {cfg.server_certificate}; refusing to connect") from exc
            raise

    async def _session(self, handler: _Handler, on_up: Callable[[], None]) -> None:
        """One connection: connect, subscribe, watch; returns never, raises when the connection is lost."""
        if self.cfg.security_policy != "None":
            await self._check_server_certificate()
        client = await self._make_client()
        try:
            await self._connect(client)
            await check_cancelled()  # asyncua opens its socket with asyncio.wait_for, which may have swallowed it
        except BaseException:
            await self._close(client)
            raise
        # The floor is needed once this process published the nodes as bad (a lost connection, or a
        # server that was unreachable when the connector started): the initial notifications must land
        # after those bad samples. Before that, the PLC's true source times are kept (after a process
        # restart the engine itself resumes the latest state at the new session's start, see
        # Engine.connector_status).
        handler.connected_at = time.time() if self._marked_bad else None
        try:
            failed = await self._subscribe_all(client, handler)
            on_up()
            total = len(handler.targets) + failed
            if failed:
                log.info("connector %s: subscribed to %d of %d nodes on %s (%d cannot be monitored, see above)",
                         self.id, len(handler.targets), total, self.cfg.endpoint, failed)
            else:
                log.info("connector %s: subscribed to %d nodes on %s", self.id, total, self.cfg.endpoint)
            await self._watch(client, handler)
        finally:
            await self._close(client)

    def _node_failed(self, handler: _Handler, node: OpcUaNode, reason: str) -> None:
        """One node cannot be monitored: publish it bad once and go on with the others.

        Said at WARNING the first time (per node and reason) and at DEBUG at every later session: it is a
        configuration problem, not an outage, and the `bad_nodes` gauge keeps showing it.
        """
        key = (node.node_id, reason)
        level = logging.DEBUG if key in self._warned_nodes else logging.WARNING
        self._warned_nodes.add(key)
        self.stats.source_errors += 1
        log.log(level, "connector %s: cannot monitor %s (%s/%s): %s",
                self.id, node.node_id, node.machine, node.signal, reason)
        handler.emit([Sample(node.machine, node.signal, time.time(), None, "bad")])

    async def _subscribe_all(self, client: Client, handler: _Handler) -> int:
        """Subscribe every node that can be; returns how many cannot (each published bad once)."""
        failed = 0
        namespaces: list[str] | None = None
        if any(_needs_namespaces(n.node_id) for n in self._all_nodes()):
            # read once per session: the table can change between connections (firmware update)
            async with asyncio.timeout(self.cfg.timeout_s * 2):
                namespaces = [str(u) for u in await client.get_namespace_array()]
        handle = 0
        subs = 0
        for group in self.cfg.groups():
            resolved: list[tuple[OpcUaNode, ua.NodeId]] = []
            for n in group.nodes:
                try:
                    resolved.append((n, resolve_node_id(n.node_id, namespaces)))
                except ValueError as exc:
                    failed += 1
                    self._node_failed(handler, n, str(exc))
            for part in chunks(resolved, self.cfg.max_nodes_per_subscription):
                async with asyncio.timeout(self.cfg.timeout_s * 2):
                    sub = await client.create_subscription(self._sub_params(group), handler)
                subs += 1
                requests: list[ua.MonitoredItemCreateRequest] = []
                handles: list[int] = []
                for n, nid in part:
                    handle += 1
                    handles.append(handle)
                    handler.targets[handle] = _Target(n.machine, n.signal)
                    requests.append(self._item_request(nid, handle, group, n))
                async with asyncio.timeout(self.cfg.timeout_s * 2):
                    results = await sub.create_monitored_items(requests)
                for (n, _), h, res in zip(part, handles, results, strict=True):
                    if isinstance(res, ua.StatusCode):
                        failed += 1
                        del handler.targets[h]
                        self._node_failed(handler, n, res.name)
        self.stats.extra["subscriptions"] = subs
        self.stats.extra["monitored_items"] = len(handler.targets)
        self.stats.extra["bad_nodes"] = failed  # a gauge: this session's, not a sum over reconnects
        return failed

    def _sub_params(self, group: ResolvedOpcUaGroup) -> ua.CreateSubscriptionParameters:
        p = ua.CreateSubscriptionParameters()
        p.RequestedPublishingInterval = group.publishing_interval_ms
        # keep-alive at least every ~5 s so a silent server is noticed; lifetime = 3 × keep-alive (spec)
        keepalive = max(1, math.ceil(5000 / group.publishing_interval_ms))
        p.RequestedMaxKeepAliveCount = keepalive
        p.RequestedLifetimeCount = keepalive * 3
        p.MaxNotificationsPerPublish = 10000
        p.PublishingEnabled = True
        p.Priority = 0
        return p

    def _item_request(
        self, nid: ua.NodeId, handle: int, group: ResolvedOpcUaGroup, node: OpcUaNode
    ) -> ua.MonitoredItemCreateRequest:
        rv = ua.ReadValueId()
        rv.NodeId = nid
        rv.AttributeId = AttributeIds.Value
        mp = ua.MonitoringParameters()
        mp.ClientHandle = handle
        mp.SamplingInterval = group.sampling_interval_ms
        mp.QueueSize = self.cfg.queue_size
        mp.DiscardOldest = True
        deadband = node.deadband if node.deadband is not None else group.deadband
        if deadband > 0:
            f = ua.DataChangeFilter()
            f.Trigger = ua.DataChangeTrigger.StatusValue
            f.DeadbandType = ua.DeadbandType.Absolute
            f.DeadbandValue = deadband
            mp.Filter = f
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = rv
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = mp
        return req

    async def _watch(self, client: Client, handler: _Handler) -> None:
        """Probe the server state node every watchdog interval; raise ConnectionLost on failure."""
        state_node = client.get_node(ObjectIds.Server_ServerStatus_State)
        while True:
            # Timeouts with asyncio.timeout, not wait_for: on 3.11 wait_for may hand back a read completing
            # just as the task is cancelled and swallow the cancellation; this loop would never end.
            await check_cancelled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.watchdog_interval_s):
                    await handler.lost.wait()
            if handler.lost.is_set():
                raise ConnectionLost(handler.lost_reason)
            try:
                async with asyncio.timeout(self.cfg.timeout_s):
                    state = await state_node.read_value()
            except (TimeoutError, OSError, ConnectionError, UaError) as exc:
                await check_cancelled()
                raise ConnectionLost(f"server state read failed: {exc!r}") from exc
            if state not in (ua.ServerState.Running, 0):
                raise ConnectionLost(f"server state is {state!r}")

    async def _close(self, client: Client) -> None:
        """Disconnect within a bounded time; on a dead connection, or when cancelled meanwhile, drop the socket.

        `client.disconnect()` runs in a task of its own and is waited for at most the bound: a timeout put
        around it is not enough, because asyncua's close swallows the cancellation while it stops the client's
        helper tasks and then waits for the CloseSession answer up to the client's request timeout.
        """
        closing = asyncio.create_task(client.disconnect(), name=f"opcua-disconnect-{self.id}")
        try:
            ended = await wait_ended(closing, min(self.cfg.timeout_s, 2.0))
        except asyncio.CancelledError:  # cancelled (again) while closing: drop the link now
            closing.cancel()
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            raise
        if ended and (closing.cancelled() or closing.exception() is None):
            return
        # Failed, or too slow (a dead server): drop the socket; the abandoned close then fails at once.
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        await stop_task(closing, 1.0)
