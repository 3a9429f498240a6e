"""Modbus TCP (and RTU over TCP) polling connector, read-only function codes 1-4.

Each poll group is polled at its interval on one shared connection. The registers of a group are merged
into as few requests as possible (same register kind, gaps up to `max_gap`, at most
`max_registers_per_read`). A sample's timestamp is the time the response arrived. On a timeout,
exception response or connection error the group's signals are published with quality ``bad`` (value
null), so the engine counts that time as ``unknown``; the connector reconnects with exponential backoff
and never stops polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from oee_stream.bus import MqttSettings, Sample
from oee_stream.connectors.aio import check_cancelled
from oee_stream.connectors.base import Backoff, BaseConnector, register_connector
from oee_stream.connectors.config import ModbusConfig, ModbusRegister, RegisterKind, ResolvedModbusGroup
from oee_stream.connectors.modbus_codec import (
    ByteOrder,
    DecodeError,
    apply_scale,
    decode,
    is_finite,
    register_count,
)

log = logging.getLogger(__name__)

MAX_BITS_PER_READ = 2000


@dataclass(frozen=True)
class ReadBlock:
    """One request: `count` registers (or bits) of `register` kind from `start`, serving `items`."""

    register: RegisterKind
    start: int
    count: int
    items: tuple[ModbusRegister, ...]


def _width(r: ModbusRegister) -> int:
    return 1 if r.register_kind in ("coil", "discrete") else register_count(r.type)


def plan_reads(registers: Iterable[ModbusRegister], max_gap: int, max_registers: int) -> list[ReadBlock]:
    """Merge registers of the same kind into contiguous reads (pure; order: kind, address)."""
    by_kind: dict[RegisterKind, list[ModbusRegister]] = {}
    for r in registers:
        by_kind.setdefault(r.register_kind, []).append(r)
    blocks: list[ReadBlock] = []
    for kind in ("coil", "discrete", "holding", "input"):
        regs = sorted(by_kind.get(kind, []), key=lambda r: (r.address, _width(r)))
        limit = MAX_BITS_PER_READ if kind in ("coil", "discrete") else max_registers
        start = end = -1
        items: list[ModbusRegister] = []
        for r in regs:
            r_end = r.address + _width(r)
            if items and r.address <= end + max_gap and max(end, r_end) - start <= limit:
                end = max(end, r_end)
                items.append(r)
                continue
            if items:
                blocks.append(ReadBlock(kind, start, end - start, tuple(items)))
            start, end, items = r.address, r_end, [r]
        if items:
            blocks.append(ReadBlock(kind, start, end - start, tuple(items)))
    return blocks


def decode_block(
    block: ReadBlock, words: Sequence[int], bits: Sequence[bool], default_order: ByteOrder, ts: float
) -> list[Sample]:
    """Samples of one successful read (pure)."""
    out: list[Sample] = []
    for r in block.items:
        i = r.address - block.start
        try:
            if r.register_kind in ("coil", "discrete"):
                value: Any = bool(bits[i])
            else:
                raw = decode(words[i : i + register_count(r.type)], r.type,
                             r.byte_order or default_order, r.bit)
                value = apply_scale(raw, r.scale, r.offset)
        except (DecodeError, IndexError) as exc:
            log.warning("cannot decode %s/%s at %s %d: %s", r.machine, r.signal, r.register_kind, r.address, exc)
            out.append(Sample(r.machine, r.signal, ts, None, "bad"))
            continue
        if not is_finite(value):
            out.append(Sample(r.machine, r.signal, ts, None, "bad"))
        else:
            out.append(Sample(r.machine, r.signal, ts, value, "good"))
    return out


def bad_samples(items: Iterable[ModbusRegister], ts: float) -> list[Sample]:
    return [Sample(r.machine, r.signal, ts, None, "bad") for r in items]


class _InBackoff(ConnectionError):
    """No connection and the next attempt is not due yet."""


class _Link:
    """The one TCP connection to the controller, reopened with exponential backoff."""

    def __init__(self, cfg: ModbusConfig, conn: ModbusConnector) -> None:
        self.cfg = cfg
        self.conn = conn
        self.client: AsyncModbusTcpClient | None = None
        self.lock = asyncio.Lock()  # one request at a time on the link (many PLCs serve only one)
        self._connect_lock = asyncio.Lock()
        self.backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        self._retry_at = 0.0
        self._was_connected = False
        self._failing = False

    async def get(self) -> AsyncModbusTcpClient:
        if self.client is not None and self.client.connected:
            return self.client
        async with self._connect_lock:  # several poll groups share the link: connect once
            return await self._connect()

    async def _connect(self) -> AsyncModbusTcpClient:
        if self.client is not None and self.client.connected:
            return self.client
        if time.monotonic() < self._retry_at:
            raise _InBackoff(f"reconnecting in {self._retry_at - time.monotonic():.1f}s")
        self.close()
        client = AsyncModbusTcpClient(
            self.cfg.host,
            port=self.cfg.port,
            framer=FramerType.RTU if self.cfg.rtu_over_tcp else FramerType.SOCKET,
            timeout=self.cfg.timeout_s,
            retries=0,
            reconnect_delay=0,  # we reconnect ourselves (fresh client, our backoff)
            name=f"modbus-{self.cfg.id}",
        )
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can return a connection made just as we are
            # cancelled, swallowing the cancellation (see connectors/aio.py)
            async with asyncio.timeout(self.cfg.timeout_s + 1.0):
                ok = await client.connect()
            await check_cancelled()  # pymodbus' own wait_for may have swallowed it
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            self.failed(f"connect: {exc!r}")
            raise ConnectionError(f"cannot connect to {self.cfg.controller}: {exc!r}") from exc
        except BaseException:  # cancelled: never leave a half-made connection open
            client.close()
            raise
        if not ok:
            client.close()
            self.failed("connect refused")
            raise ConnectionError(f"cannot connect to {self.cfg.controller}")
        self.client = client
        self.backoff.reset()
        if self._was_connected:
            self.conn.stats.reconnects += 1
        self._was_connected = True
        self._failing = False
        self.conn.stats.source_connected = True
        log.info("connector %s: connected to %s", self.cfg.id, self.cfg.controller)
        return client

    def failed(self, reason: str) -> None:
        self.close()
        self.conn.stats.source_errors += 1
        delay = self.backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "connector %s: %s failed (%s); retry in %.1fs", self.cfg.id, self.cfg.controller, reason, delay)
        self._failing = True

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        self.conn.stats.source_connected = False


@register_connector("modbus")
class ModbusConnector(BaseConnector):
    kind = "modbus"
    cfg: ModbusConfig

    def __init__(self, cfg: ModbusConfig, bus_settings: MqttSettings) -> None:
        super().__init__(cfg, bus_settings)
        self.plans: list[tuple[ResolvedModbusGroup, list[ReadBlock]]] = [
            (g, plan_reads(g.registers, cfg.max_gap, cfg.max_registers_per_read)) for g in cfg.poll_groups()
        ]
        self.stats.extra.update({"polls": 0, "exception_responses": 0, "timeouts": 0})

    async def run_source(self, emit: Callable[[list[Sample]], None]) -> None:
        link = _Link(self.cfg, self)
        try:
            async with asyncio.TaskGroup() as tg:
                for group, blocks in self.plans:
                    tg.create_task(self._poll_loop(link, group, blocks, emit), name=f"{self.id}-{group.name}")
        finally:
            link.close()

    async def _poll_loop(
        self, link: _Link, group: ResolvedModbusGroup, blocks: list[ReadBlock],
        emit: Callable[[list[Sample]], None],
    ) -> None:
        interval = group.poll_interval_ms / 1000.0
        next_t = time.monotonic()
        while True:
            await check_cancelled()  # a cancellation swallowed below us must still end the loop
            try:
                samples = await self.poll_once(link, blocks)
                await check_cancelled()
                emit(samples)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a surprise kill the loop
                await check_cancelled()  # ... unless it is a cancellation in disguise
                log.exception("connector %s: poll of group %s failed", self.id, group.name)
                self.stats.source_errors += 1
                emit(bad_samples((r for b in blocks for r in b.items), time.time()))
            next_t += interval
            now = time.monotonic()
            if next_t < now:
                next_t = now  # overran: skip the missed ticks rather than bursting
            await asyncio.sleep(next_t - now)

    async def poll_once(self, link: _Link, blocks: list[ReadBlock]) -> list[Sample]:
        self.stats.extra["polls"] += 1
        try:
            client = await link.get()
        except ConnectionError:
            return bad_samples((r for b in blocks for r in b.items), time.time())
        out: list[Sample] = []
        for bi, block in enumerate(blocks):
            try:
                async with link.lock, asyncio.timeout(self.cfg.timeout_s + 1.0):
                    resp = await self._read(client, block)
            except (TimeoutError, ModbusException, OSError) as exc:
                # pymodbus < 3.16 reports a cancelled request as ModbusIOException (pymodbus#3009)
                await check_cancelled()
                if isinstance(exc, TimeoutError) or "timeout" in str(exc).lower():
                    self.stats.extra["timeouts"] += 1
                link.failed(f"read {block.register} {block.start}+{block.count}: {exc!r}")
                out += bad_samples((r for b in blocks[bi:] for r in b.items), time.time())
                break
            ts = time.time()
            if resp.isError():
                self.stats.source_errors += 1
                self.stats.extra["exception_responses"] += 1
                log.warning("connector %s: exception response for %s %d+%d: %s",
                            self.id, block.register, block.start, block.count, resp)
                out += bad_samples(block.items, ts)
                continue
            out += decode_block(block, list(getattr(resp, "registers", []) or []),
                                list(getattr(resp, "bits", []) or []), self.cfg.byte_order, ts)
        return out

    async def _read(self, client: AsyncModbusTcpClient, block: ReadBlock) -> Any:
        dev = self.cfg.slave_id
        if block.register == "holding":
            return await client.read_holding_registers(block.start, count=block.count, device_id=dev)
        if block.register == "input":
            return await client.read_input_registers(block.start, count=block.count, device_id=dev)
        if block.register == "coil":
            return await client.read_coils(block.start, count=block.count, device_id=dev)
        return await client.read_discrete_inputs(block.start, count=block.count, device_id=dev)
