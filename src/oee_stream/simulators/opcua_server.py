"""An OPC UA server (asyncua) showing the simulated machines the way a PLC's server would.

Node ids are string ids in namespace `urn:oee-stream:sim` (index 2, the first one registered):
    ns=2;s={machine}.State        Int32   PLC state code
    ns=2;s={machine}.TotalCount   UInt32  total counter (Double tonnes on rate machines)
    ns=2;s={machine}.RejectCount  UInt32  reject counter (Double tonnes on rate machines)
    ns=2;s={machine}.Product      String  active product
Rate machines also get `.ChargedTotal` and `.Temperature` (Double).

Every value is written with SourceTimestamp = ServerTimestamp = the scenario's event time, so a client
that subscribes receives the true event time, not the moment the server got round to the write.

The server keeps the PLC's memory (the last DataValue of every variable) across `stop()`/`start()`:
`restart(down_s)` behaves like a PLC's OPC UA server rebooting while the PLC keeps running. Writes while
it is down update that memory only, and the restarted server shows the latest values with their original
source timestamps from its first request on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from oee_stream.simulators.restartable import RestartableServer
from oee_stream.simulators.simulate import SimEvent, Value

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:oee-stream:sim"
ENDPOINT_PATH = "/oee-stream/sim/"

# signal of a SimEvent → (variable name, type on discrete machines, type on rate machines)
VARIABLES: dict[str, tuple[str, ua.VariantType, ua.VariantType]] = {
    "state": ("State", ua.VariantType.Int32, ua.VariantType.Int32),
    "total": ("TotalCount", ua.VariantType.UInt32, ua.VariantType.Double),
    "reject": ("RejectCount", ua.VariantType.UInt32, ua.VariantType.Double),
    "product": ("Product", ua.VariantType.String, ua.VariantType.String),
    "charged": ("ChargedTotal", ua.VariantType.Double, ua.VariantType.Double),
    "temperature": ("Temperature", ua.VariantType.Double, ua.VariantType.Double),
}
DISCRETE_SIGNALS = ("state", "total", "reject", "product")
RATE_SIGNALS = (*DISCRETE_SIGNALS, "charged", "temperature")
BAD_STATUS = StatusCodes.BadCommunicationError


def node_id(machine: str, variable: str) -> str:
    """The string form of a variable's NodeId, e.g. `ns=2;s=press-1.TotalCount`."""
    return f"ns=2;s={machine}.{variable}"


@dataclass(frozen=True)
class OpcUaSecurity:
    """Hook for certificates later: with both files the server also offers Basic256Sha256 (sign & encrypt)."""

    certificate: Path | None = None
    private_key: Path | None = None
    allow_none: bool = True


def _utc(ts: float) -> ua.DateTime:
    return ua.DateTime.fromtimestamp(ts, tz=UTC)


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


class OpcUaSimServer(RestartableServer):
    def __init__(
        self,
        machines: Mapping[str, bool],  # machine id → is a rate machine
        *,
        host: str = "127.0.0.1",
        port: int = 4840,
        security: OpcUaSecurity | None = None,
    ) -> None:
        self.machines = dict(machines)
        self.host = host
        self.port = port
        self.security = security or OpcUaSecurity()
        self.endpoint = f"opc.tcp://{host}:{port}{ENDPOINT_PATH}"
        self._server: Server | None = None
        self._nodes: dict[tuple[str, str], tuple[Node, ua.VariantType]] = {}
        # The PLC's memory: what the server shows, kept while it is stopped (see restart).
        self._memory: dict[tuple[str, str], ua.DataValue] = {}
        self._started_once = False

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("oee-stream plant simulator")
        # The scenario owns both timestamps; asyncua would otherwise stamp its own ServerTimestamp.
        server.set_force_server_timestamp(False)
        policies: list[ua.SecurityPolicyType] = []
        if self.security.allow_none:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        if self.security.certificate is not None and self.security.private_key is not None:
            await server.load_certificate(str(self.security.certificate))
            await server.load_private_key(str(self.security.private_key))
            policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
        server.set_security_policy(policies)
        idx = await server.register_namespace(NAMESPACE_URI)
        if idx != 2:
            raise RuntimeError(f"namespace {NAMESPACE_URI} got index {idx}, the node ids assume 2")
        objects = server.nodes.objects
        for machine, is_rate in self.machines.items():
            obj = await objects.add_object(f"ns={idx};s={machine}", f"{idx}:{machine}")
            for signal in RATE_SIGNALS if is_rate else DISCRETE_SIGNALS:
                name, vt_discrete, vt_rate = VARIABLES[signal]
                vt = vt_rate if is_rate else vt_discrete
                initial: Value = "" if vt is ua.VariantType.String else 0
                var = await obj.add_variable(
                    f"ns={idx};s={machine}.{name}", f"{idx}:{name}", initial, varianttype=vt
                )
                # Until the scenario's first event, a reader must not take the placeholder for data. After a
                # restart the remembered value is in place before the server accepts its first connection.
                remembered = self._memory.get((machine, signal))
                await server.write_attribute_value(
                    var.nodeid,
                    remembered if remembered is not None else
                    ua.DataValue(ua.Variant(initial, vt), StatusCode=_status(StatusCodes.BadWaitingForInitialData)),
                )
                self._nodes[(machine, signal)] = (var, vt)
        await server.start()
        self._server = server
        self._started_once = True
        log.info("OPC UA simulator listening on %s", self.endpoint)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def stop(self) -> None:
        """Stop serving; the PLC's memory is kept for a later `start()`."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def write(self, ev: SimEvent) -> None:
        """Write every value of one event with the event's exact time and quality."""
        if not self._started_once:
            raise RuntimeError("OPC UA simulator is not started")
        when = _utc(ev.ts)
        status = _status(StatusCodes.Good if ev.good else BAD_STATUS)
        for signal, value in ev.values.items():
            entry = self._nodes.get((ev.machine, signal))
            if entry is None:
                continue  # a signal this machine does not expose over OPC UA
            var, vt = entry
            v: Value = int(value) if vt in (ua.VariantType.UInt32, ua.VariantType.Int32) else value
            if vt is ua.VariantType.Double:
                v = float(value)
            dv = ua.DataValue(ua.Variant(v, vt), StatusCode=status, SourceTimestamp=when, ServerTimestamp=when)
            self._memory[(ev.machine, signal)] = dv
            server = self._server  # None while down for a restart: the memory alone is updated
            if server is not None:
                await server.write_attribute_value(var.nodeid, dv)
