"""A Modbus TCP server (pymodbus 3.16) showing rate machines as holding registers.

Register map, one device (unit id from the scenario, 1 for furnace-1), holding registers:
    0     status code                      uint16
    1–2   cumulative tapped tonnes         float32, big-endian words and bytes (ABCD)
    3–4   cumulative charged tonnes        float32 ABCD
    5–6   cumulative off-spec tonnes       float32 ABCD
    7–8   bath temperature °C              float32 ABCD
    9     product code                     uint16 (1 = alloy 6063)
Modbus has no timestamps: a poller sees a change at its next poll. During a bad-status window the device
answers reads with exception 4 (device failure), as a PLC with a failed I/O module would.

pymodbus 3.16 deprecates ModbusServerContext/ModbusDeviceContext in favour of SimDevice/SimData, so the
datastore is one SimDevice per unit; the simulator updates it with the server's own `async_setValues`.

The registers (the PLC's memory) and the device-failure flag survive `stop()`/`start()`: `restart(down_s)`
behaves like a Modbus gateway rebooting while the PLC keeps running, and the restarted server's datastore
starts with the latest registers, so no client ever reads zeros.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from oee_stream.simulators.restartable import RestartableServer
from oee_stream.simulators.simulate import SimEvent

log = logging.getLogger(__name__)

N_REGISTERS = 10
REG_STATUS, REG_TAPPED, REG_CHARGED, REG_OFFSPEC, REG_TEMPERATURE, REG_PRODUCT = 0, 1, 3, 5, 7, 9
FLOAT_REGISTERS = {"total": REG_TAPPED, "charged": REG_CHARGED, "reject": REG_OFFSPEC,
                   "temperature": REG_TEMPERATURE}
FC_WRITE_MULTIPLE = 16


def float32_words(x: float) -> tuple[int, int]:
    """float32 as two registers, high word first, big-endian bytes (ABCD)."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", x))
    return int(hi), int(lo)


def words_float32(hi: int, lo: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


@dataclass
class _Unit:
    unit_id: int
    product_codes: Mapping[str, int]
    registers: list[int] = field(default_factory=lambda: [0] * N_REGISTERS)
    bad: bool = False


class ModbusSimServer(RestartableServer):
    def __init__(
        self,
        units: Mapping[str, int],  # machine id → unit (device) id
        product_codes: Mapping[str, Mapping[str, int]],  # machine id → product → numeric code
        *,
        host: str = "127.0.0.1",
        port: int = 502,
    ) -> None:
        self.host = host
        self.port = port
        self._units = {m: _Unit(u, product_codes.get(m, {})) for m, u in units.items()}
        self._server: ModbusTcpServer | None = None
        self._started_once = False

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _action_for(self, unit: _Unit) -> SimAction:
        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            # Only client reads fail during a bad window; the simulator's own writes (set_values) pass.
            if unit.bad and set_values is None:
                return ExcCodes.DEVICE_FAILURE
            return None

        return action

    async def start(self) -> None:
        devices = [
            SimDevice(
                id=u.unit_id,
                # Seeded with the PLC's memory: a restarted server never serves zeros in between.
                simdata=[SimData(address=0, values=list(u.registers), datatype=DataType.REGISTERS)],
                action=self._action_for(u),
            )
            for u in self._units.values()
        ]
        server = ModbusTcpServer(devices, address=(self.host, self.port))
        await server.serve_forever(background=True)
        self._server = server
        self._started_once = True
        log.info("Modbus simulator listening on %s:%d", self.host, self.port)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def stop(self) -> None:
        """Stop serving; the registers are kept for a later `start()`."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]
        # pymodbus remembers the last server in a class attribute (for ServerStop); don't keep ours alive.
        if ModbusBaseServer.active_server is server:
            ModbusBaseServer.active_server = None

    async def write(self, ev: SimEvent) -> None:
        if not self._started_once:
            raise RuntimeError("Modbus simulator is not started")
        unit = self._units.get(ev.machine)
        if unit is None:
            return
        regs = unit.registers
        for signal, value in ev.values.items():
            if signal == "state":
                regs[REG_STATUS] = int(value) & 0xFFFF
            elif signal == "product":
                regs[REG_PRODUCT] = unit.product_codes.get(str(value), 0) & 0xFFFF
            elif signal in FLOAT_REGISTERS:
                r = FLOAT_REGISTERS[signal]
                regs[r], regs[r + 1] = float32_words(float(value))
        unit.bad = not ev.good
        server = self._server  # None while down for a restart: the memory alone is updated
        if server is not None:
            # One multi-register write keeps a float's two words consistent for any reader.
            await server.async_setValues(unit.unit_id, FC_WRITE_MULTIPLE, 0, list(regs))
